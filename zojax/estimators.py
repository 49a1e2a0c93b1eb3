"""Zeroth-order gradient estimators as pure functions of (loss, parameters, key).

Every estimator evaluates the loss only at perturbed points ``θ + s·v``, with the directions regenerated
from keys (:mod:`zojax.perturb`), and returns an :class:`Estimate` whose ``grad`` is itself a
regenerable :class:`~zojax.perturb.Direction`: the estimate ``ĝ`` is never held as M parameter-sized
buffers. Loops over candidates and queries are ``jax.lax.map``s, so one forward pass is live at a time.

Every estimator takes ``subspace=``: ``None`` draws i.i.d. noise (MeZO); a
:class:`~zojax.perturb.Subspace` draws SubZero's low-rank ``U Z Vᵀ`` noise on the matrix leaves, which
turns SPSA into SubZero, guided into SubZero-GV and greedy into SubZero-Greedy.

Forward passes per step (static) and the option checks of each estimator: :mod:`zojax.specs`, with the
checks themselves in :mod:`zojax.checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from zojax import perturb
from zojax.checks import (
    check_distribution,
    check_eps,
    check_flag,
    check_guided_options,
    check_num_candidates,
    check_num_queries,
    check_params,
    check_subspace,
    num_elite,
)
from zojax.perturb import Direction, PerturbableLoss
from zojax.specs import WEIGHTINGS

PyTree = Any
ValueFn = Callable[[PyTree], jax.Array] | PerturbableLoss
Weighting = Literal["mean_diff", "rank"]


class Estimate(NamedTuple):
    """What one estimator call returns.

    Attributes:
      grad: the gradient estimate ``ĝ = Σ_i w_i z_i`` as a regenerable direction.
      search: the direction ``v`` along which the two-point difference was taken (unit weights for
        SPSA; ``mean(top) − mean(rest)`` for MeZO-GV; the best candidate for greedy).
      projected_grad: the scalar ``g = (L(θ+εv) − L(θ−εv)) / 2ε`` (n-SPSA: the mean over queries).
      loss: an estimate of ``L(θ)`` for logging: ``(L(θ+εv) + L(θ−εv)) / 2`` for two-sided
        differences (exact up to ``O(ε²)``), ``L(θ)`` for one-sided ones.
      losses: every loss evaluated in this step, in evaluation order (candidates first).
    """

    grad: Direction
    search: Direction
    projected_grad: jax.Array
    loss: jax.Array
    losses: jax.Array


def two_point_losses(value_fn: ValueFn, params: PyTree, direction: Direction, eps: Any) -> jax.Array:
    """``[L(θ + εv), L(θ − εv)]``, run one after the other (``lax.map``) so one forward is live at a time."""
    signs = jnp.array([1.0, -1.0], jnp.float32)
    return jax.lax.map(lambda s: perturb.evaluate(value_fn, params, direction, s * eps), signs)


def candidate_losses(
    value_fn: ValueFn,
    params: PyTree,
    step_key: jax.Array,
    num: int,
    eps: Any,
    distribution: str,
    subspace: perturb.Subspace | None = None,
) -> jax.Array:
    """One-sided candidate losses ``l_i = L(θ + ε z_i)``, ``z_i`` drawn from ``fold_in(step_key, i)``.

    Each key is derived from the loop index inside the body: slicing a precomputed key array
    (``xs=keys`` or a dynamic index) made the compiled CPU loop ~500x slower in jax 0.10.2
    (``docs/jax_workarounds.md``).
    """

    def body(i: jax.Array) -> jax.Array:
        k = perturb.fold_in(step_key, i)
        z = Direction.single(k, 1.0, distribution, subspace)
        return perturb.evaluate(value_fn, params, z, eps)

    return jax.lax.map(body, jnp.arange(num, dtype=jnp.uint32))


def estimate_spsa(
    value_fn: ValueFn,
    params: PyTree,
    key: jax.Array,
    *,
    eps: float = 1e-3,
    one_sided: bool = False,
    distribution: str = "gaussian",
    subspace: perturb.Subspace | None = None,
) -> Estimate:
    r"""MeZO's SPSA estimate along one random direction.

    .. math::

       ĝ = \frac{L(θ+εz) - L(θ-εz)}{2ε} z \quad\text{(two-sided)}, \qquad
       ĝ = \frac{L(θ+εz) - L(θ)}{ε} z \quad\text{(one-sided)}, \qquad z \sim \mathcal{N}(0, I).

    Args:
      value_fn: ``params -> scalar loss``, or a :class:`~zojax.perturb.PerturbableLoss`.
      params: the parameters ``θ``.
      key: ``uint32[4]`` step key (see :func:`zojax.perturb.key_data`).
      eps: the perturbation scale ``ε > 0``.
      one_sided: use the forward difference against ``L(θ)``.
      distribution: ``"gaussian"`` (MeZO) or ``"rademacher"``.
      subspace: ``None`` (i.i.d. noise, MeZO) or a :class:`~zojax.perturb.Subspace`: SubZero's
        low-rank noise ``U Z Vᵀ`` on the matrix leaves (the transforms refresh its key).

    Returns:
      An :class:`Estimate`; 2 forward passes.

    Example:
      >>> f = lambda p: jnp.sum(p["w"] ** 2)
      >>> est = estimate_spsa(f, {"w": jnp.ones(3)}, perturb.key_data(0))
      >>> est.losses.shape
      (2,)
    """
    check_eps(eps)
    check_distribution(distribution)
    one_sided = check_flag("one_sided", one_sided)
    check_subspace(subspace)
    check_params(params)
    z = Direction.single(perturb.fold_in(key, 0), 1.0, distribution, subspace)
    if one_sided:
        plus = perturb.evaluate(value_fn, params, z, eps)
        base = _plain_loss(value_fn, params)
        g = (plus - base) / eps
        losses = jnp.stack([plus, base])
        loss = base
    else:
        losses = two_point_losses(value_fn, params, z, eps)
        g = (losses[0] - losses[1]) / (2 * eps)
        loss = 0.5 * (losses[0] + losses[1])
    return Estimate(z.scaled(g), z, g, loss, losses)


def _plain_loss(value_fn: ValueFn, params: PyTree) -> jax.Array:
    loss = jnp.asarray(value_fn(params))
    if loss.shape != ():
        raise ValueError(f"value_fn: the loss must be a scalar, got shape {loss.shape}")
    return loss.astype(jnp.float32)


def estimate_nspsa(
    value_fn: ValueFn,
    params: PyTree,
    key: jax.Array,
    *,
    eps: float = 1e-3,
    num_queries: int = 2,
    distribution: str = "gaussian",
    subspace: perturb.Subspace | None = None,
) -> Estimate:
    r"""n-SPSA: the two-sided SPSA estimate averaged over ``q`` independent directions.

    .. math::

       ĝ = \frac{1}{q} \sum_{j=1}^{q} \frac{L(θ+εz_j) - L(θ-εz_j)}{2ε} z_j.

    Args:
      value_fn: ``params -> scalar loss``, or a :class:`~zojax.perturb.PerturbableLoss`.
      params: the parameters ``θ``.
      key: ``uint32[4]`` step key.
      eps: the perturbation scale ``ε > 0``.
      num_queries: ``q >= 1``.
      distribution: ``"gaussian"`` or ``"rademacher"``.
      subspace: ``None`` or a :class:`~zojax.perturb.Subspace` (see :func:`estimate_spsa`); every
        query / candidate uses the same subspace.

    Returns:
      An :class:`Estimate` (``projected_grad`` is the mean of the ``q`` projections); ``2q`` forwards.
    """
    check_eps(eps)
    check_distribution(distribution)
    num_queries = check_num_queries(num_queries)
    check_subspace(subspace)
    check_params(params)
    keys = perturb.candidate_keys(key, num_queries)

    def body(i: jax.Array) -> jax.Array:
        z = Direction.single(perturb.fold_in(key, i), 1.0, distribution, subspace)
        return two_point_losses(value_fn, params, z, eps)

    pairs = jax.lax.map(body, jnp.arange(num_queries, dtype=jnp.uint32))
    g = (pairs[:, 0] - pairs[:, 1]) / (2 * eps)
    grad = Direction(keys, g / num_queries, distribution, subspace)
    unit = jnp.full((num_queries,), 1.0 / num_queries, jnp.float32)
    search = Direction(keys, unit, distribution, subspace)
    return Estimate(grad, search, jnp.mean(g), jnp.mean(pairs), pairs.reshape(-1))


def guiding_weights(
    losses: jax.Array,
    elite_ratio: float = 0.5,
    weighting: str = "mean_diff",
    normalize: bool = False,
) -> jax.Array:
    """Weights ``w`` that turn M ranked candidates into a guiding vector ``v = Σ_i w_i z_i``.

    * ``"mean_diff"`` (the paper's eq. 5): ``v = mean(z_i : i in the ⌊αM⌋ lowest losses) −
      mean(z_i : the rest)``, i.e. ``w_i = 1/⌊αM⌋`` or ``−1/(M − ⌊αM⌋)``.
    * ``"rank"``: weights linear in the rank, ``c_r = (M−1)/2 − r`` for rank ``r`` (0 = lowest loss),
      scaled so the positive weights sum to 1 (``elite_ratio`` is not used).

    With ``normalize=True`` the weights are divided by ``sqrt(Σ w_i²)``, so ``E‖v‖² = d`` like a single
    Gaussian ``z``. The paper does not normalise: with α = 0.5, ``E‖v‖² = 4d/M`` (2d for M = 2), which
    changes the effective step size; the paper re-tuned learning rates instead.

    Ties are broken by candidate index (stable sort).
    """
    m = losses.shape[0]
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    order = jnp.argsort(losses, stable=True)
    rank = jnp.zeros((m,), jnp.int32).at[order].set(jnp.arange(m, dtype=jnp.int32))
    if weighting == "mean_diff":
        top = num_elite(m, elite_ratio)
        w = jnp.where(rank < top, 1.0 / top, -1.0 / (m - top)).astype(jnp.float32)
    else:
        if m < 2:
            raise ValueError(f"num_candidates: guided directions need M >= 2 candidates, got {m}")
        c = (m - 1) / 2.0 - jnp.arange(m, dtype=jnp.float32)
        c = c / jnp.sum(jnp.maximum(c, 0.0))
        w = c[rank]
    if normalize:
        w = w / jnp.sqrt(jnp.sum(w**2))
    return w


def estimate_guided(
    value_fn: ValueFn,
    params: PyTree,
    key: jax.Array,
    *,
    eps: float = 1e-3,
    num_candidates: int = 4,
    elite_ratio: float = 0.5,
    weighting: str = "mean_diff",
    normalize: bool = False,
    distribution: str = "gaussian",
    subspace: perturb.Subspace | None = None,
) -> Estimate:
    r"""MeZO-GV: a two-point estimate along a guiding vector built from M ranked candidates.

    .. math::

       l_i = L(θ + εz_i),\quad v = \tfrac{1}{|T|}\sum_{i∈T} z_i - \tfrac{1}{|B|}\sum_{i∈B} z_i,\quad
       ĝ = \frac{L(θ+εv) - L(θ-εv)}{2ε} v,

    with ``T`` the ``⌊αM⌋`` lowest candidate losses and ``B`` the rest. Candidate ``i``'s ``z_i`` is
    exactly the noise whose loss was measured (the consistent definition; the authors' code re-seeds
    per tensor).

    Args:
      value_fn: ``params -> scalar loss``, or a :class:`~zojax.perturb.PerturbableLoss`.
      params: the parameters ``θ``.
      key: ``uint32[4]`` step key; candidate ``i`` uses ``fold_in(key, i)``.
      eps: the perturbation scale ``ε > 0`` (candidates and the two-point step).
      num_candidates: ``M >= 2``.
      elite_ratio: ``α``; ``⌊αM⌋`` must leave both groups non-empty.
      weighting: ``"mean_diff"`` (paper) or ``"rank"`` (see :func:`guiding_weights`).
      normalize: rescale ``v`` so that ``E‖v‖² = d``.
      distribution: ``"gaussian"`` or ``"rademacher"``.
      subspace: ``None`` or a :class:`~zojax.perturb.Subspace` (see :func:`estimate_spsa`); every
        query / candidate uses the same subspace.

    Returns:
      An :class:`Estimate`; ``M + 2`` forward passes.
    """
    check_eps(eps)
    check_distribution(distribution)
    num_candidates = check_guided_options(num_candidates, elite_ratio, weighting, normalize)
    check_subspace(subspace)
    check_params(params)
    cand = candidate_losses(value_fn, params, key, num_candidates, eps, distribution, subspace)
    keys = perturb.candidate_keys(key, num_candidates)
    weights = guiding_weights(cand, elite_ratio, weighting, normalize)
    v = Direction(keys, weights, distribution, subspace)
    pair = two_point_losses(value_fn, params, v, eps)
    g = (pair[0] - pair[1]) / (2 * eps)
    return Estimate(v.scaled(g), v, g, 0.5 * (pair[0] + pair[1]), jnp.concatenate([cand, pair]))


def estimate_greedy(
    value_fn: ValueFn,
    params: PyTree,
    key: jax.Array,
    *,
    eps: float = 1e-3,
    num_candidates: int = 4,
    reuse_best_loss: bool = False,
    distribution: str = "gaussian",
    subspace: perturb.Subspace | None = None,
) -> Estimate:
    r"""MeZO-Greedy: a two-point estimate along the best of M candidate directions.

    .. math::

       z^* = \arg\min_{z_i} L(θ + εz_i), \qquad ĝ = \frac{L(θ+εz^*) - L(θ-εz^*)}{2ε} z^*.

    Args:
      value_fn: ``params -> scalar loss``, or a :class:`~zojax.perturb.PerturbableLoss`.
      params: the parameters ``θ``.
      key: ``uint32[4]`` step key; candidate ``i`` uses ``fold_in(key, i)``.
      eps: the perturbation scale ``ε > 0``.
      num_candidates: ``M >= 1``.
      reuse_best_loss: take ``L(θ+εz*)`` from the candidate evaluations instead of measuring it
        again (``M + 1`` forwards instead of the paper's ``M + 2``; the same value up to the
        non-associativity of float arithmetic across program structures).
      distribution: ``"gaussian"`` or ``"rademacher"``.
      subspace: ``None`` or a :class:`~zojax.perturb.Subspace` (see :func:`estimate_spsa`); every
        query / candidate uses the same subspace.

    Returns:
      An :class:`Estimate`; ``M + 2`` forward passes (``M + 1`` with ``reuse_best_loss``).
    """
    check_eps(eps)
    check_distribution(distribution)
    num_candidates = check_num_candidates(num_candidates, 1)
    reuse_best_loss = check_flag("reuse_best_loss", reuse_best_loss)
    check_subspace(subspace)
    check_params(params)
    cand = candidate_losses(value_fn, params, key, num_candidates, eps, distribution, subspace)
    best = jnp.argmin(cand)
    best_key = perturb.fold_in(key, best.astype(jnp.uint32))
    v = Direction.single(best_key, 1.0, distribution, subspace)
    if reuse_best_loss:
        minus = perturb.evaluate(value_fn, params, v, -eps)
        pair = jnp.stack([cand[best], minus])
        losses = jnp.concatenate([cand, minus[None]])
    else:
        pair = two_point_losses(value_fn, params, v, eps)
        losses = jnp.concatenate([cand, pair])
    g = (pair[0] - pair[1]) / (2 * eps)
    return Estimate(v.scaled(g), v, g, 0.5 * (pair[0] + pair[1]), losses)


def centred_weights(losses: jax.Array, eps: Any) -> jax.Array:
    r"""The centred-loss estimator's weights ``w_i = (l_i − l̄) / ((M − 1) ε)``, ``l̄`` the mean of ``losses``."""
    m = losses.shape[0]
    return (losses - jnp.mean(losses)) / ((m - 1) * eps)


def estimate_centred(
    value_fn: ValueFn,
    params: PyTree,
    key: jax.Array,
    *,
    eps: float = 1e-3,
    num_candidates: int = 4,
    distribution: str = "gaussian",
    subspace: perturb.Subspace | None = None,
) -> Estimate:
    r"""The centred-loss estimate (beyond the paper): every candidate's loss by value, no ranking.

    .. math::

       l_i = L(θ + εz_i), \qquad \bar l = \frac{1}{M}\sum_j l_j, \qquad
       ĝ = \frac{1}{(M-1)\,ε} \sum_{i=1}^{M} (l_i - \bar l)\, z_i.

    Unbiased on quadratics for Gaussian and Rademacher noise: ``E[(z_iᵀ∇L − \bar p) z_i] =
    (1 − 1/M) ∇L`` and the curvature term ``ε²/2 · z_iᵀHz_i`` is uncorrelated with ``z_i`` (odd
    moments), which the ``M − 1`` corrects. On a linear loss its perpendicular noise is ``1/(M−1)``
    of MeZO's, so for ``M`` forwards its signal-to-noise ratio per forward pass is ``2(M−1)/M``
    times MeZO's (1.5 at M = 4, 1.75 at M = 8), where MeZO-GV (M + 2 forwards) spends the candidate
    losses on a ranking and MeZO spends a forward on ``L(θ − εz)``. On SmolLM2-135M, measured by
    ``experiments/directions.py`` (9 full-parameter minibatches): 1.37 and 1.57, MeZO 0.97, MeZO-GV
    (M = 4) 0.64 (README, "Beyond the paper").

    Args:
      value_fn: ``params -> scalar loss``, or a :class:`~zojax.perturb.PerturbableLoss`.
      params: the parameters ``θ``.
      key: ``uint32[4]`` step key; candidate ``i`` uses ``fold_in(key, i)``.
      eps: the perturbation scale ``ε > 0``.
      num_candidates: ``M >= 2``.
      distribution: ``"gaussian"`` or ``"rademacher"``.
      subspace: ``None`` or a :class:`~zojax.perturb.Subspace` (see :func:`estimate_spsa`); every
        candidate uses the same subspace.

    Returns:
      An :class:`Estimate` with ``grad = Σ_i w_i z_i`` (:func:`centred_weights`), ``projected_grad``
      the spread ``s = √(Σ_i (l_i − l̄)² / (M − 1)) / ε`` of the candidates' directional
      derivatives (≈ ‖∇L‖ for Gaussian noise), ``search = ĝ / s`` and ``loss = l̄`` (``L(θ)`` up to
      ``ε² tr(H) / 2``); ``M`` forward passes.

    Example:
      >>> f = lambda p: jnp.sum(p["w"] ** 2)
      >>> est = estimate_centred(f, {"w": jnp.ones(3)}, perturb.key_data(0), num_candidates=4)
      >>> est.losses.shape
      (4,)
    """
    check_eps(eps)
    check_distribution(distribution)
    num_candidates = check_num_candidates(num_candidates, 2, "centred estimates")
    check_subspace(subspace)
    check_params(params)
    cand = candidate_losses(value_fn, params, key, num_candidates, eps, distribution, subspace)
    keys = perturb.candidate_keys(key, num_candidates)
    weights = centred_weights(cand, eps)
    # s² = Σ (l_i − l̄)² / ((M − 1) ε²) = (M − 1) Σ w_i², from the weights already centred.
    spread = jnp.sqrt((num_candidates - 1) * jnp.sum(jnp.square(weights)))
    unit = jnp.where(spread > 0, weights / jnp.where(spread > 0, spread, 1.0), 0.0)
    grad = Direction(keys, weights, distribution, subspace)
    return Estimate(grad, Direction(keys, unit, distribution, subspace), spread, jnp.mean(cand), cand)
