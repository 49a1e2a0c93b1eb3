"""The decoder-only causal LM: a plain-pytree parameter layout, a layer ``scan`` and on-the-fly
perturbation.

Parameter layout (a plain nested dict; ``L`` layers stacked along a leading axis under
``"layers"``)::

    {"embed": {"embedding": [V, H]},
     "pos_embed": {"embedding": [P+2, H]},            # OPT only (learned positions, offset 2)
     "layers": {"input_norm": {"scale": [L, H] (, "bias")},
                "q_proj"/"k_proj"/"v_proj"/"o_proj": {"kernel": [L, in, out] (, "bias": [L, out])},
                "post_norm": {...},
                "gate_proj"/"up_proj"/"down_proj" (llama) | "fc1"/"fc2" (opt):
                    {"kernel", ("bias")}},
     "final_norm": {"scale": [H] (, "bias")},
     "lm_head": {"kernel": [H, V]}}                   # only when the embeddings are not tied

On-the-fly perturbation (MeZO): with ``perturbation=(v, s)`` the loss is evaluated at ``θ + s·v``
where ``v = Σ_i w_i z_i`` is regenerated from keys (:mod:`zojax.perturb`). Layer ``l``'s perturbed
weights are produced inside the scan body with ``perturb_subtree(layer_l, ("layers",), v, s,
layer=l)``, the embedding where it is gathered / projected, so no perturbed copy of ``θ`` ever
exists. Under SubZero's subspace noise a matrix's noise is ``s·v = s·A Bᵀ`` of rank ``r``
(:func:`zojax.perturb.subspace_factors`) and is never built ``m×n`` in the forward: embedding rows
are ``E[ids] + s A[ids] Bᵀ``, the head's logits ``h Wᵀ + (h Q) Pᵀ`` (:func:`head_parts`) and each
dense layer ``x K + s (x A) Bᵀ`` inside the layer scan (:func:`perturb_layer`); only the update
adds the rank-``r`` product, fused into the in-place parameter update. Compile steps that use it
with :data:`zojax.ZO_COMPILER_OPTIONS` (:func:`zojax.jit_step` does): loop-invariant code motion
would hoist the noise of loop-invariant leaves out of loops and keep it alive (``docs/jax_workarounds.md``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax import perturb
from zojax.models.config import ModelConfig
from zojax.models.modules import LOW_RANK, DecoderBlock
from zojax.models.rows import LOCAL, Rows, padded_rows

Array = jax.Array
PyTree = Any
Perturbation = tuple[perturb.Direction, Any] | None
LayerFn = Callable[[PyTree, PyTree, Array], tuple[PyTree, tuple[Array, Array] | None]]

OPT_POSITION_OFFSET = 2
STOP_RULES = ("text", "mezo")  # generation stop rules (Model.generate)
MIN_VOCAB_CHUNKS = 8  # chunked log-softmax: at least this many vocabulary chunks (bounds a perturbed chunk)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype: Any) -> Any:
    """``"float32"``/``"bfloat16"`` (or the jnp dtype) to the jnp dtype; raises for anything else."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        return jnp.dtype(dtype).type
    raise ValueError(f"dtype: expected float32 or bfloat16, got {dtype}")


def dtype_name(dtype: Any) -> str:
    return "bfloat16" if jnp.dtype(resolve_dtype(dtype)) == jnp.dtype(jnp.bfloat16) else "float32"


