r"""The :class:`Model`: an architecture, its tokenizer and compute dtype, and the forward and
generation functions bound to the architecture (:mod:`zojax.models.forward`,
:mod:`zojax.models.generation`). A model holds no weights: every function takes the parameters
explicitly, ``model.logits(params, ids, mask)``, and :func:`zojax.models.load_model` /
:func:`init_model` return the pair ``(model, params)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models import generation
from zojax.models.config import ModelConfig
from zojax.models.forward import (
    DTYPES,
    OPT_POSITION_OFFSET,
    CausalLM,
    MaybePerturbation,
    _block,
    chunked_logprobs,
    decoder,
    dtype_name,
    positions_from_mask,
    project,
    resolve_dtype,
)
from zojax.models.rows import LOCAL, Rows

Array = jax.Array
PyTree = Any

__all__ = ["DTYPES", "Model", "init_model", "init_params", "num_params", "param_bytes", "positions_from_mask"]


@dataclasses.dataclass(frozen=True, eq=False)
class Model(CausalLM):
    """A causal LM: configuration, tokenizer and pure functions of the parameters.

    The parameters are plain nested dicts with the layers stacked under ``"layers"``
    (:func:`init_params`, :func:`zojax.models.load_model`); every function takes them as its first
    argument. ``frozen`` is there for the signature shared with :class:`zojax.models.Adapted`
    (whose frozen base it is): a full model has none.

    Attributes:
      config: the architecture.
      tokenizer: a :class:`zojax.models.Tokenizer`, or ``None`` for random models.
      dtype: ``"float32"`` or ``"bfloat16"``: the compute dtype (and that of loaded parameters).

    Example:
      >>> model, params = zojax.models.load_model()      # the embedded SmolLM2-135M
      >>> model.generate(params, "The capital of France is", max_new_tokens=5)
    """

    config: ModelConfig
    tokenizer: Any = None
    dtype: str = "float32"

    def __repr__(self) -> str:
        return (
            f"Model({self.config.name!r}, arch={self.config.arch}, params={self.config.num_params:,}, "
            f"dtype={self.dtype}, tokenizer={'yes' if self.tokenizer is not None else 'none'})"
        )

    # ----------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        frozen: None = None,
        perturbation: MaybePerturbation = None,
    ) -> Array:
        """Final-normed hidden states ``[B, T, H]`` (what the LM head consumes)."""
        _no_frozen(frozen)
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
        frozen: None = None,
        perturbation: MaybePerturbation = None,
    ) -> Array:
        """float32 logits ``[B, T, V]``; with ``perturbation=(v, s)`` those of ``params + s·v``.

        Equal (to float tolerance) to ``logits(zojax.perturb.perturb(params, v, s), ...)`` but no
        perturbed parameter copy is made (only the layer being computed and the head weight).
        """
        h = self.hidden_states(params, input_ids, attention_mask, frozen=frozen, perturbation=perturbation)
        return project(self.config, params, h, perturbation)

    def token_logprobs(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        frozen: None = None,
        perturbation: MaybePerturbation = None,
        vocab_chunk: int = 8192,
    ) -> Array:
        """``log p(x_{t+1} | x_{≤t})`` as float32 ``[B, T−1]``, memory-friendly.

        The hidden states are shifted before the head (``h[:, :-1]`` against ``ids[:, 1:]``) and the
        log-softmax is computed over vocabulary chunks (:func:`chunked_logprobs`), so neither the
        ``[B, T, V]`` logits nor a perturbed head weight is materialised.
        """
        h = self.hidden_states(params, input_ids, attention_mask, frozen=frozen, perturbation=perturbation)
        ids = jnp.asarray(input_ids, jnp.int32)
        return chunked_logprobs(self.config, params, h[:, :-1], ids[:, 1:], perturbation, vocab_chunk)

    def head_logits(
        self, params: PyTree, h: Array, *, frozen: None = None, perturbation: MaybePerturbation = None
    ) -> Array:
        """float32 logits ``[..., V]`` of final hidden states ``h [..., H]`` (:func:`~zojax.models.forward.project`)."""
        _no_frozen(frozen)
        return project(self.config, params, h, perturbation)

    def __call__(self, params: PyTree, input_ids: Array, attention_mask: Array | None = None, **kw: Any) -> Array:
        """Alias of :meth:`logits`."""
        return self.logits(params, input_ids, attention_mask, **kw)

    # ----------------------------------------------------------------------------------- misc
    def replace(self, **changes: Any) -> Model:
        """A copy with some fields changed (e.g. ``dtype``, ``tokenizer``)."""
        return dataclasses.replace(self, **changes)

    def logical_axes(self, params: PyTree) -> PyTree:
        """Logical axis names of every parameter (see :mod:`zojax.models.sharding`)."""
        from zojax.models.sharding import logical_axes

        return logical_axes(params)

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
        frozen: None = None,
        **options: Any,
    ) -> list[int] | str:
        """Greedy decoding of one prompt with a KV cache: :func:`zojax.models.generation.generate`."""
        _no_frozen(frozen)
        return generation.generate(self, params, prompt, **options)

    def generate_batch(
        self,
        params: PyTree,
        prompts: Sequence[Sequence[int]],
        *,
        rows: int | None = None,
        placement: Rows = LOCAL,
        frozen: None = None,
        **options: Any,
    ) -> list[list[int]]:
        """Greedy decoding of several prompts at once: :func:`zojax.models.generation.generate_batch`."""
        _no_frozen(frozen)
        return generation.generate_batch(self, params, prompts, rows=rows, placement=placement, **options)


def _no_frozen(frozen: Any) -> None:
    if frozen is not None:
        raise ValueError("frozen: a full Model has no frozen parameters (that is an Adapted model's base)")


def num_params(params: PyTree) -> int:
    """Number of parameter scalars in ``params``."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def param_bytes(params: PyTree) -> int:
    """Bytes of ``params``."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


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


def init_model(config: ModelConfig, key: int | Array = 0, dtype: str = "float32") -> tuple[Model, PyTree]:
    """A :class:`Model` with no tokenizer and random parameters (:func:`init_params`): ``(model, params)``.

    Example:
      >>> model, params = init_model(llama_config("tiny"), 0)
      >>> model.logits(params, jnp.zeros((1, 4), jnp.int32)).shape
      (1, 4, 259)
    """
    return Model(config, None, dtype_name(dtype)), init_params(config, key, dtype)
