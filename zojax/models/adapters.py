"""Parameter-efficient parameterisations: a frozen base plus a small trainable subtree.

An :class:`Adapted` model splits the parameters into the frozen base (the model's parameters) and a
``trainable`` pytree whose layer-shaped leaves live under a top-level ``"layers"`` key with a leading
layer axis. Like :class:`~zojax.models.Model` it holds no weights: its ``logits``/``token_logprobs``
take the trainable subtree as ``params`` and the base as ``frozen=``, so the estimators perturb and
update only the trainable subtree; with ``perturbation=(v, s)`` layer ``l``'s trainable slice is
perturbed inside the layer scan with ``perturb_subtree(slice, ("layers",), v, s, layer=layer_index)``,
exactly as ``perturb(trainable, v, s)`` would.

Example:
  >>> model, params = zojax.models.load_model()
  >>> trainable, adapted = zojax.models.lora.init(model, params, key=0, rank=8)
  >>> adapted.logits(trainable, ids, mask, frozen=params)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models.forward import CausalLM, LayerHook, MaybePerturbation, chunked_logprobs, decoder, project
from zojax.models.model import Model
from zojax.perturb import as_perturbation

PyTree = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Adapted(CausalLM):
    """A model with a frozen base and a trainable subtree (LoRA, prefix tuning).

    Every function takes the trainable subtree first and the frozen base parameters as ``frozen=``.

    Attributes:
      model: the base :class:`~zojax.models.Model`.
      kind: ``"lora"`` or ``"prefix"``.
      combine: ``(base_layer, trainable_layer, l) -> (layer_params, prefix_kv | None)``, run in
        the scan.
      num_prefix: number of virtual tokens (prefix tuning), else 0.
      options: the hyper-parameters (rank, alpha, targets / num_virtual_tokens).
    """

    model: Model
    kind: str
    combine: LayerHook
    num_prefix: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Adapted({self.kind}, {self.options}, base={self.model!r})"

    def hidden_states(
        self,
        trainable: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        frozen: PyTree = None,
        perturbation: MaybePerturbation = None,
    ) -> Array:
        """Final-normed hidden states ``[B, T, H]`` of the adapted model (what the head consumes)."""
        base = _base(frozen)
        if attention_mask is None:
            attention_mask = jnp.ones(jnp.shape(input_ids), jnp.int32)
        perturbation = as_perturbation(perturbation)

        def layer_fn(base_l: PyTree, train_l: PyTree, layer_index: Array) -> tuple[PyTree, Any]:
            if perturbation is not None:
                train_l = perturbation.apply(train_l, ("layers",), layer_index)
            return self.combine(base_l, train_l, layer_index)

        h, _ = decoder(
            self.model.config,
            self.model.dtype,
            base,
            input_ids,
            attention_mask,
            extra_layers=trainable["layers"],
            layer_fn=layer_fn,
            num_prefix=self.num_prefix,
        )
        return h

    def logits(
        self,
        trainable: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        frozen: PyTree = None,
        perturbation: MaybePerturbation = None,
    ) -> Array:
        """float32 ``[B, T, V]`` logits of the adapted model at ``trainable`` (+ ``s·v`` if perturbed)."""
        h = self.hidden_states(trainable, input_ids, attention_mask, frozen=frozen, perturbation=perturbation)
        return project(self.model.config, frozen, h)

    __call__ = logits

    def head_logits(
        self, trainable: PyTree, h: Array, *, frozen: PyTree = None, perturbation: MaybePerturbation = None
    ) -> Array:
        """float32 logits of final hidden states ``h``: the frozen base's head (never perturbed)."""
        del trainable, perturbation
        return project(self.model.config, _base(frozen), h)

    def token_logprobs(
        self,
        trainable: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        frozen: PyTree = None,
        perturbation: MaybePerturbation = None,
        vocab_chunk: int = 8192,
    ) -> Array:
        """``log p(x_{t+1} | x_{≤t})`` ``[B, T−1]`` (see ``Model.token_logprobs``)."""
        h = self.hidden_states(trainable, input_ids, attention_mask, frozen=frozen, perturbation=perturbation)
        ids = jnp.asarray(input_ids, jnp.int32)
        return chunked_logprobs(self.model.config, frozen, h[:, :-1], ids[:, 1:], None, vocab_chunk)

    def merged_params(self, trainable: PyTree, frozen: PyTree) -> PyTree:
        """LoRA only: the base parameters ``frozen`` with ``ΔW = (α/r)·A B`` folded into the kernels."""
        if self.kind != "lora":
            raise ValueError(f"merged_params: only LoRA weights can be merged, this is {self.kind!r}")
        scale = self.options["alpha"] / self.options["rank"]
        layers = dict(_base(frozen)["layers"])
        for name, ab in trainable["layers"].items():
            mod = dict(layers[name])
            k = mod["kernel"]
            delta = scale * jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
            mod["kernel"] = (k.astype(jnp.float32) + delta).astype(k.dtype)
            layers[name] = mod
        return {**frozen, "layers": layers}

    def generate(self, trainable: PyTree, prompt: Any, *, frozen: PyTree = None, **kw: Any) -> Any:
        """Greedy generation with a KV cache (see :meth:`zojax.models.Model.generate`).

        LoRA: with the merged weights ``W + (α/r)·A B``. Prefix tuning: the ``P`` trained
        keys/values of every layer fill the first ``P`` cache slots (always visible) and take no
        positions (the prompt keeps ``0…T−1``, generated tokens continue at ``T, T+1, …``), so
        each greedy step equals the argmax of :meth:`logits` on the prompt plus the tokens
        generated so far.

        MeZO's own generation with a prefix (its ``prepare_inputs_for_generation`` pads the mask
        with ``P`` ones once the cache holds the prefix) gives OPT's generated tokens positions
        ``T+P, T+P+1, …``; zojax keeps them contiguous, consistent with :meth:`logits`.
        """
        params, extra = self._generation(trainable, frozen)
        return self.model.generate(params, prompt, **extra, **kw)

    def generate_batch(self, trainable: PyTree, prompts: Any, *, frozen: PyTree = None, **kw: Any) -> list[list[int]]:
        """Greedy generation of several prompts at once (:meth:`zojax.models.Model.generate_batch`),
        with the adapter as in :meth:`generate`."""
        params, extra = self._generation(trainable, frozen)
        return self.model.generate_batch(params, prompts, **extra, **kw)

    def _generation(self, trainable: PyTree, frozen: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """The base model's parameters and extra generation arguments for ``trainable``."""
        if self.kind == "lora":
            return self.merged_params(trainable, frozen), {}
        if self.kind == "prefix":
            layers = trainable["layers"]
            return _base(frozen), {"prefix_kv": (layers["keys"], layers["values"])}
        raise NotImplementedError(f"generate: not implemented for {self.kind!r} adapters")


def _base(frozen: PyTree) -> PyTree:
    if frozen is None:
        raise ValueError("frozen: an Adapted model needs its frozen base parameters (frozen=params)")
    return frozen


LORA_TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
    "fc1": "fc1",
    "fc2": "fc2",
}