def positions_from_mask(attention_mask: Array, offset: int | Array = 0) -> Array:
    """``position_t = max(cumsum(mask)_t − 1, 0) + offset`` (left padding gets position 0)."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + offset


def _perturb_top(params: PyTree, name: str, perturbation: Perturbation) -> PyTree:
    """A top-level entry of ``params``, perturbed where it is used when ``perturbation`` is set."""
    sub = params[name]
    if perturbation is None:
        return sub
    direction, scale = perturbation
    return perturb.perturb_subtree(sub, (name,), direction, scale)


LOW_RANK_DENSE = True  # subspace noise on dense kernels as x K + s (x A) Bᵀ (see perturb_layer)


def perturb_layer(layer: PyTree, direction: perturb.Direction, scale: Array, li: Array) -> tuple[PyTree, PyTree]:
    r"""Layer ``li`` at ``θ + s·v`` for the decoder block: ``(layer, low_rank)``.

    I.i.d. noise (or :data:`LOW_RANK_DENSE` off): ``perturb_subtree`` of the whole layer and
    ``low_rank = {}``. Subspace noise: every ``[in, out]`` dense kernel stays unperturbed and its
    noise goes to ``low_rank[name] = {"a": s·A, "b": B}`` (:func:`zojax.perturb.subspace_factors_many`,
    one call for all the layer's kernels, so their bases share one batched Cholesky; applied by
    :func:`zojax.models.modules.low_rank_dense` as ``x K + (x sA) Bᵀ``); biases and norm scales
    (i.i.d. under SubZero) are perturbed in place as before.
    """
    if direction.subspace is None or not LOW_RANK_DENSE:
        return perturb.perturb_subtree(layer, ("layers",), direction, scale, layer=li), {}
    key = jax.tree_util.DictKey
    kernels = {
        name: module["kernel"].shape
        for name, module in layer.items()
        if isinstance(module, dict)
        and "kernel" in module
        and module["kernel"].ndim == 2
        and perturb.matrix_shape(module["kernel"].shape) == module["kernel"].shape
    }
    leaves = [((key("layers"), key(name), key("kernel")), shape, li) for name, shape in kernels.items()]
    factors = dict(zip(kernels, perturb.subspace_factors_many(direction, leaves), strict=True))
    out, low_rank = {}, {}
    for name, module in layer.items():
        path = (key("layers"), key(name))
        if factors.get(name) is None:
            out[name] = perturb.perturb_subtree(module, path, direction, scale, layer=li)
            continue
        a, b = factors[name]
        rest = {k: x for k, x in module.items() if k != "kernel"}
        out[name] = {"kernel": module["kernel"], **perturb.perturb_subtree(rest, path, direction, scale, layer=li)}
        low_rank[name] = {"a": jnp.asarray(scale, jnp.float32) * a, "b": b}
    return out, low_rank


def _block(config: ModelConfig, dtype: Any) -> DecoderBlock:
    dt = resolve_dtype(dtype)
    return DecoderBlock(config, dtype=dt, param_dtype=dt)


def _top_factors(params: PyTree, name: str, leaf: str, perturbation: Perturbation) -> tuple[Array, Array] | None:
    """``(s·A, B)`` with ``s·v = s·A Bᵀ`` for the matrix ``params[name][leaf]`` under subspace noise,
    else ``None`` (no perturbation, i.i.d. noise, or not a plain ``[m, n]`` matrix)."""
    if perturbation is None:
        return None
    direction, scale = perturbation
    shape = params[name][leaf].shape
    if len(shape) != 2 or perturb.matrix_shape(shape) != tuple(shape):
        return None
    path = (jax.tree_util.DictKey(name), jax.tree_util.DictKey(leaf))
    factors = perturb.subspace_factors(direction, path, shape)
    if factors is None:
        return None
    a, b = factors
    return jnp.asarray(scale, jnp.float32) * a, b


def _rows(params: PyTree, name: str, ids: Array, perturbation: Perturbation) -> Array:
    """Rows ``ids`` of the table ``params[name]["embedding"]``, perturbed where gathered.

    Subspace noise ``s·v = s·A Bᵀ`` is added as ``W[ids] + s A[ids] Bᵀ`` (float32, cast back), so
    the ``[V, H]`` noise never exists; i.i.d. noise is drawn fused into the gather."""
    factors = _top_factors(params, name, "embedding", perturbation)
    if factors is None:
        return _perturb_top(params, name, perturbation)["embedding"][ids]
    table = params[name]["embedding"]
    a, b = factors
    noise = jnp.matmul(a[ids], b.T, precision=jax.lax.Precision.HIGHEST)
    return (table[ids].astype(jnp.float32) + noise).astype(table.dtype)


def embed_tokens(
    config: ModelConfig,
    params: PyTree,
    input_ids: Array,
    positions: Array,
    perturbation: Perturbation,
) -> Array:
    """Input embeddings ``E[ids]`` (+ ``P[pos + 2]`` for OPT); the noise gather fuses into the lookup."""
    x = _rows(params, "embed", input_ids, perturbation)
    if config.arch == "opt":
        x = x + _rows(params, "pos_embed", positions + OPT_POSITION_OFFSET, perturbation)
    return x


def final_norm(config: ModelConfig, params: PyTree, h: Array, perturbation: Perturbation) -> Array:
    """The final RMSNorm / LayerNorm."""
    p = _perturb_top(params, "final_norm", perturbation)
    hf = h.astype(jnp.float32)
    if config.arch == "llama":
        y = hf * jax.lax.rsqrt(jnp.mean(hf * hf, -1, keepdims=True) + config.norm_eps)
        return (y * p["scale"].astype(jnp.float32)).astype(h.dtype)
    mu = jnp.mean(hf, -1, keepdims=True)
    var = jnp.mean(jnp.square(hf - mu), -1, keepdims=True)
    y = (hf - mu) * jax.lax.rsqrt(var + config.norm_eps)
    return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(h.dtype)


def head_weight(config: ModelConfig, params: PyTree, perturbation: Perturbation) -> Array:
    """The output projection as ``[V, H]`` (the tied embedding, or the transposed ``lm_head``)."""
    if config.tie_embeddings:
        return _perturb_top(params, "embed", perturbation)["embedding"]
    return _perturb_top(params, "lm_head", perturbation)["kernel"].T


def head_parts(
    config: ModelConfig, params: PyTree, perturbation: Perturbation
) -> tuple[Array, tuple[Array, Array] | None]:
    r"""The head as ``(W [V, H], factors)``: ``W`` (perturbed when the noise is i.i.d.) and, under
    subspace noise, ``(P [V, r], Q [H, r])`` with the perturbed head ``W + P Qᵀ`` (``W`` unperturbed).

    The logits are then ``h Wᵀ + (h Q) Pᵀ``: the ``[V, H]`` noise is never built. Tied:
    ``E + s A Bᵀ`` gives ``P = sA, Q = B``; ``lm_head`` ``K [H, V]``, ``(K + s A Bᵀ)ᵀ``, gives
    ``P = B, Q = sA``.
    """
    name, leaf = ("embed", "embedding") if config.tie_embeddings else ("lm_head", "kernel")
    factors = _top_factors(params, name, leaf, perturbation)
    if factors is None:
        return head_weight(config, params, perturbation), None
    w = params[name][leaf]
    a, b = factors
    return (w, (a, b)) if config.tie_embeddings else (w.T, (b, a))


def decoder(
    config: ModelConfig,
    dtype: Any,
    params: PyTree,
    input_ids: Array,
    attention_mask: Array,
    *,
    perturbation: Perturbation = None,
    extra_layers: PyTree = None,
    layer_fn: LayerFn | None = None,
    num_prefix: int = 0,
    return_kv: bool = False,
) -> tuple[Array, tuple[Array, Array] | None]:
    """Runs embeddings, the scanned blocks and the final norm; returns ``(h [B,T,H], kv)``.

    Args:
      config, dtype: the architecture and compute dtype.
      params: the parameters (see the module docstring).
      input_ids, attention_mask: ``int32[B, T]``; left padding is supported.
      perturbation: ``(direction, scale)``: evaluate at ``params + scale · v``, on the fly.
      extra_layers: an optional stacked pytree scanned alongside ``params["layers"]`` (adapters).
      layer_fn: ``(layer_params, extra_slice, l) -> (layer_params, prefix_kv | None)``, applied in
        the scan body after the (optional) perturbation of the base layer; adapters use it to merge
        LoRA factors or supply prefix keys/values.
      num_prefix: number of always-visible prefix key slots ``layer_fn`` supplies. The real tokens
        keep positions ``0…T−1`` (MeZO's prefix tuning prepends keys/values inside attention and
        leaves the position ids alone), which matters for OPT's learned positions and for RoPE.
      return_kv: also return the stacked per-layer keys/values ``[L, B, T, Hkv, D]``.
    """
    dt = resolve_dtype(dtype)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    b = input_ids.shape[0]
    positions = positions_from_mask(attention_mask)
    x = embed_tokens(config, params, input_ids, positions, perturbation).astype(dt)
    key_valid = attention_mask
    if num_prefix:
        key_valid = jnp.concatenate([jnp.ones((b, num_prefix), jnp.int32), attention_mask], axis=1)
    block = _block(config, dt)

    def body(h: Array, xs: tuple[PyTree, PyTree, Array]) -> tuple[Array, Any]:
        layer, extra, li = xs
        low_rank: PyTree = {}
        if perturbation is not None:
            layer, low_rank = perturb_layer(layer, *perturbation, li)
        prefix_kv = None
        if layer_fn is not None:
            layer, prefix_kv = layer_fn(layer, extra, li)
        variables = {"params": layer, **({LOW_RANK: low_rank} if low_rank else {})}
        h, kv = block.apply(variables, h, positions, key_valid, prefix_kv)
        return h, (kv if return_kv else None)

    xs = (params["layers"], extra_layers, jnp.arange(config.num_layers, dtype=jnp.uint32))
    h, kv = jax.lax.scan(body, x, xs)
    return final_norm(config, params, h, perturbation), kv


def project(config: ModelConfig, params: PyTree, h: Array, perturbation: Perturbation = None) -> Array:
    """float32 logits ``h Wᵀ`` over the full vocabulary (``+ (h Q) Pᵀ`` under subspace noise:
    :func:`head_parts`)."""
    w, factors = head_parts(config, params, perturbation)
    logits = jnp.einsum("...h,vh->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
    if factors is None:
        return logits
    p, q = factors
    hi = jax.lax.Precision.HIGHEST
    hq = jnp.matmul(h.astype(jnp.float32), q, precision=hi)
    return logits + jnp.einsum("...r,vr->...v", hq, p, precision=hi)


def chunked_logprobs(
    config: ModelConfig,
    params: PyTree,
    h: Array,
    targets: Array,
    perturbation: Perturbation = None,
    vocab_chunk: int = 8192,
) -> Array:
    """``log softmax(h Wᵀ)[target]`` without materialising the ``[..., V]`` logits.

    A ``scan`` over vocabulary chunks keeps an online log-sum-exp ``m, s`` and the target logit:
    ``m' = max(m, max_j ℓ_j)``, ``s' = s·e^{m−m'} + Σ_j e^{ℓ_j−m'}``,
    ``log p = ℓ_target − m − log s``. Each chunk of the (perturbed) head weight is gathered inside
    the loop body, so with LICM disabled (:data:`zojax.ZO_COMPILER_OPTIONS`) the noise of a chunk is
    generated fused into the gather and the full perturbed head never exists; only one perturbed
    chunk (at most ``1/MIN_VOCAB_CHUNKS`` of the head) is live at a time. Under subspace noise
    (:func:`head_parts`) ``h Q [N, r]`` and ``P [V, r]`` are formed once, before the loop, and a
    chunk's logits are ``h W[c]ᵀ + (h Q) P[c]ᵀ``. The chunk size is
    ``min(vocab_chunk, ⌈V / MIN_VOCAB_CHUNKS⌉)``.
    """
    v = config.vocab_size
    c = min(vocab_chunk, -(-v // MIN_VOCAB_CHUNKS))
    n = -(-v // c)
    shape = targets.shape
    hf = h.reshape(-1, h.shape[-1])
    tf = targets.reshape(-1)
    low_rank = None
    if perturbation is not None and perturbation[0].subspace is not None:
        _, factors = head_parts(config, params, perturbation)
        if factors is not None:
            p, q = factors
            low_rank = (p, jnp.matmul(hf.astype(jnp.float32), q, precision=jax.lax.Precision.HIGHEST))

    def body(carry: tuple[Array, Array, Array], i: Array) -> tuple[tuple[Array, Array, Array], None]:
        m, s, tl = carry
        start = jnp.minimum(i * c, v - c)
        cols = start + jnp.arange(c)
        w = head_weight(config, params, None if low_rank else perturbation)[cols].astype(hf.dtype)
        logits = jnp.einsum("nh,ch->nc", hf, w, preferred_element_type=jnp.float32)
        if low_rank is not None:
            p, hq = low_rank
            hi = jax.lax.Precision.HIGHEST
            logits = logits + jnp.einsum("nr,cr->nc", hq, p[cols], precision=hi)
        fresh = cols >= i * c  # the last chunk may overlap the previous one
        logits = jnp.where(fresh[None], logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=-1)
        local = tf - start
        hit = (local >= 0) & (local < c) & (tf >= i * c)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, c - 1)[:, None], axis=-1)[:, 0]
        tl = jnp.where(hit, picked, tl)
        return (m_new, s, tl), None

    n_rows = hf.shape[0]
    init = (
        jnp.full((n_rows,), -jnp.inf, jnp.float32),
        jnp.zeros((n_rows,), jnp.float32),
        jnp.zeros((n_rows,), jnp.float32),
    )
    (m, s, tl), _ = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
    return (tl - m - jnp.log(s)).reshape(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A causal LM: configuration, parameters, tokenizer and pure functions of the parameters.

    Attributes:
      config: the architecture.
      params: plain nested-dict parameters (layers stacked under ``"layers"``).
      tokenizer: a :class:`zojax.models.Tokenizer`, or ``None`` for random models.
      dtype: ``"float32"`` or ``"bfloat16"``: the parameter and compute dtype.
    """

    config: ModelConfig
    params: PyTree
    tokenizer: Any = None
    dtype: str = "float32"

    def __repr__(self) -> str:
        return (
            f"Model({self.config.name!r}, arch={self.config.arch}, params={self.num_params:,}, "
            f"dtype={self.dtype}, tokenizer={'yes' if self.tokenizer is not None else 'none'})"
        )

    # ----------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        perturbation: Perturbation = None,
    ) -> Array:
        """Final-normed hidden states ``[B, T, H]`` (what the LM head consumes)."""
        if attention_mask is None:
            attention_mask = jnp.ones(jnp.shape(input_ids), jnp.int32)
        h, _ = decoder(self.config, self.dtype, params, input_ids, attention_mask, perturbation=perturbation)
        return h

    def logits(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        perturbation: Perturbation = None,
    ) -> Array:
        """float32 logits ``[B, T, V]``; with ``perturbation=(v, s)`` those of ``params + s·v``.

        Equal (to float tolerance) to ``logits(zojax.perturb.perturb(params, v, s), ...)`` but no
        perturbed parameter copy is made (only the layer being computed and the head weight).
        """
        h = self.hidden_states(params, input_ids, attention_mask, perturbation=perturbation)
        return project(self.config, params, h, perturbation)

    def token_logprobs(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        perturbation: Perturbation = None,
        vocab_chunk: int = 8192,
    ) -> Array:
        """``log p(x_{t+1} | x_{≤t})`` as float32 ``[B, T−1]``, memory-friendly.

        The hidden states are shifted before the head (``h[:, :-1]`` against ``ids[:, 1:]``) and the
        log-softmax is computed over vocabulary chunks (:func:`chunked_logprobs`), so neither the
        ``[B, T, V]`` logits nor a perturbed head weight is materialised.
        """
        h = self.hidden_states(params, input_ids, attention_mask, perturbation=perturbation)
        ids = jnp.asarray(input_ids, jnp.int32)
        return chunked_logprobs(self.config, params, h[:, :-1], ids[:, 1:], perturbation, vocab_chunk)

    def __call__(self, params: PyTree, input_ids: Array, attention_mask: Array | None = None, **kw: Any) -> Array:
        """Alias of :meth:`logits`."""
        return self.logits(params, input_ids, attention_mask, **kw)

    # ----------------------------------------------------------------------------------- misc
    @property
    def num_params(self) -> int:
        """Number of parameter scalars."""
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

    @property
    def param_bytes(self) -> int:
        """Bytes of the parameters."""
        return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.params)))

    def replace(self, **changes: Any) -> Model:
        """A copy with some fields changed (e.g. ``params``)."""
        return dataclasses.replace(self, **changes)

    def logical_axes(self, params: PyTree | None = None) -> PyTree:
        """Logical axis names of every parameter (see :mod:`zojax.models.sharding`)."""
        from zojax.models.sharding import logical_axes

        return logical_axes(self.params if params is None else params)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Tokenises ``text`` with the model's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        return self.tokenizer.encode(text, add_bos=add_bos)

    # ----------------------------------------------------------------------------------- generation
    def generate(
        self,
        params: PyTree,
        prompt: str | Sequence[int] | np.ndarray | Array,
        *,
        max_new_tokens: int = 50,
        stop_strings: Sequence[str] = ("\n",),
        stop_ids: Sequence[int] | None = None,
        return_text: bool | None = None,
        chunk: int = 16,
        prefix_kv: tuple[Array, Array] | None = None,
        stop_rule: str = "text",
    ) -> list[int] | str:
        r"""Greedy decoding with a KV cache (jitted prefill + jitted decode chunks): one prompt,
        :meth:`generate_batch` of one row.

        Decoding stops at ``max_new_tokens``, at an end-of-sequence / ``stop_ids`` token (not
        returned), or by ``stop_rule``:

        * ``"text"`` (default): once the decoded continuation contains one of ``stop_strings``; the
          result is cut right after the token that completed the stop string, so a merged token
          such as ``".\n"`` or ``"\n\n"`` stops too.
        * ``"mezo"``: MeZO's ``eos_token_id=[tokenizer.encode("\n", add_special_tokens=False)[-1],
          eos]``: only the exact token ids :func:`stop_token_ids` of ``stop_strings`` (and EOS)
          stop, not returned; a merged ``".\n"`` does not stop, and the text is not cut.

        Tokens are produced in jitted chunks of ``chunk`` steps; stops are checked between chunks.

        Args:
          params: the parameters.
          prompt: a string (needs the tokenizer; encoded with its default BOS convention) or
            token ids.
          max_new_tokens: most tokens to generate.
          stop_strings: strings that end generation (needs the tokenizer; ignored without one for
            ``stop_rule="text"``).
          stop_ids: token ids that end generation (default: the tokenizer's / config's EOS).
          return_text: return the decoded continuation (``"text"``: cut before the stop string);
            default: True when ``prompt`` is a string.
          chunk: decode steps per jitted call.
          prefix_kv: prefix tuning's virtual tokens, ``(keys, values)`` of shape ``[L, P, Hkv, D]``
            (keys post-RoPE): they occupy cache slots ``0..P−1`` (always visible) while the prompt
            keeps positions ``0..T−1`` and the generated tokens continue at ``T, T+1, …``, exactly
            as in the prefix model's forward (:meth:`zojax.models.Adapted.logits`) on the prompt
            plus the tokens generated so far.
          stop_rule: ``"text"`` or ``"mezo"`` (see above).

        Returns:
          the new token ids, or the decoded text.
        """
        if isinstance(prompt, str):
            ids = self.encode(prompt)
            return_text = True if return_text is None else return_text
        else:
            ids = [int(i) for i in np.asarray(prompt).reshape(-1)]
        (result,) = self.generate_batch(
            params,
            [ids],
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
            stop_ids=stop_ids,
            chunk=chunk,
            prefix_kv=prefix_kv,
            stop_rule=stop_rule,
        )
        if return_text:
            if max_new_tokens <= 0:
                return ""
            if self.tokenizer is None:
                raise ValueError("return_text: this model has no tokenizer")
            text = self.tokenizer.decode(result)
            for s in stop_strings if stop_rule == "text" else ():
                if s in text:
                    text = text[: text.index(s)]
            return text
        return result

    def generate_batch(
        self,
        params: PyTree,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 50,
        stop_strings: Sequence[str] = ("\n",),
        stop_ids: Sequence[int] | None = None,
        chunk: int = 16,
        prefix_kv: tuple[Array, Array] | None = None,
        stop_rule: str = "text",
        rows: int | None = None,
        placement: Rows = LOCAL,
    ) -> list[list[int]]:
        r"""Greedy decoding of several prompts at once (:meth:`generate`'s rules, row by row).

        The prompts are left-padded to one power-of-two length ``T ≥ 32`` and the batch to
        ``B' = ⌈max(rows, len(prompts)) / D⌉·D`` rows (copies of the first prompt, dropped), ``D =
        placement.data_size``; every row keeps its own positions ``0..T_b−1`` and continues at
        ``T_b, T_b+1, …``, so each row's tokens are those of :meth:`generate` on that prompt alone.
        The rows are split over the devices by ``placement`` (:mod:`zojax.models.rows`) and each
        chunk's tokens fetched whole on every process; decoding ends once every prompt has stopped.

        Args:
          params: the parameters (on the devices as ``placement`` expects, e.g. FSDP-sharded).
          prompts: token ids, one non-empty sequence per prompt.
          max_new_tokens: most tokens to generate per prompt.
          stop_strings: see :meth:`generate`.
          stop_ids: see :meth:`generate`.
          chunk: decode steps per jitted call.
          prefix_kv: see :meth:`generate` (shared by every row).
          stop_rule: ``"text"`` or ``"mezo"`` (see :meth:`generate`).
          rows: pad the batch to at least this many rows (a fixed shape compiles once).
          placement: where the rows live (default: one device).

        Returns:
          the new token ids of each prompt (no stop token; ``"text"``: up to the token that
          completed a stop string).
        """
        if stop_rule not in STOP_RULES:
            raise ValueError(f"stop_rule: expected one of {STOP_RULES}, got {stop_rule!r}")
        tok = self.tokenizer
        prompts = [[int(i) for i in np.asarray(p).reshape(-1)] for p in prompts]
        if not prompts or not all(prompts):
            raise ValueError("prompt: at least one token is needed")
        if stop_ids is None:
            stop_ids = [tok.eos_id] if tok is not None and tok.eos_id is not None else [self.config.eos_id]
        if stop_rule == "mezo":
            if tok is None and stop_strings:
                raise ValueError("stop_rule='mezo': needs the tokenizer to encode stop_strings")
            stop_ids = [*stop_ids, *stop_token_ids(tok, stop_strings)]
            stop_strings = ()
        stop_set = {int(s) for s in stop_ids}
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        n = len(prompts)
        b = padded_rows(max(n, rows or 0), placement.data_size)
        lengths = [len(p) for p in prompts] + [len(prompts[0])] * (b - n)
        num_prefix = 0 if prefix_kv is None else int(prefix_kv[0].shape[1])
        # Power-of-two prompt buckets: each distinct length compiles a prefill and a decode
        # program, and SQuAD-like prompts would otherwise hit a dozen shapes (~20 s each on CPU).
        tp = max(32, 1 << (max(lengths) - 1).bit_length())
        steps = -(-max(max_new_tokens - 1, 0) // chunk) * chunk
        cache_len = num_prefix + tp + steps
        prompt_arr = np.zeros((b, tp), np.int32)
        mask = np.zeros((b, tp), np.int32)
        for r, p in enumerate(prompts + [prompts[0]] * (b - n)):
            prompt_arr[r, tp - len(p) :] = p
            mask[r, tp - len(p) :] = 1
        placed = placement.batch(
            {"ids": prompt_arr, "mask": mask, "pos": np.asarray(lengths, np.int32)}  # prefix slots take no positions
        )
        token, cache, valid = _prefill(
            self.config, self.dtype, params, placed["ids"], placed["mask"], cache_len, prefix_kv
        )
        outs = [[int(t)] for t in placement.fetch(token)[:n]]
        # cache layout: [prefix slots | left-padded prompts | generated tokens]
        index = np.int32(num_prefix + tp)
        pos = placed["pos"]

        def finished(out: list[int]) -> tuple[bool, list[int]]:
            for j, t in enumerate(out):
                if t in stop_set:
                    return True, out[:j]
            if tok is not None and stop_strings:
                text = tok.decode(out)
                if any(s in text for s in stop_strings):
                    for j in range(1, len(out) + 1):
                        if any(s in tok.decode(out[:j]) for s in stop_strings):
                            return True, out[:j]
            return len(out) >= max_new_tokens, out[:max_new_tokens]

        results: list[list[int] | None] = [None] * n

        def check() -> bool:
            for r in range(n):
                if results[r] is None:
                    done, result = finished(outs[r])
                    if done:
                        results[r] = result
            return all(r is not None for r in results)

        while not check():
            toks, cache, valid, token, index, pos = _decode(
                self.config, self.dtype, chunk, params, cache, valid, token, index, pos
            )
            toks = placement.fetch(toks)  # [chunk, B']
            for r in range(n):
                outs[r].extend(int(t) for t in toks[:, r])
        return [list(r) for r in results if r is not None]


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> list[int]:
    r"""MeZO's stop tokens for ``stop_strings``: the last id of each string encoded without BOS,
    ``tokenizer.encode(s, add_special_tokens=False)[-1]`` (for ``"\n"`` the newline token id)."""
    out = []
    for s in stop_strings:
        ids = tokenizer.encode(s, add_bos=False)
        if not ids:
            raise ValueError(f"stop_strings: {s!r} encodes to no tokens")
        out.append(int(ids[-1]))
    return out


def _prefix_layer(layer: PyTree, prefix: tuple[Array, Array], li: Array) -> tuple[PyTree, Any]:
    """``layer_fn`` that hands layer ``l``'s prefix keys/values ``[P, Hkv, D]`` to the block."""
    del li
    return layer, prefix


@functools.partial(jax.jit, static_argnames=("config", "dtype", "cache_len"))
def _prefill(
    config: ModelConfig,
    dtype: str,
    params: PyTree,
    ids: Array,
    mask: Array,
    cache_len: int,
    prefix_kv: tuple[Array, Array] | None = None,
) -> tuple[Array, tuple[Array, Array], Array]:
    """The prompt's forward: first greedy token, the KV cache ``[L, B, cache_len, Hkv, D]`` and
    the key validity ``[B, cache_len]``.

    With ``prefix_kv`` (``[L, P, Hkv, D]`` each) the forward is the prefix model's (prompt
    positions ``0..T−1``, prefix slots always visible) and the cache starts with the ``P`` prefix
    slots, valid for every row, followed by the prompt's keys/values.
    """
    b = ids.shape[0]
    if prefix_kv is None:
        h, (k, v) = decoder(config, dtype, params, ids, mask, return_kv=True)
    else:
        num_prefix = prefix_kv[0].shape[1]
        h, (k, v) = decoder(
            config,
            dtype,
            params,
            ids,
            mask,
            extra_layers=prefix_kv,
            layer_fn=_prefix_layer,
            num_prefix=num_prefix,
            return_kv=True,
        )

        def lead(p: Array, x: Array) -> Array:
            p = jnp.broadcast_to(p[:, None].astype(x.dtype), (p.shape[0], b, *p.shape[1:]))
            return jnp.concatenate([p, x], axis=2)

        k, v = lead(prefix_kv[0], k), lead(prefix_kv[1], v)
        mask = jnp.concatenate([jnp.ones((b, num_prefix), mask.dtype), mask], axis=1)
    logits = project(config, params, h[:, -1])
    filled = k.shape[2]
    pad = ((0, 0), (0, 0), (0, cache_len - filled), (0, 0), (0, 0))
    valid = jnp.pad(mask, ((0, 0), (0, cache_len - filled)))
    return jnp.argmax(logits, -1).astype(jnp.int32), (jnp.pad(k, pad), jnp.pad(v, pad)), valid


@functools.partial(jax.jit, static_argnames=("config", "dtype", "steps"), donate_argnums=(4, 5))
def _decode(
    config: ModelConfig,
    dtype: str,
    steps: int,
    params: PyTree,
    cache: tuple[Array, Array],
    valid: Array,
    token: Array,
    index: Array,
    pos: Array,
) -> tuple[Array, tuple[Array, Array], Array, Array, Array, Array]:
    """``steps`` greedy decode steps: feed ``token`` at cache slot ``index`` / position ``pos``."""
    dt = resolve_dtype(dtype)
    block = _block(config, dt)

    def step(carry: Any, _: None) -> tuple[Any, Array]:
        cache, valid, token, index, pos = carry
        b = token.shape[0]
        valid = jax.lax.dynamic_update_slice(valid, jnp.ones((b, 1), valid.dtype), (0, index))
        positions = pos[:, None]
        x = embed_tokens(config, params, token[:, None], positions, None).astype(dt)

        def body(h: Array, xs: Any) -> tuple[Array, Any]:
            layer, ck, cv = xs
            h, new = block.apply({"params": layer}, h, positions, valid, None, (ck, cv), index)
            return h, new

        x, (ck, cv) = jax.lax.scan(body, x, (params["layers"], cache[0], cache[1]))
        logits = project(config, params, final_norm(config, params, x, None))[:, 0]
        nxt = jnp.argmax(logits, -1).astype(jnp.int32)
        return ((ck, cv), valid, nxt, index + 1, pos + 1), nxt

    (cache, valid, token, index, pos), toks = jax.lax.scan(step, (cache, valid, token, index, pos), None, length=steps)
    return toks, cache, valid, token, index, pos


def init_params(config: ModelConfig, key: int | Array, dtype: Any = "float32") -> PyTree:
    """Random parameters (normal(0, 0.02) kernels and embeddings, unit norms, zero biases)."""
    dt = resolve_dtype(dtype)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    keys = jax.random.split(key, config.num_layers + 3)
    block = _block(config, jnp.float32)  # drawn in float32 then cast: same values for every dtype
    x = jnp.zeros((1, 1, config.hidden_size), jnp.float32)
    pos = jnp.zeros((1, 1), jnp.int32)
    init = jax.jit(
        lambda k: jax.tree.map(lambda a: a.astype(dt), block.init(k, x, pos, jnp.ones((1, 1), jnp.int32))["params"])
    )
    layers = [init(keys[i]) for i in range(config.num_layers)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    h, v = config.hidden_size, config.vocab_size
    params: dict[str, Any] = {
        "embed": {"embedding": (0.02 * jax.random.normal(keys[-1], (v, h))).astype(dt)},
    }
    if config.arch == "opt":
        n_pos = config.max_position_embeddings + OPT_POSITION_OFFSET
        params["pos_embed"] = {"embedding": (0.02 * jax.random.normal(keys[-2], (n_pos, h))).astype(dt)}
    params["layers"] = stacked
    params["final_norm"] = {"scale": jnp.ones((h,), dt)}
    if config.arch == "opt":
        params["final_norm"]["bias"] = jnp.zeros((h,), dt)
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": (0.02 * jax.random.normal(keys[-3], (h, v))).astype(dt)}
    return params


def init_model(config: ModelConfig, key: int | Array = 0, dtype: str = "float32") -> Model:
    """A :class:`Model` with random weights and no tokenizer (tests, benchmarks)."""
    return Model(config, init_params(config, key, dtype), None, dtype_name(dtype))
