r"""Flax (linen) decoder blocks for the Llama family and OPT.

Each block is one decoder layer; a model stacks the parameters of its ``L`` blocks along a leading
axis and runs them with ``jax.lax.scan`` (see :mod:`zojax.models.model`). Parameters are created in
``param_dtype`` and the computation runs in ``dtype``; normalisation statistics, attention logits
and the softmax are computed in float32.

Attention (per query position ``t``, grouped-query: query head ``h`` uses key/value head
``h // G``):

.. math::

   \mathrm{attn}(x)_t = \sum_{s \le t,\ m_s = 1}
   \mathrm{softmax}_s\Big(\frac{q_t \cdot k_s}{\sqrt{D}}\Big) v_s

Optional extra keys/values (prefix tuning's virtual tokens, or a KV cache) are prepended and always
visible.

Low-rank weight perturbations: a block applied with a ``"low_rank"`` variable collection
``{name: {"a": A [in, r], "b": B [out, r]}}`` computes dense layer ``name`` at ``K + A Bᵀ`` as
``x K + (x A) Bᵀ`` (:func:`low_rank_dense`), never forming the ``in×out`` product.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zojax.models.config import ModelConfig

Array = jax.Array
NEG_INF = -1e30
LOW_RANK = "low_rank"  # the variable collection of low-rank kernel perturbations (low_rank_dense)


def rope_inv_freq(config: ModelConfig) -> Array:
    """Rotary inverse frequencies ``θ^{-2i/D}``, with Llama-3 frequency scaling when configured."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if config.rope_scaling:
        s = dict(config.rope_scaling)
        factor = float(s["factor"])
        low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
        old = float(s.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * jnp.pi / inv
        scaled = jnp.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = jnp.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """HF ``rotate_half`` RoPE: ``x cos + rotate_half(x) sin`` on ``x: [B, T, heads, D]``."""
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


def attend(q: Array, k: Array, v: Array, allowed: Array) -> Array:
    """Grouped-query softmax attention.

    Args:
      q: ``[B, T, Hq, D]`` (already scaled by ``1/√D``).
      k, v: ``[B, S, Hkv, D]``.
      allowed: bool ``[B, T, S]``.

    Returns:
      ``[B, T, Hq·D]``.
    """
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    qg = q.reshape(b, t, hkv, g, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq * d)


def attention_mask(key_valid: Array, num_fixed: int, t: int, cache_index: Array | None = None) -> Array:
    """Which keys each query may see: bool ``[B, T, S]``.

    Without a cache: keys are ``num_fixed`` always-visible prefix slots followed by the ``T``
    current tokens, and query ``t`` sees prefix slots and tokens ``s ≤ t`` with ``key_valid`` set.
    With a cache (``cache_index`` = slot of the first query): query ``t`` sees cache slots
    ``≤ cache_index + t``.
    """
    s = key_valid.shape[1]
    qi = jnp.arange(t)[:, None]
    kj = jnp.arange(s)[None, :]
    causal = (kj < num_fixed) | (kj - num_fixed <= qi) if cache_index is None else kj <= cache_index + qi
    return causal[None] & (key_valid[:, None, :] > 0)


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x²) + ε) · w`` (statistics in float32, no ``+1`` on ``w``)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * w.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
    """``y = (x − μ) / sqrt(σ² + ε) · w + b`` (statistics in float32)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        b = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        mu = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
        y = (xf - mu) * jax.lax.rsqrt(var + self.eps)
        return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(self.dtype)


def _dense(features: int, name: str, bias: bool, dtype: Any, param_dtype: Any) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def low_rank_dense(block: nn.Module, dense: nn.Dense, x: Array) -> Array:
    r"""``dense(x)``, plus ``(x A) Bᵀ`` when ``block`` holds ``{"a", "b"}`` for it in :data:`LOW_RANK`.

    .. math::

       x (K + A B^\top) + b = (x K + b) + (x A) B^\top

    The correction is computed in float32 (``A``, ``B`` are float32) and added before the cast to
    the layer's dtype. Cost: ``2 r (m + n)`` flops per token against ``2 r m n`` once for the
    ``m×n`` product ``A Bᵀ``.
    """
    y = dense(x)
    if not block.has_variable(LOW_RANK, dense.name):
        return y
    factors = block.get_variable(LOW_RANK, dense.name)
    hi = jax.lax.Precision.HIGHEST
    xa = jnp.matmul(x.astype(jnp.float32), factors["a"], precision=hi)
    delta = jnp.matmul(xa, factors["b"].T, precision=hi)
    return (y.astype(jnp.float32) + delta).astype(y.dtype)


class DecoderBlock(nn.Module):
    """One decoder layer (``config.arch`` selects Llama or OPT).

    Llama: ``h = x + o(attn(rope(q(n₁x)), rope(k(n₁x)), v(n₁x)))``,
    ``y = h + down(silu(gate(n₂h)) ⊙ up(n₂h))``.
    OPT (pre-LN): ``h = x + o(attn(q(n₁x)/√D, k(n₁x), v(n₁x)))``, ``y = h + fc2(relu(fc1(n₂h)))``.

    Call arguments:
      x: ``[B, T, H]`` hidden states.
      positions: ``int32[B, T]`` position ids (RoPE; unused by OPT whose positions are embedded).
      key_valid: ``[B, S]`` 1 for keys that may be attended (``S = P + T`` with ``P`` prefix slots,
        or the cache length with a cache).
      prefix_kv: optional ``(k, v)`` of shape ``[P, Hkv, D]`` (or ``[B, P, Hkv, D]``) prepended to
        the keys.
      cache: optional ``(k, v)`` ``[B, S, Hkv, D]``; the new keys/values are written at
        ``cache_index``.
      cache_index: slot of the first current token in the cache.

    Returns:
      ``(y, (k, v))`` where ``(k, v)`` are this call's keys/values (``[B, T, Hkv, D]``, post-RoPE),
      or the updated cache when a cache was given.
    """

    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        key_valid: Array,
        prefix_kv: tuple[Array, Array] | None = None,
        cache: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array]]:
        c = self.config
        llama = c.arch == "llama"
        bias = not llama
        dt, pdt = self.dtype, self.param_dtype
        b, t, _ = x.shape
        d, hq, hkv = c.head_dim, c.num_heads, c.num_kv_heads
        norm = RMSNorm if llama else LayerNorm

        def dense(features: int, name: str, with_bias: bool, inputs: Array) -> Array:
            layer = _dense(features, name, with_bias, dt, pdt)
            return low_rank_dense(self, layer, inputs)

        h = norm(c.norm_eps, dt, pdt, name="input_norm")(x)
        q = dense(hq * d, "q_proj", bias, h).reshape(b, t, hq, d)
        k = dense(hkv * d, "k_proj", bias, h).reshape(b, t, hkv, d)
        v = dense(hkv * d, "v_proj", bias, h).reshape(b, t, hkv, d)
        if llama:
            inv = rope_inv_freq(c)
            q = apply_rope(q, positions, inv)
            k = apply_rope(k, positions, inv)
        q = (q.astype(jnp.float32) * d**-0.5).astype(dt)

        if cache is not None:
            ck, cv = cache
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            allowed = attention_mask(key_valid, 0, t, cache_index)
            out = attend(q, ck.astype(dt), cv.astype(dt), allowed)
            new_kv = (ck, cv)
        else:
            kk, vv, num_fixed = k, v, 0
            if prefix_kv is not None:
                pk, pv = prefix_kv
                if pk.ndim == 3:
                    pk = jnp.broadcast_to(pk[None], (b, *pk.shape))
                    pv = jnp.broadcast_to(pv[None], (b, *pv.shape))
                num_fixed = pk.shape[1]
                kk = jnp.concatenate([pk.astype(dt), k], axis=1)
                vv = jnp.concatenate([pv.astype(dt), v], axis=1)
            allowed = attention_mask(key_valid, num_fixed, t)
            out = attend(q, kk, vv, allowed)
            new_kv = (k, v)
        x = x + dense(c.hidden_size, "o_proj", bias, out)

        h = norm(c.norm_eps, dt, pdt, name="post_norm")(x)
        if llama:
            gate = dense(c.intermediate_size, "gate_proj", False, h)
            up = dense(c.intermediate_size, "up_proj", False, h)
            y = dense(c.hidden_size, "down_proj", False, nn.silu(gate) * up)
        else:
            y = dense(c.hidden_size, "fc2", True, nn.relu(dense(c.intermediate_size, "fc1", True, h)))
        return x + y, new_kv
