r"""Low-precision updates that train: stochastic rounding into bfloat16, and the half-ulp check.

A bfloat16 weight has 8 significant bits, so round-to-nearest drops every update smaller than half
its unit in the last place (ulp): at MeZO's learning rates (``lr · |g| ≈ 1e-7 … 1e-5`` per
element) most weights of a bfloat16 model never move. Two remedies:

* float32 master weights with bfloat16 compute (``zojax finetune --dtype bfloat16
  --master-weights``): the model keeps float32 parameters (4 bytes per parameter, the float32
  memory) and casts them to bfloat16 inside each matmul, so activations and compute are bfloat16;
* stochastic rounding (:func:`stochastic_rounding`, ``--update-rounding stochastic``): the new
  weight is rounded up or down at random with the probabilities that make it exact in expectation,

  .. math::

     \theta_{t+1} = \mathrm{SR}(\theta_t + u_t),\qquad
     \Pr[\mathrm{SR}(x) = \lceil x\rceil] = \frac{x - \lfloor x\rfloor}{\lceil x\rceil - \lfloor x\rfloor},
     \qquad \mathbb{E}\,\mathrm{SR}(x) = x,

  with ``⌊x⌋, ⌈x⌉`` the neighbouring bfloat16 values. No extra memory: the 16 rounding bits of each
  element come from the same counter-based hash as the perturbations (:func:`zojax.perturb.counter_bits`
  of ``fold_in(fold_in(key, step), id(leaf))``), drawn inside the update's fusion, so a run stays
  reproducible from its key and step count and nothing but the key and a counter is stored.

How: bfloat16 is the top 16 bits of a float32. Adding 16 uniform random bits to the low half of
``x``'s float32 bit pattern and truncating rounds its magnitude up with probability equal to the
dropped fraction (the sign is a separate bit, so negative values round symmetrically).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zojax import perturb
from zojax.specs import ROUNDINGS

__all__ = ["ROUNDINGS", "below_half_ulp_fraction", "changed_fraction", "stochastic_round", "stochastic_rounding"]

PyTree = Any
_LOW_HALF = np.uint32(0xFFFF)
_HIGH_HALF = np.uint32(0xFFFF0000)


def stochastic_round(x: jax.Array, bits: jax.Array) -> jax.Array:
    r"""Rounds float32 ``x`` to bfloat16 up or down at random, exactly in expectation.

    .. math:: \mathrm{SR}(x) = \mathrm{trunc}_{16}(x + r\cdot 2^{-16}\,\mathrm{ulp}(x)),\quad
       r \sim U\{0, …, 2^{16}-1\},

    (on the float32 bit pattern: ``(bits(x) + r) & 0xFFFF0000``). Non-finite values round to nearest.

    Args:
      x: float32 values.
      bits: ``uint32`` random words of ``x``'s shape; their top 16 bits are used.

    Returns:
      bfloat16 values ``y`` with ``E[y] = x`` (``x`` finite and within bfloat16's range).

    Example:
      >>> x = jnp.full((4096,), 1.0 + 2.0**-9, jnp.float32)   # a quarter ulp above 1
      >>> y = stochastic_round(x, perturb.counter_bits(perturb.key_data(0), x.shape))
      >>> round(float(jnp.mean(y.astype(jnp.float32) == 1.0)), 1)  # 1 with probability 3/4
      0.7
    """
    x = jnp.asarray(x, jnp.float32)
    word = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = (word + (bits >> jnp.uint32(16))) & _HIGH_HALF
    y = jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)
    return jnp.where(jnp.isfinite(x), y, x.astype(jnp.bfloat16))


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`: a key and a step counter (never random bits).

    Attributes:
      key: ``uint32[4]`` key data; step ``t`` draws from ``fold_in(key, t)``.
      count: updates rounded so far.
    """

    key: jax.Array
    count: jax.Array


ROUNDING_STREAM = 0x5352  # "SR": separates the rounding bits from the perturbations of one seed


def stochastic_rounding(key: int | jax.Array = 0) -> optax.GradientTransformation:
    r"""Makes ``optax.apply_updates`` round each bfloat16 parameter stochastically: the last link.

    .. math:: u'_t = \mathrm{SR}(\theta_t + u_t) - \theta_t \quad(\text{float32}),\qquad
       \theta_{t+1} = \theta_t + u'_t = \mathrm{SR}(\theta_t + u_t)\ \text{exactly}.

    The emitted update is float32, and ``optax.apply_updates`` adds it in float32 and casts back to
    bfloat16, which is exact because ``SR(θ + u) − θ`` is (a difference of two bfloat16 values).
    float32 (and other non-bfloat16) leaves pass through untouched. Use it last in a chain, after
    the learning rate; the rounding bits of leaf ``p`` at step ``t`` are
    ``counter_bits(fold_in(fold_in(fold_in(key, ROUNDING_STREAM), t), id(p)))``.

    Args:
      key: an integer seed or key data (the run's seed; a separate stream from the perturbations).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
      >>> params = {"w": jnp.ones(3, jnp.bfloat16)}
      >>> tx = optax.chain(optax.sgd(1e-4), stochastic_rounding(key=0))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3, jnp.bfloat16)}, state, params)
      >>> optax.apply_updates(params, updates)["w"].dtype
      dtype(bfloat16)
    """
    base = perturb.fold_in(perturb.key_data(key), ROUNDING_STREAM)

    def init_fn(params: PyTree) -> StochasticRoundingState:
        del params
        return StochasticRoundingState(key=jnp.array(base), count=jnp.zeros((), jnp.int32))  # fresh (donation)

    def update_fn(
        updates: PyTree, state: StochasticRoundingState, params: PyTree | None = None
    ) -> tuple[PyTree, StochasticRoundingState]:
        if params is None:
            raise ValueError("params: stochastic_rounding rounds θ + u; pass params to update()")
        step_key = perturb.fold_in(state.key, state.count)

        def leaf(path: Any, u: jax.Array, p: jax.Array) -> jax.Array:
            if jnp.dtype(p.dtype) != jnp.dtype(jnp.bfloat16):
                return u
            theta = p.astype(jnp.float32)
            bits = perturb.counter_bits(perturb.fold_in(step_key, perturb.path_id(path)), p.shape)
            new = stochastic_round(theta + u.astype(jnp.float32), bits)
            return new.astype(jnp.float32) - theta

        rounded = jax.tree_util.tree_map_with_path(leaf, updates, params)
        return rounded, StochasticRoundingState(key=state.key, count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def changed_fraction(old: PyTree, new: PyTree) -> jax.Array:
    r"""The fraction of elements whose stored value changed: :math:`\frac1d\sum_i[\theta'_i \ne \theta_i]`.

    Args:
      old, new: parameter pytrees of equal structure (before and after an update).

    Returns:
      A float32 scalar in ``[0, 1]``.
    """
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(a != b, dtype=jnp.float32), old, new))
    size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(old))
    return sum(leaves) / max(size, 1)


def below_half_ulp_fraction(params: PyTree, updates: PyTree) -> jax.Array:
    r"""The fraction of elements whose update round-to-nearest would drop: :math:`|u_i| < \mathrm{ulp}(\theta_i)/2`.

    ``ulp`` is that of each parameter's own dtype (``jnp.spacing``), so float32 parameters give
    nearly 0 and bfloat16 ones at MeZO's learning rates nearly 1.

    Args:
      params: the parameters.
      updates: the updates about to be added (any float dtype).

    Returns:
      A float32 scalar in ``[0, 1]``.
    """

    def count(p: jax.Array, u: jax.Array) -> jax.Array:
        half_ulp = jnp.abs(jnp.spacing(p)).astype(jnp.float32) / 2
        return jnp.sum(jnp.abs(u.astype(jnp.float32)) < half_ulp, dtype=jnp.float32)

    counts = jax.tree.leaves(jax.tree.map(count, params, updates))
    size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return sum(counts) / max(size, 1)