def lora_init(
    model: Model,
    params: PyTree,
    key: int | Array = 0,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = ("q", "v"),
) -> tuple[PyTree, Adapted]:
    """LoRA: ``W' = W + (α/r)·A B`` on the target projections; only ``A, B`` are trainable.

    ``A`` (``[L, in, r]``) is drawn like PEFT's Kaiming-uniform (``U(−1/√in, 1/√in)``), ``B``
    (``[L, r, out]``) is zero, so the adapted model starts equal to the base model.

    Args:
      model: the base model.
      params: its (frozen) parameters.
      key: PRNG key or seed for ``A``.
      rank: ``r``.
      alpha: ``α``.
      targets: short names (``q k v o gate up down fc1 fc2``) or full module names.

    Returns:
      ``(trainable, adapted)``: ``trainable = {"layers": {"q_proj": {"a", "b"}, ...}}`` and the
      :class:`Adapted` model whose ``logits(trainable, ids, mask, *, frozen=params, perturbation=None)`` is the
      logits function.
    """
    if rank < 1:
        raise ValueError(f"rank: expected >= 1, got {rank}")
    base_layers = params["layers"]
    mods = []
    for t in targets:
        name = LORA_TARGETS.get(t, t)
        if name not in base_layers:
            raise ValueError(
                f"targets: {t!r} is not a projection of this {model.config.arch} model; "
                f"choose from {sorted(k for k in LORA_TARGETS if LORA_TARGETS[k] in base_layers)}"
            )
        mods.append(name)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    keys = jax.random.split(key, len(mods))
    trainable: dict[str, Any] = {"layers": {}}
    for k, name in zip(keys, mods, strict=True):
        w = base_layers[name]["kernel"]
        n_layers, d_in, d_out = w.shape
        bound = 1.0 / np.sqrt(d_in)
        a = jax.random.uniform(k, (n_layers, d_in, rank), jnp.float32, -bound, bound).astype(w.dtype)
        trainable["layers"][name] = {"a": a, "b": jnp.zeros((n_layers, rank, d_out), w.dtype)}
    scale = alpha / rank

    def combine(base_l: PyTree, train_l: PyTree, layer_index: Array) -> tuple[PyTree, None]:
        del layer_index
        out = dict(base_l)
        for name, ab in train_l.items():
            mod = dict(out[name])
            k = mod["kernel"]
            delta = jnp.dot(ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
            mod["kernel"] = (k.astype(jnp.float32) + scale * delta).astype(k.dtype)
            out[name] = mod
        return out, None

    opts = {"rank": rank, "alpha": alpha, "targets": tuple(mods)}
    return trainable, Adapted(model, "lora", combine, 0, opts)


def prefix_init(
    model: Model,
    params: PyTree,
    key: int | Array = 0,
    *,
    num_virtual_tokens: int = 5,
    init_by_real_act: bool = True,
) -> tuple[PyTree, Adapted]:
    """Prefix tuning: ``P`` trainable key/value vectors per layer, prepended to every attention.

    As in MeZO (``init_by_real_act``), the prefix is initialised from real activations: the model
    runs on ``P`` uniformly random tokens (positions ``0…P−1``) and their per-layer keys
    (post-RoPE) and values become the prefix. Otherwise the prefix is drawn from ``N(0, 1)``.

    Positions as in MeZO's ``attn_forward_hook``: the prefix keys/values are prepended inside
    every attention (always visible) and take no position ids, so the real tokens keep positions
    ``0…T−1``: OPT adds its learned position embeddings ``P[t + 2]`` and Llama rotates queries and
    keys by ``t``, exactly as without a prefix. (A KV-cache reading, with real tokens at
    ``P…P+T−1``, would differ from MeZO for both architectures.)

    Returns:
      ``(trainable, adapted)`` with
      ``trainable = {"layers": {"keys": [L, P, Hkv, D], "values": ...}}``.
    """
    c = model.config
    p = int(num_virtual_tokens)
    if p < 1:
        raise ValueError(f"num_virtual_tokens: expected >= 1, got {p}")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    if init_by_real_act:
        ids = jax.random.randint(key, (1, p), 0, c.vocab_size, jnp.int32)
        _, (k, v) = decoder(c, model.dtype, params, ids, jnp.ones((1, p), jnp.int32), return_kv=True)
        keys, values = k[:, 0], v[:, 0]
    else:
        k1, k2 = jax.random.split(key)
        shape = (c.num_layers, p, c.num_kv_heads, c.head_dim)
        dt = jax.tree.leaves(params)[0].dtype
        keys = jax.random.normal(k1, shape).astype(dt)
        values = jax.random.normal(k2, shape).astype(dt)
    trainable = {"layers": {"keys": keys, "values": values}}

    def combine(base_l: PyTree, train_l: PyTree, layer_index: Array) -> tuple[PyTree, tuple[Array, Array]]:
        del layer_index
        return base_l, (train_l["keys"], train_l["values"])

    opts = {"num_virtual_tokens": p, "init_by_real_act": init_by_real_act}
    return trainable, Adapted(model, "prefix", combine, p, opts)
