r"""SubZero's low-rank subspace noise (Yu et al., ICCV 2025): ``z = c U Z Vᵀ`` for every matrix leaf.

The bases ``U, V`` are regenerated from the :class:`Subspace` key wherever they are needed (nothing but
keys is stored) and orthonormalised by one batched Cholesky-QR per consumer; the cores ``Z`` are
drawn like i.i.d. leaves from the candidate keys (:func:`zojax.perturb.noise.leaf_noise`). The math
and the choices against SubZero's code: :mod:`zojax.perturb`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.perturb.noise import KeyPath, _draw, fold_in, is_stacked, leaf_noise, path_id

if TYPE_CHECKING:
    from zojax.perturb.direction import Direction

_SUBSPACE_DOMAIN = np.array([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], np.uint32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Subspace:
    """The current low-rank subspace of a SubZero-style direction (see the module docstring).

    Attributes:
      key: ``uint32[4]`` basis key; every matrix leaf's ``U, V`` are regenerated from it.
      rank: the subspace rank ``r`` (static; clipped per side of a matrix to ``min(r, m)``,
        ``min(r, n)``: :func:`subspace_ranks`).
    """

    key: jax.Array
    rank: int = dataclasses.field(metadata={"static": True})


def subspace_key(base_key: jax.Array, count: int | jax.Array, refresh_every: int) -> jax.Array:
    """The basis key of step ``count``: ``fold_in(base_key ⊕ C, count // refresh_every)``.

    ``C`` is a domain constant, so the basis keys are independent of the step keys
    ``fold_in(base_key, t)``. A pure function of the step count: a run resumed at any step, across
    a refresh or not, draws the same subspaces as the uninterrupted run.
    """
    base_key = jnp.asarray(base_key, jnp.uint32)
    period = jnp.asarray(count).astype(jnp.uint32) // jnp.uint32(refresh_every)
    return fold_in(base_key ^ jnp.asarray(_SUBSPACE_DOMAIN), period)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """The ``(m, n)`` a per-layer leaf shape is viewed as under subspace noise, or ``None`` (i.i.d.).

    Unit axes are dropped; two or more remaining axes make a matrix ``[first, product of the rest]``.
    """
    dims = [int(d) for d in shape if int(d) != 1]
    if len(dims) < 2:
        return None
    return dims[0], int(np.prod(dims[1:], dtype=np.int64))


def subspace_ranks(rank: int, m: int, n: int) -> tuple[int, int]:
    r"""SubZero's basis ranks ``(r_U, r_V) = (min(rank, m), min(rank, n))`` of an ``m×n`` matrix.

    SubZero takes ``U = qr(G_U)`` of a Gaussian ``G_U ∈ R^{m×rank}``: the reduced QR's ``Q`` is
    ``m × min(rank, m)``, and likewise for ``V``; the core ``Z`` is ``r_U × r_V`` and the scale
    ``√(mn / (r_U r_V))``. A side of dimension ``≤ rank`` (a LoRA factor's rank axis, a short prefix)
    spans its whole space, and zojax takes ``I`` for it instead of a square orthogonal ``Q``: the
    same covariance ``c² (V Vᵀ) ⊗ (U Uᵀ)`` (and, for Gaussian cores, the same distribution: ``Q Z``
    is distributed as ``Z``), with no QR to compute. A matrix with both sides ``≤ rank`` gets plain
    i.i.d. noise (``c = 1``, ``z = Z``).
    """
    return min(int(rank), m), min(int(rank), n)


@dataclasses.dataclass(frozen=True)
class _MatrixSpec:
    """A matrix leaf (or one layer of a stacked one) under subspace noise, viewed as ``[m, n]``."""

    path: tuple[Any, ...]
    shape: tuple[int, ...]  # the per-layer shape
    m: int
    n: int
    layer: int | jax.Array | None  # the given layer of a stacked leaf
    num_layers: int | None  # a whole stacked leaf: every layer, vmapped


LeafSpec = tuple[KeyPath, Sequence[int], "int | jax.Array | None"]  # (path, shape, layer)


def _matrix_spec(path: KeyPath, shape: Sequence[int], layer: int | jax.Array | None) -> _MatrixSpec | None:
    """The matrix view of a leaf (``layer`` as in :meth:`Direction.leaf`), or ``None`` (i.i.d. noise)."""
    shape = tuple(int(s) for s in shape)
    whole = is_stacked(path) and layer is None
    per_layer = shape[1:] if whole else shape
    mn = matrix_shape(per_layer)
    if mn is None:
        return None
    return _MatrixSpec(tuple(path), per_layer, *mn, layer, shape[0] if whole else None)


def _over_layers(spec: _MatrixSpec, fn: Callable[[Any], Any]) -> Any:
    """``fn(layer)`` for one matrix; for a whole stacked leaf, ``vmap``-ped over its layers."""
    if spec.num_layers is None:
        return fn(spec.layer)
    return jax.vmap(fn)(jnp.arange(spec.num_layers, dtype=jnp.uint32))


def _basis_draws(subspace: Subspace, spec: _MatrixSpec) -> tuple[jax.Array | None, jax.Array | None]:
    """Gaussian ``G_U [m, rank]``, ``G_V [n, rank]`` from ``fold_in(fold_in(fold_in(key, id) [, layer], 0 | 1)``,
    ``None`` for a side of dimension ``≤ rank`` (its basis is ``I``: :func:`subspace_ranks`)."""
    r = int(subspace.rank)

    def draw(layer: Any) -> tuple[jax.Array | None, jax.Array | None]:
        key = fold_in(subspace.key, path_id(spec.path))
        if layer is not None:
            key = fold_in(key, layer)
        g_u = _draw(fold_in(key, 0), (spec.m, r), "gaussian") if spec.m > r else None
        g_v = _draw(fold_in(key, 1), (spec.n, r), "gaussian") if spec.n > r else None
        return g_u, g_v

    return _over_layers(spec, draw)


def _bases(subspace: Subspace, specs: Sequence[_MatrixSpec]) -> list[tuple[jax.Array | None, jax.Array | None]]:
    """``(U, V)`` of every matrix in ``specs`` (``None`` for an identity side), orthonormalised together."""
    draws = [_basis_draws(subspace, spec) for spec in specs]
    q = iter(_orthonormal_many([g for pair in draws for g in pair if g is not None]))
    return [(None if g_u is None else next(q), None if g_v is None else next(q)) for g_u, g_v in draws]


def subspace_basis(
    subspace: Subspace, path: KeyPath, m: int, n: int, layer: int | jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """float32 ``U [m, r_U]`` and ``V [n, r_V]`` with orthonormal columns for one matrix leaf (or layer).

    ``(r_U, r_V) = (min(rank, m), min(rank, n))`` (:func:`subspace_ranks`); ``U = qr(G_U)``,
    ``V = qr(G_V)`` with ``G_U, G_V`` standard Gaussian from ``fold_in(fold_in(fold_in(subspace.key,
    id(leaf)) [, layer], 0 | 1)`` (the reduced QR's ``Q``, as SubZero's ``torch.linalg.qr`` of
    Gaussian matrices, computed by Cholesky-QR: see :func:`_orthonormal_many`); ``I`` for a side of
    dimension ``≤ rank``.
    """
    spec = _MatrixSpec(tuple(path), (m, n), m, n, layer, None)
    u, v = _bases(subspace, [spec])[0]
    eye = lambda k: jnp.eye(k, dtype=jnp.float32)
    return (eye(m) if u is None else u), (eye(n) if v is None else v)


def _orthonormal_many(gs: Sequence[jax.Array]) -> list[jax.Array]:
    """The ``Q`` of ``g = QR`` (``diag(R) > 0``) of each ``g [..., m_i, r]``, by Cholesky-QR:
    ``Q = g L⁻ᵀ``, ``LLᵀ = gᵀg``, with one batched :func:`_cholesky_inverse` for all of them.

    The same ``Q`` as a Householder QR normalised to a positive ``diag(R)``; a Gaussian ``[m, r]``
    with ``m > r`` is well conditioned, so one pass is accurate to float32 (``‖QᵀQ − I‖ ≈ 1e-6``),
    and it is matmul-bound: ~6x faster than ``jnp.linalg.qr`` on CPU for ``[1536, 32]``
    (``experiments/bench_subspace.py``). ``L⁻¹`` comes from plain JAX ops rather than LAPACK's
    ``potrf`` / ``trsm`` custom calls: with those inside the model's layer ``scan`` a jitted
    SmolLM2-shaped step hung on XLA:CPU (jax 0.10.2; ``docs/jax_workarounds.md``). Its loops are
    emitted once per call whatever the number of matrices: the ``r×r`` Gram matrices of all the
    ``g`` (every leaf of a layer, every layer of a stacked leaf) are stacked and inverted by one
    ``vmap``. Called per matrix instead, the LoRA tiny-model SubZero-GV step held 36 copies of the
    two loops (84 ``while`` s) and took twice the i.i.d. step's compile time.
    """
    if not gs:
        return []
    hi = jax.lax.Precision.HIGHEST
    r = int(gs[0].shape[-1])
    grams = [jnp.einsum("...ki,...kj->...ij", g, g, precision=hi).reshape(-1, r, r) for g in gs]
    inverse = jax.vmap(_cholesky_inverse)(jnp.concatenate(grams))
    out, start = [], 0
    for g, gram in zip(gs, grams, strict=True):
        inv = inverse[start : start + gram.shape[0]].reshape((*g.shape[:-2], r, r))
        start += gram.shape[0]
        out.append(jnp.einsum("...kj,...ij->...ki", g, inv, precision=hi))
    return out


def _cholesky_inverse(a: jax.Array) -> jax.Array:
    r"""``L⁻¹`` for the Cholesky factor ``L`` of a symmetric positive definite ``r×r`` matrix ``a``.

    Column ``j`` of ``L``: ``L_jj = √(a_jj − Σ_{k<j} L_jk²)``, ``L_ij = (a_ij − Σ_{k<j} L_ik L_jk) / L_jj``
    for ``i > j``; then row ``i`` of ``L⁻¹`` by forward substitution, ``(e_i − Σ_{k<i} L_ik
    (L⁻¹)_k) / L_ii``. Two ``fori_loop`` s of ``r`` steps on ``r×r`` arrays (multiply + sum, exact
    float32 on every backend, where a ``dot`` may run at reduced precision).
    """
    r = a.shape[0]
    rows = jnp.arange(r)

    def column(j: jax.Array, low: jax.Array) -> jax.Array:
        lj = low[j]
        d = jnp.sqrt(a[j, j] - jnp.sum(lj * lj))
        col = jnp.where(rows > j, (a[:, j] - jnp.sum(low * lj, axis=1)) / d, 0.0)
        return low.at[:, j].set(jnp.where(rows == j, d, col))

    low = jax.lax.fori_loop(0, r, column, jnp.zeros_like(a))

    def row(i: jax.Array, inv: jax.Array) -> jax.Array:
        return inv.at[i].set((jnp.where(rows == i, 1.0, 0.0) - jnp.sum(low[i][:, None] * inv, axis=0)) / low[i, i])

    return jax.lax.fori_loop(0, r, row, jnp.zeros_like(a))


def _product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` (over any leading batch axes) as a broadcast multiply and a sum over the short
    contracted axis (``r``).

    Not a ``dot``: a dot's kernel (blocking, FMA use) depends on the local shapes, so a product
    partitioned over devices could round differently from the one-device product. A multiply and a
    reduce along an unpartitioned axis of ``r`` terms round the same way whatever the sharding of
    the other axes, which keeps the noise bitwise independent of the mesh; XLA fuses the multiply
    into the reduce (and the reduce into its consumer), so no ``[m, r, n]`` temporary exists.
    """
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


_Parts = tuple["jax.Array | None", jax.Array, "jax.Array | None", jax.Array]


def _subspace_parts(direction: Direction, specs: Sequence[_MatrixSpec]) -> list[_Parts]:
    """``(U, core Σ_i w_i Z_i [r_U, r_V], V, √(mn / (r_U r_V)))`` of each matrix (``None`` for an
    identity side); the bases of all of them come from one :func:`_orthonormal_many`."""
    subspace = direction.subspace
    assert subspace is not None
    out = []
    for spec, (u, v) in zip(specs, _bases(subspace, specs), strict=True):
        r_u, r_v = subspace_ranks(subspace.rank, spec.m, spec.n)

        def core(layer: Any, spec: _MatrixSpec = spec, shape: tuple[int, int] = (r_u, r_v)) -> jax.Array:
            cores = jax.vmap(lambda k: leaf_noise(k, spec.path, shape, direction.distribution, layer))(direction.keys)
            return jnp.sum(direction.weights[:, None, None] * cores, axis=0)

        scale = jnp.float32(np.sqrt(spec.m * spec.n / (r_u * r_v)))
        out.append((u, _over_layers(spec, core), v, scale))
    return out


def _noise_matrix(parts: _Parts, spec: _MatrixSpec) -> jax.Array:
    """``(√(mn / (r_U r_V))) U core Vᵀ`` in the leaf's per-layer shape (with the layer axis, if any)."""
    u, core, v, c = parts
    x = core if v is None else _product(core, jnp.swapaxes(v, -1, -2))
    x = x if u is None else _product(u, x)
    return (c * x).reshape(x.shape[:-2] + spec.shape)


def subspace_noise(direction: Direction, leaves: Sequence[LeafSpec]) -> list[jax.Array | None]:
    """float32 subspace noise ``v`` of each ``(path, shape, layer)`` (as :meth:`Direction.leaf`),
    ``None`` for a leaf that is not a matrix (it keeps i.i.d. noise) or without a subspace.

    All the matrices' bases are orthonormalised together (one batched Cholesky: see
    :func:`_orthonormal_many`), so pass every leaf a consumer needs in one call.
    """
    if direction.subspace is None:
        return [None] * len(leaves)
    specs = [_matrix_spec(*leaf) for leaf in leaves]
    found = [s for s in specs if s is not None]
    noise = iter(_noise_matrix(p, s) for p, s in zip(_subspace_parts(direction, found), found, strict=True))
    return [None if s is None else next(noise) for s in specs]


def subspace_factors_many(direction: Direction, leaves: Sequence[LeafSpec]) -> list[tuple[jax.Array, jax.Array] | None]:
    r"""Several matrix leaves' subspace noise as float32 factors ``(A, B)``: ``v = A Bᵀ``, never ``m×n``.

    .. math::

       v = A B^\top, \qquad A = \sqrt{\tfrac{mn}{r_U r_V}}\; U \Big(\sum_i w_i Z_i\Big) \in \mathbb{R}^{m×r_V},
       \quad B = V \in \mathbb{R}^{n×r_V},

    the same ``U, Z_i, V`` as :meth:`Direction.leaf` (equal to it to float rounding: only the
    association of the products differs; ``U = I`` or ``V = I`` for a side of dimension ``≤ rank``).
    A model uses them where the leaf meets activations: ``x (W + s v) = x W + s ((x A) Bᵀ)``, and a
    row gather ``(W + s v)[ids] = W[ids] + s A[ids] Bᵀ``. The bases of all the leaves are
    orthonormalised together (one batched Cholesky).

    Args:
      direction: a direction (with a :attr:`Direction.subspace` for any factors).
      leaves: ``(path, shape, layer)`` per leaf: the key path in the perturbed pytree, the per-layer
        shape (without the layer axis when ``layer`` is given) and the layer index of a stacked leaf.

    Returns:
      ``(A [m, r_V], B [n, r_V])`` per leaf for the matricised ``[m, n] = matrix_shape(shape)``, or
      ``None`` when the direction has no subspace or the leaf is not a matrix (i.i.d. noise).
    """
    if direction.subspace is None:
        return [None] * len(leaves)
    specs = [_matrix_spec(*leaf) for leaf in leaves]
    found = [s for s in specs if s is not None]
    factors = []
    for u, core, v, c in _subspace_parts(direction, found):
        a = core if u is None else _product(u, core)
        b = jnp.eye(core.shape[-1], dtype=jnp.float32) if v is None else v
        factors.append((c * a, b))
    it = iter(factors)
    return [None if s is None else next(it) for s in specs]


def subspace_factors(
    direction: Direction,
    path: KeyPath,
    shape: Sequence[int],
    layer: int | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array] | None:
    """One leaf's :func:`subspace_factors_many`: ``(A, B)`` with ``v = A Bᵀ``, or ``None``."""
    return subspace_factors_many(direction, [(path, shape, layer)])[0]
