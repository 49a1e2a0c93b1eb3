r"""The decoder-only causal LM's forward as pure functions of ``(config, params)``: a plain-pytree
parameter layout, a layer ``scan`` and on-the-fly perturbation.

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

On-the-fly perturbation (MeZO): with ``perturbation=Perturbation(v, s)`` (:class:`zojax.perturb.Perturbation`;
a plain ``(v, s)`` tuple is accepted) the loss is evaluated at ``θ + s·v``
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

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax import perturb
from zojax.models.config import ModelConfig
from zojax.models.modules import LOW_RANK, DecoderBlock
from zojax.perturb import Perturbation, as_perturbation

Array = jax.Array
PyTree = Any
MaybePerturbation = Perturbation | tuple[perturb.Direction, Any] | None
LayerHook = Callable[[PyTree, PyTree, Array], tuple[PyTree, tuple[Array, Array] | None]]
"""``(layer_params, extra_slice, l) -> (layer_params, prefix_kv | None)``: the one hook a caller runs in
the layer scan (LoRA merges its factors, prefix tuning supplies keys/values, generation the prefix cache)."""

OPT_POSITION_OFFSET = 2
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


def _perturb_top(params: PyTree, name: str, perturbation: MaybePerturbation) -> PyTree:
    """A top-level entry of ``params``, perturbed where it is used when ``perturbation`` is set."""
    sub = params[name]
    perturbation = as_perturbation(perturbation)
    return sub if perturbation is None else perturbation.apply(sub, (name,))


LOW_RANK_DENSE = True  # subspace noise on dense kernels as x K + s (x A) Bᵀ (see perturb_layer)


def perturb_layer(layer: PyTree, perturbation: Perturbation, li: Array) -> tuple[PyTree, PyTree]:
    r"""Layer ``li`` at ``θ + s·v`` for the decoder block: ``(layer, low_rank)``.

    I.i.d. noise (or :data:`LOW_RANK_DENSE` off): ``perturb_subtree`` of the whole layer and
    ``low_rank = {}``. Subspace noise: every ``[in, out]`` dense kernel stays unperturbed and its
    noise goes to ``low_rank[name] = {"a": s·A, "b": B}`` (:func:`zojax.perturb.subspace_factors_many`,
    one call for all the layer's kernels, so their bases share one batched Cholesky; applied by
    :func:`zojax.models.modules.low_rank_dense` as ``x K + (x sA) Bᵀ``); biases and norm scales
    (i.i.d. under SubZero) are perturbed in place as before.
    """
    if perturbation.subspace is None or not LOW_RANK_DENSE:
        return perturbation.apply(layer, ("layers",), li), {}
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
    factors = dict(zip(kernels, perturbation.factors(leaves), strict=True))
    out, low_rank = {}, {}
    for name, module in layer.items():
        path = (key("layers"), key(name))
        if factors.get(name) is None:
            out[name] = perturbation.apply(module, path, li)
            continue
        a, b = factors[name]
        rest = {k: x for k, x in module.items() if k != "kernel"}
        out[name] = {"kernel": module["kernel"], **perturbation.apply(rest, path, li)}
        low_rank[name] = {"a": a, "b": b}
    return out, low_rank


def _block(config: ModelConfig, dtype: Any) -> DecoderBlock:
    dt = resolve_dtype(dtype)
    return DecoderBlock(config, dtype=dt, param_dtype=dt)


def _top_factors(params: PyTree, name: str, leaf: str, perturbation: MaybePerturbation) -> tuple[Array, Array] | None:
    """``(s·A, B)`` with ``s·v = s·A Bᵀ`` for the matrix ``params[name][leaf]`` under subspace noise,
    else ``None`` (no perturbation, i.i.d. noise, or not a plain ``[m, n]`` matrix)."""
    perturbation = as_perturbation(perturbation)
    if perturbation is None:
        return None
    shape = params[name][leaf].shape
    if len(shape) != 2 or perturb.matrix_shape(shape) != tuple(shape):
        return None
    path = (jax.tree_util.DictKey(name), jax.tree_util.DictKey(leaf))
    return perturbation.factors([(path, shape, None)])[0]


def _rows(params: PyTree, name: str, ids: Array, perturbation: MaybePerturbation) -> Array:
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
    perturbation: MaybePerturbation,
) -> Array:
    """Input embeddings ``E[ids]`` (+ ``P[pos + 2]`` for OPT); the noise gather fuses into the lookup."""
    x = _rows(params, "embed", input_ids, perturbation)
    if config.arch == "opt":
        x = x + _rows(params, "pos_embed", positions + OPT_POSITION_OFFSET, perturbation)
    return x


def final_norm(config: ModelConfig, params: PyTree, h: Array, perturbation: MaybePerturbation) -> Array:
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


def head_weight(config: ModelConfig, params: PyTree, perturbation: MaybePerturbation) -> Array:
    """The output projection as ``[V, H]`` (the tied embedding, or the transposed ``lm_head``)."""
    if config.tie_embeddings:
        return _perturb_top(params, "embed", perturbation)["embedding"]
    return _perturb_top(params, "lm_head", perturbation)["kernel"].T


def head_parts(
    config: ModelConfig, params: PyTree, perturbation: MaybePerturbation
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
    perturbation: MaybePerturbation = None,
    extra_layers: PyTree = None,
    layer_fn: LayerHook | None = None,
    num_prefix: int = 0,
    return_kv: bool = False,
) -> tuple[Array, tuple[Array, Array] | None]:
    """Runs embeddings, the scanned blocks and the final norm; returns ``(h [B,T,H], kv)``.

    Args:
      config, dtype: the architecture and compute dtype.
      params: the parameters (see the module docstring).
      input_ids, attention_mask: ``int32[B, T]``; left padding is supported.
      perturbation: a :class:`zojax.perturb.Perturbation` ``(direction, scale)``: evaluate at
        ``params + scale · v``, on the fly.
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
    perturbation = as_perturbation(perturbation)
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
            layer, low_rank = perturb_layer(layer, perturbation, li)
        prefix_kv = None
        if layer_fn is not None:
            layer, prefix_kv = layer_fn(layer, extra, li)
        variables = {"params": layer, **({LOW_RANK: low_rank} if low_rank else {})}
        h, kv = block.apply(variables, h, positions, key_valid, prefix_kv)
        return h, (kv if return_kv else None)

    xs = (params["layers"], extra_layers, jnp.arange(config.num_layers, dtype=jnp.uint32))
    h, kv = jax.lax.scan(body, x, xs)
    return final_norm(config, params, h, perturbation), kv


