"""The estimators as optax gradient transformations.

Each transformation takes the loss through the extra argument ``value_fn`` (as optax's line searches
do), ignores the incoming ``updates`` and emits the zeroth-order gradient estimate ``ĝ`` in their
place, so it goes first in a chain::

    tx = optax.chain(zojax.guided(eps=1e-3, num_candidates=4), optax.sgd(1e-6))   # MeZO-GV
    tx = optax.chain(zojax.spsa(eps=1e-3), optax.adam(1e-5))                       # ZO-Adam
    updates, state = tx.update(params, state, params, value_fn=lambda p: loss(p, batch))
    params = optax.apply_updates(params, updates)

Every factory takes the perturbation family: ``perturbation="iid"`` (default, i.i.d. noise of
``distribution``) or ``perturbation="subspace", rank=r, refresh_every=k`` (SubZero's low-rank
``U Z Vᵀ`` noise on matrix leaves, the subspace redrawn every ``k`` steps): ``spsa`` → SubZero,
``guided`` → SubZero-GV, ``greedy`` → SubZero-Greedy, ``nspsa`` → subspace n-SPSA.

The state (:class:`ZOState`) holds a key and counters, never noise: step ``t`` draws from
``fold_in(key, t)``, so a run is reproducible from its state alone. A step whose losses are not all
finite emits a zero update and increments ``nonfinite_count``; :func:`skip_nonfinite` around the
whole chain also keeps the optimizers after the estimator from stepping on that zero.

Parameters must be real floating-point leaves (integer, boolean and complex leaves raise a
``ValueError`` naming the leaf, at ``init`` and ``update``; see :mod:`zojax.perturb` for why).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import checks, perturb, specs
from zojax.estimators import Estimate

PyTree = Any


class ZOState(NamedTuple):
    """State of a zeroth-order transformation.

    Attributes:
      key: ``uint32[4]`` base key data; step ``t`` uses ``fold_in(key, t)``.
      count: number of steps taken.
      num_forwards: cumulative forward passes spent on estimates.
      nonfinite_count: steps skipped because a loss was NaN or infinite.
      loss: the last step's loss estimate (see :class:`zojax.estimators.Estimate`).
      projected_grad: the last step's scalar projected gradient.
    """

    key: jax.Array
    count: jax.Array
    num_forwards: jax.Array
    nonfinite_count: jax.Array
    loss: jax.Array
    projected_grad: jax.Array


def _check_same_structure(updates: PyTree, params: PyTree) -> None:
    u, p = jax.tree.structure(updates), jax.tree.structure(params)
    if u != p:
        raise ValueError(
            f"updates: must have the structure of params (its values are ignored; pass params), got {u} vs params {p}"
        )
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"updates: leaf shape {jnp.shape(a)} does not match params leaf shape {jnp.shape(b)}")


def zeroth_order(
    estimate_fn: Callable[..., Estimate],
    num_forwards: int,
    key: int | jax.Array = 0,
    subspace: tuple[int, int] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps a pure estimator ``estimate_fn(value_fn, params, step_key) -> Estimate`` as a transform.

    Args:
      estimate_fn: a function of ``(value_fn, params, key)``, e.g. a ``functools.partial`` of
        :func:`zojax.estimators.estimate_spsa` with its options bound.
      num_forwards: forward passes per step (static, added to ``ZOState.num_forwards``).
      key: seed or PRNG key of the perturbations.
      subspace: ``None`` (i.i.d. noise) or ``(rank, refresh_every)``: step ``t`` calls
        ``estimate_fn(..., subspace=Subspace(subspace_key(key, t, refresh_every), rank))``, so the
        subspace changes every ``refresh_every`` steps and the state still holds only the key and
        the counters (see :func:`zojax.perturb.subspace_key`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params`` and ``value_fn``.
    """
    base_key = perturb.key_data(key)

    def init_fn(params: PyTree) -> ZOState:
        checks.check_params(params)
        return ZOState(
            key=jnp.array(base_key),  # a fresh buffer: a step that donates the state must not free base_key
            count=jnp.zeros((), jnp.int32),
            num_forwards=jnp.zeros((), jnp.int32),
            nonfinite_count=jnp.zeros((), jnp.int32),
            loss=jnp.zeros((), jnp.float32),
            projected_grad=jnp.zeros((), jnp.float32),
        )

    def update_fn(
        updates: PyTree,
        state: ZOState,
        params: PyTree | None = None,
        *,
        value_fn: Callable[[PyTree], jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, ZOState]:
        del extra_args
        if params is None:
            raise ValueError("params: zeroth-order transforms perturb the parameters; pass them to update()")
        if value_fn is None:
            raise ValueError(
                "value_fn: pass the loss as update(updates, state, params, value_fn=lambda p: loss(p, batch))"
            )
        checks.check_params(params)
        if updates is not None:
            _check_same_structure(updates, params)
        step_key = perturb.fold_in(state.key, state.count)
        if subspace is None:
            est = estimate_fn(value_fn, params, step_key)
        else:
            rank, refresh_every = subspace
            basis = perturb.subspace_key(state.key, state.count, refresh_every)
            est = estimate_fn(value_fn, params, step_key, subspace=perturb.Subspace(basis, rank))
        finite = jnp.all(jnp.isfinite(est.losses))
        grad_dir = est.grad
        grad_dir = dataclasses.replace(grad_dir, weights=jnp.where(finite, grad_dir.weights, 0.0))
        grad = perturb.scaled_direction_tree(grad_dir, params, 1.0)
        new_state = ZOState(
            key=state.key,
            count=state.count + 1,
            num_forwards=state.num_forwards + num_forwards,
            nonfinite_count=state.nonfinite_count + jnp.where(finite, 0, 1).astype(jnp.int32),
            loss=est.loss,
            projected_grad=jnp.where(finite, est.projected_grad, 0.0),
        )
        return grad, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _from_spec(
    spec: specs.Spec,
    key: int | jax.Array,
    *,
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
    """The transformation of ``spec`` with ``options`` (checked once, by ``spec.validate``) and the
    perturbation family (i.i.d., or SubZero's subspace: :func:`zojax.checks.check_perturbation`)."""
    options = spec.validate(**options)
    subspace = checks.check_perturbation(perturbation, rank, refresh_every)
    return zeroth_order(functools.partial(spec.estimate, **options), spec.num_forwards(**options), key, subspace)


def spsa(
    eps: float = 1e-3,
    *,
    one_sided: bool = False,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO's SPSA estimate ``ĝ = (L(θ+εz) − L(θ−εz)) / 2ε · z`` as a transformation (2 forwards).

    See :func:`zojax.estimators.estimate_spsa` for the arguments.

    Example:
      >>> tx = optax.chain(spsa(eps=1e-3), optax.sgd(1e-2))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params, value_fn=lambda p: jnp.sum(p["w"] ** 2))
    """
    sub = {"perturbation": perturbation, "rank": rank, "refresh_every": refresh_every}
    return _from_spec(specs.SPSA, key, eps=eps, one_sided=one_sided, distribution=distribution, **sub)


def nspsa(
    eps: float = 1e-3,
    num_queries: int = 2,
    *,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """n-SPSA, the SPSA estimate averaged over ``q`` directions (``2q`` forwards).

    See :func:`zojax.estimators.estimate_nspsa` for the arguments.
    """
    sub = {"perturbation": perturbation, "rank": rank, "refresh_every": refresh_every}
    return _from_spec(specs.NSPSA, key, eps=eps, num_queries=num_queries, distribution=distribution, **sub)


def guided(
    eps: float = 1e-3,
    num_candidates: int = 4,
    elite_ratio: float = 0.5,
    *,
    weighting: str = "mean_diff",
    normalize: bool = False,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO-GV's guided estimate (``M + 2`` forwards).

    ``v = mean(z_i, low-loss group) − mean(z_i, rest)`` from ``M`` candidates ``L(θ + εz_i)``, then
    ``ĝ = (L(θ+εv) − L(θ−εv)) / 2ε · v``. See :func:`zojax.estimators.estimate_guided`.
    """
    sub = {"perturbation": perturbation, "rank": rank, "refresh_every": refresh_every}
    options = {"num_candidates": num_candidates, "elite_ratio": elite_ratio, "weighting": weighting}
    return _from_spec(specs.GUIDED, key, eps=eps, normalize=normalize, distribution=distribution, **options, **sub)


def greedy(
    eps: float = 1e-3,
    num_candidates: int = 4,
    *,
    reuse_best_loss: bool = False,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO-Greedy's estimate along the best of ``M`` candidates (``M + 2`` forwards, ``M + 1`` reusing).

    See :func:`zojax.estimators.estimate_greedy`.
    """
    sub = {"perturbation": perturbation, "rank": rank, "refresh_every": refresh_every}
    options = {"num_candidates": num_candidates, "reuse_best_loss": reuse_best_loss}
    return _from_spec(specs.GREEDY, key, eps=eps, distribution=distribution, **options, **sub)


def centred(
    eps: float = 1e-3,
    num_candidates: int = 4,
    *,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """The centred-loss estimate ``ĝ = Σ_i (l_i − l̄) z_i / ((M − 1) ε)`` of ``M`` candidates (``M`` forwards).

    See :func:`zojax.estimators.estimate_centred`.

    Example:
      >>> tx = optax.chain(centred(eps=1e-3, num_candidates=4), optax.sgd(1e-2))
    """
    sub = {"perturbation": perturbation, "rank": rank, "refresh_every": refresh_every}
    return _from_spec(specs.CENTRED, key, eps=eps, num_candidates=num_candidates, distribution=distribution, **sub)


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      skipped: steps whose whole update was dropped (non-finite loss or update).
      inner_state: the wrapped transformation's state.
    """

    skipped: jax.Array
    inner_state: Any


def _zo_states(state: Any) -> list[ZOState]:
    return [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ZOState)) if isinstance(s, ZOState)]


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Skips the whole chain on a step whose loss or update is not finite.

    A zojax estimator turns a non-finite loss into a zero update, but the optimizers chained after
    it still step on that zero: Adam's or momentum SGD's moving averages move the parameters and
    change their own state. Wrap the whole chain, estimator included::

        tx = zojax.skip_nonfinite(optax.chain(zojax.spsa(eps=1e-3), optax.adam(1e-4)))
        updates, state = tx.update(params, state, params, value_fn=loss)

    On a step where any loss the estimator measured is NaN or infinite, or any emitted update is,
    the wrapper returns zero updates and keeps every state of the wrapped chain bitwise as it was,
    except the estimators' :class:`ZOState`, which advances (``count``, so the next step draws new
    noise; ``num_forwards``; ``nonfinite_count``). ``SkipNonfiniteState.skipped`` counts the
    skipped steps. The chain's update is computed and then discarded (a select, no extra forward).

    ``optax.apply_if_finite`` cannot do this: it inspects the ``updates`` it is given before the
    wrapped chain runs. Around the chain, those are the parameters passed in place of a gradient
    (finite), so nothing is ever skipped; after the estimator, they are its zero update (finite),
    so the optimizer steps anyway.

    Args:
      inner: a transformation containing at least one zojax estimator (checked at ``init``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` passing ``params`` and extra arguments
      (``value_fn``) through to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> SkipNonfiniteState:
        inner_state = inner.init(params)
        if not _zo_states(inner_state):
            raise ValueError(
                "skip_nonfinite: the wrapped transformation holds no zojax estimator; wrap the "
                "whole chain, e.g. skip_nonfinite(optax.chain(zojax.spsa(), optax.adam(lr)))"
            )
        return SkipNonfiniteState(jnp.zeros((), jnp.int32), inner_state)

    def update_fn(
        updates: PyTree, state: SkipNonfiniteState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, SkipNonfiniteState]:
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        finite = jnp.array(True)
        for old, new in zip(_zo_states(state.inner_state), _zo_states(new_inner), strict=True):
            finite &= new.nonfinite_count == old.nonfinite_count
        for u in jax.tree.leaves(new_updates):
            finite &= jnp.all(jnp.isfinite(u))

        def keep(new: Any, old: Any) -> Any:
            return new if isinstance(new, ZOState) else jax.lax.select(finite, new, old)

        inner_state = jax.tree.map(keep, new_inner, state.inner_state, is_leaf=lambda x: isinstance(x, ZOState))
        out = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
        return out, SkipNonfiniteState(skipped, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def zo_state(state: Any) -> ZOState:
    """Finds the :class:`ZOState` inside a (possibly chained, wrapped) optimizer state."""
    found = _zo_states(state)
    if not found:
        raise ValueError("state: no ZOState found; is a zojax estimator part of this optimizer?")
    return found[0]
