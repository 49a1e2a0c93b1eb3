r"""A regenerable direction ``v = Σ_i w_i z_i`` over a parameter pytree, and the ways to add it.

:class:`Direction` is what an estimator hands to every consumer: the perturbed forward
(:func:`perturb_subtree` inside a model's layer scan, or :func:`perturb` for a plain loss, both through
:func:`evaluate`) and the update (:func:`scaled_direction_tree`). Each regenerates ``v`` one leaf (or
one layer of a leaf) at a time from the keys (:func:`leaves_noise`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from zojax.perturb.noise import KeyPath, PyTree, check_float_leaves, leaf_noise
from zojax.perturb.subspace import LeafSpec, Subspace, subspace_factors_many, subspace_noise

UNROLL_MAX = 4  # directions with more keys are drawn as one vmap and reduced (see Direction.leaf)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Direction:
    """A regenerable direction ``v = Σ_i weights[i] · z(keys[i])`` over a parameter pytree.

    Attributes:
      keys: ``uint32[K, 4]`` candidate key data.
      weights: ``float32[K]`` combination weights.
      distribution: the noise distribution (static).
      subspace: ``None`` (i.i.d. noise) or the :class:`Subspace` of SubZero-style low-rank noise
        for the matrix leaves (see the module docstring).
    """

    keys: jax.Array
    weights: jax.Array
    distribution: str = dataclasses.field(default="gaussian", metadata={"static": True})
    subspace: Subspace | None = None

    @classmethod
    def single(
        cls,
        key: jax.Array,
        weight: float | jax.Array = 1.0,
        distribution: str = "gaussian",
        subspace: Subspace | None = None,
    ) -> Direction:
        """The direction ``weight · z(key)``."""
        weights = jnp.reshape(jnp.asarray(weight, jnp.float32), (1,))
        return cls(key[None], weights, distribution, subspace)

    def scaled(self, factor: float | jax.Array) -> Direction:
        """The direction ``factor · v`` (only the weights change)."""
        return dataclasses.replace(self, weights=self.weights * jnp.asarray(factor, jnp.float32))

    def leaf(self, path: KeyPath, shape: Sequence[int], layer: int | jax.Array | None = None) -> jax.Array:
        """float32 ``v = Σ_i w_i z_i`` for one leaf (or one layer slice of a stacked leaf).

        Up to :data:`UNROLL_MAX` terms the sum is unrolled: XLA fuses the draws and the axpys into
        whatever consumes ``v`` (the perturbed layer, the parameter update). Beyond, the ``K``
        draws are one ``vmap`` over the keys reduced over the key axis,
        ``v = reduce_add_k(w_k · z_k)``: the draw's code is emitted once instead of ``K`` times
        (compile time stays flat in ``K``) and, compiled with
        :data:`zojax.ZO_COMPILER_OPTIONS`, the reduction fuses with the draws and with the
        consumer, so neither the ``[K, *shape]`` draws nor ``v`` itself is materialised (the
        update is applied in place into donated parameters, as in the unrolled case).

        With a :attr:`subspace`, a matrix leaf's ``v`` is the low-rank product built from the
        ``r_U×r_V`` core ``Σ_i w_i Z_i`` (one layer at a time when ``layer`` is given; several
        leaves: :func:`leaves_noise`, which orthonormalises their bases together).
        """
        if self.subspace is not None:
            low_rank = subspace_noise(self, [(path, shape, layer)])[0]
            if low_rank is not None:
                return low_rank
        return self.iid_leaf(path, shape, layer)

    def iid_leaf(self, path: KeyPath, shape: Sequence[int], layer: int | jax.Array | None = None) -> jax.Array:
        """float32 i.i.d. ``v = Σ_i w_i z_i`` for one leaf, ignoring :attr:`subspace` (see :meth:`leaf`)."""
        num = self.keys.shape[0]
        if num <= UNROLL_MAX:
            total = self.weights[0] * leaf_noise(self.keys[0], path, shape, self.distribution, layer)
            for i in range(1, num):
                total = total + self.weights[i] * leaf_noise(self.keys[i], path, shape, self.distribution, layer)
            return total
        shape = tuple(int(s) for s in shape)
        draws = jax.vmap(lambda k: leaf_noise(k, path, shape, self.distribution, layer))(self.keys)
        # a multiply + reduce, not a dot: XLA fuses a reduce into its producers and consumers, a
        # dot it would hand to a library kernel that needs the [K, *shape] draws in memory
        return jnp.sum(self.weights.reshape((num,) + (1,) * len(shape)) * draws, axis=0)


def leaves_noise(direction: Direction, leaves: Sequence[LeafSpec]) -> list[jax.Array]:
    """float32 ``v`` of each ``(path, shape, layer)`` (as :meth:`Direction.leaf`); under subspace noise
    the bases of all the matrix leaves are orthonormalised together (:func:`subspace_noise`)."""
    if direction.subspace is None:
        return [direction.leaf(*leaf) for leaf in leaves]
    low_rank = subspace_noise(direction, leaves)
    return [direction.iid_leaf(*leaf) if x is None else x for x, leaf in zip(low_rank, leaves, strict=True)]


def _noise_tree(
    direction: Direction, like: PyTree, prefix: KeyPath = (), layer: int | jax.Array | None = None
) -> PyTree:
    """:func:`leaves_noise` of every leaf of ``like`` (at ``prefix`` in the perturbed pytree), as a tree."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [(tuple(prefix) + tuple(p), jnp.shape(x), layer) for p, x in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves_noise(direction, leaves))