def project(config: ModelConfig, params: PyTree, h: Array, perturbation: MaybePerturbation = None) -> Array:
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
    perturbation: MaybePerturbation = None,
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
    perturbation = as_perturbation(perturbation)
    if perturbation is not None and perturbation.subspace is not None:
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


class CausalLM:
    """What a model and an adapted model share, on top of their ``hidden_states`` and ``head_logits``.

    Every function takes the (trainable) parameters first and, as a keyword, ``frozen``: the frozen
    base of an adapted model (``None`` for a full model).
    """

    def last_token_logits(
        self,
        params: PyTree,
        input_ids: Array,
        attention_mask: Array,
        *,
        frozen: PyTree = None,
        perturbation: MaybePerturbation = None,
    ) -> Array:
        """float32 ``[B, V]`` logits after the last (left-padded) position, the head applied there only.

        Args:
          params: the (trainable) parameters.
          input_ids, attention_mask: ``int32[B, T]``, left-padded.
          frozen: an adapted model's frozen base parameters.
          perturbation: evaluate at ``params + scale · v`` on the fly.
        """
        h = self.hidden_states(params, input_ids, attention_mask, frozen=frozen, perturbation=perturbation)[:, -1]  # type: ignore[attr-defined]
        return self.head_logits(params, h, frozen=frozen, perturbation=perturbation)  # type: ignore[attr-defined]