def direction_tree(direction: Direction, like: PyTree) -> PyTree:
    """Materialises ``v`` as a pytree of float32 arrays shaped like ``like`` (tests and references)."""
    check_float_leaves(like)
    return _noise_tree(direction, like)


def perturb(params: PyTree, direction: Direction, scale: float | jax.Array) -> PyTree:
    """Returns ``θ + scale · v`` (computed in float32, cast back to each leaf's dtype).

    This materialises one perturbed copy of the parameters; models that implement
    :class:`PerturbableLoss` avoid even that. Directions of more than :data:`UNROLL_MAX` keys are
    added one key at a time into that copy (a ``fori_loop`` carrying the float32 perturbed tree),
    so no per-leaf direction buffer exists besides it, whatever ``K``.
    """
    check_float_leaves(params)
    scale = jnp.asarray(scale, jnp.float32)
    num = direction.keys.shape[0]
    if num <= UNROLL_MAX or direction.subspace is not None:
        add = lambda x, v: (x.astype(jnp.float32) + scale * v).astype(x.dtype)
        return jax.tree.map(add, params, _noise_tree(direction, params))

    def body(i: jax.Array, acc: PyTree) -> PyTree:
        c = scale * direction.weights[i]
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x + c * leaf_noise(direction.keys[i], path, x.shape, direction.distribution),
            acc,
        )

    acc = jax.lax.fori_loop(0, num, body, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    return jax.tree.map(lambda a, x: a.astype(x.dtype), acc, params)


def perturb_subtree(
    subtree: PyTree,
    prefix: KeyPath,
    direction: Direction,
    scale: float | jax.Array,
    layer: int | jax.Array | None = None,
) -> PyTree:
    """``θ + scale · v`` for a subtree located at ``prefix`` in the full perturbed pytree.

    This is the hook for on-the-fly perturbation: a model scanning over its stacked layers calls
    ``perturb_subtree(layer_params, ("layers",), direction, scale, layer=l)`` in the scan body, so only
    one layer's perturbed weights exist at a time. ``prefix`` may hold plain strings or key-path entries.

    Args:
      subtree: the (sliced) parameters, e.g. one layer of the stacked ``layers`` subtree.
      prefix: the subtree's key path in the full pytree.
      direction: the direction to add.
      scale: the step along it (e.g. ``±ε``).
      layer: the layer index when ``subtree`` is one slice of stacked leaves.

    Returns:
      the perturbed subtree, each leaf in its own dtype.
    """
    prefix = tuple(jax.tree_util.DictKey(p) if isinstance(p, str) else p for p in prefix)
    check_float_leaves(subtree, prefix)
    scale = jnp.asarray(scale, jnp.float32)

    add = lambda x, v: (x.astype(jnp.float32) + scale * v).astype(x.dtype)
    return jax.tree.map(add, subtree, _noise_tree(direction, subtree, prefix, layer))


class Perturbation(NamedTuple):
    r"""The point ``θ + scale · v`` at which a model evaluates a loss on the fly.

    A model's forward takes ``perturbation=Perturbation(v, s)`` (or the plain tuple ``(v, s)``:
    :func:`as_perturbation`) and adds the noise where each weight is used, one way for every
    entry: :meth:`apply` for a (layer) subtree, :meth:`factors` for the low-rank form of subspace
    noise on matrices that meet activations (``x (W + s v) = x W + ((x sA) Bᵀ)``).

    Attributes:
      direction: the :class:`Direction` ``v``.
      scale: the step ``s`` along it (e.g. ``±ε``).

    Example:
      >>> pert = Perturbation(Direction.single(key_data(0)), 1e-3)
      >>> layer_l = pert.apply(layer_params, ("layers",), layer=l)   # inside the layer scan
    """

    direction: Direction
    scale: Any

    @property
    def subspace(self) -> Subspace | None:
        """The direction's subspace (``None``: i.i.d. noise everywhere)."""
        return self.direction.subspace

    def apply(self, subtree: PyTree, prefix: KeyPath, layer: int | jax.Array | None = None) -> PyTree:
        """``subtree + s · v`` for the subtree at ``prefix`` (:func:`perturb_subtree`)."""
        return perturb_subtree(subtree, prefix, self.direction, self.scale, layer)

    def factors(self, leaves: Sequence[LeafSpec]) -> list[tuple[jax.Array, jax.Array] | None]:
        """``(s·A, B)`` with ``s·v = s·A Bᵀ`` per ``(path, shape, layer)`` matrix leaf under subspace
        noise (:func:`zojax.perturb.subspace_factors_many`), ``None`` where the noise is i.i.d."""
        scale = jnp.asarray(self.scale, jnp.float32)
        out = subspace_factors_many(self.direction, leaves)
        return [None if f is None else (scale * f[0], f[1]) for f in out]


def as_perturbation(perturbation: Perturbation | tuple[Direction, Any] | None) -> Perturbation | None:
    """``None``, or ``perturbation`` as a :class:`Perturbation` (a ``(direction, scale)`` tuple is accepted)."""
    if perturbation is None or isinstance(perturbation, Perturbation):
        return perturbation
    direction, scale = perturbation
    return Perturbation(direction, scale)


def scaled_direction_tree(direction: Direction, like: PyTree, factor: float | jax.Array) -> PyTree:
    """``factor · v`` as a pytree in each leaf's dtype (the ZO gradient estimate handed to optax)."""
    check_float_leaves(like)
    factor = jnp.asarray(factor, jnp.float32)
    return jax.tree.map(lambda x, v: (factor * v).astype(x.dtype), like, _noise_tree(direction, like))


@runtime_checkable
class PerturbableLoss(Protocol):
    """A loss that can be evaluated at ``θ + scale · v`` without a full perturbed copy of ``θ``.

    Plain callables ``loss(params) -> scalar`` are accepted everywhere; the estimators then build one
    perturbed copy per evaluation with :func:`perturb`. A model-backed loss implements
    ``perturbed`` by adding each layer's noise inside its layer scan (:func:`perturb_subtree`).
    """

    def __call__(self, params: PyTree) -> jax.Array: ...

    def perturbed(self, params: PyTree, direction: Direction, scale: jax.Array) -> jax.Array: ...


def evaluate(
    value_fn: Callable[[PyTree], jax.Array] | PerturbableLoss,
    params: PyTree,
    direction: Direction,
    scale: float | jax.Array,
) -> jax.Array:
    """``L(θ + scale · v)`` through the cheapest path ``value_fn`` offers; checks the loss is a scalar."""
    scale = jnp.asarray(scale, jnp.float32)
    if isinstance(value_fn, PerturbableLoss):
        loss = value_fn.perturbed(params, direction, scale)
    else:
        loss = value_fn(perturb(params, direction, scale))
    loss = jnp.asarray(loss)
    if loss.shape != ():
        raise ValueError(f"value_fn: the loss must be a scalar, got shape {loss.shape}")
    return loss.astype(jnp.float32)
