r"""Seed-regenerated perturbations over parameter pytrees.

A perturbation is never stored as an array. It is described by a :class:`Direction`, a handful of
PRNG keys and one weight per key, and every consumer (the perturbed forward, the update) regenerates
the noise it needs from that description, one leaf (or one layer of a leaf) at a time:

.. math::

   v(\text{leaf}) = \sum_{i=1}^{K} w_i \, z_i(\text{leaf}), \qquad
   z_i(\text{leaf}) \sim \mathcal{N}(0, I) \text{ drawn from } \mathrm{fold\_in}(k_i, \mathrm{id(leaf)}).

Definition of the noise (the contract every code path follows, so that a materialised copy, a
per-layer draw inside ``lax.scan`` and a sharded draw give bitwise the same values):

* keys are ``uint32[4]`` data of ``threefry4x32`` JAX keys, derived with a ``threefry`` ``fold_in``
  (:func:`fold_in`); the bulk noise of a leaf is a counter-based hash of (leaf key, element index)
  (:func:`counter_bits`): cheap, fused into whatever consumes it and partitioned like any
  elementwise op, so the values do not depend on the sharding or the device count;
* leaf key = ``fold_in(candidate_key, crc32(keystr(path)))``, so a leaf's noise depends on its path only
  and is stable when unrelated leaves are added, removed or reordered;
* leaves under a top-level ``"layers"`` entry carry a leading layer axis (models stack their layers and
  run them under ``lax.scan``); slice ``l`` of such a leaf is drawn from ``fold_in(leaf_key, l)`` with the
  slice's shape, so a model can regenerate one layer's noise inside its scan body;
* values are drawn in float32 and cast to the leaf dtype at the end; Gaussian noise is
  ``√2 · erfinv(u)`` of a uniform ``u`` from the word's top 23 bits (``jax.random.normal``'s
  transform), Rademacher noise unpacks 32 signs from each 32-bit word along the leaf's last axis
  (:func:`_packed_signs`).

Subspace perturbations (SubZero, Yu et al. ICCV 2025; :class:`Subspace`): when a direction carries a
``subspace``, each *matrix* leaf (per layer for stacked leaves) draws

.. math::

   z = \sqrt{\frac{mn}{r_U r_V}} \, U Z V^\top, \qquad U = \mathrm{qr}(G_U) \in \mathbb{R}^{m×r_U},\;
   V = \mathrm{qr}(G_V) \in \mathbb{R}^{n×r_V},\; Z \in \mathbb{R}^{r_U×r_V},

with ``G_U, G_V`` Gaussian drawn from ``fold_in(fold_in(subspace.key, id(leaf)) [, layer], 0 / 1)``
(the basis: shared by every candidate and every step until the transform refreshes the subspace key)
and ``Z`` drawn like an i.i.d. leaf of shape ``[r_U, r_V]`` from the candidate key. ``r_U = min(rank, m)``,
``r_V = min(rank, n)`` as SubZero's reduced QR; a side of dimension ``≤ rank`` uses ``I`` for its basis
(:func:`subspace_ranks`), so a matrix with both sides ``≤ rank`` gets i.i.d. noise.
A leaf is a matrix when its per-layer shape has at least two axes of size > 1: ``[m, n]`` (unit axes
dropped, as SubZero's ``squeeze``); a ``[m, n1, n2, …]`` leaf is matricised as ``[m, n1·n2·…]``. Every
other leaf (biases, norm scales) keeps the i.i.d. noise, as in SubZero. The ``√(mn/(r_U r_V))`` factor
is SubZero's: ``E‖z‖² = mn``, the same as an i.i.d. Gaussian leaf. The direction's weighted sum over
keys is taken on the ``r_U×r_V`` cores, ``v = c U (Σ_i w_i Z_i) Vᵀ``. ``U, V`` are regenerated
(QR) wherever the noise is needed: nothing but keys is stored; every consumer orthonormalises the
bases of all the matrices it needs at once (:func:`leaves_noise`, :func:`subspace_factors_many`).

Which leaves are perturbed (the non-float rule): **every leaf of a perturbed or updated pytree must
have a real floating-point dtype** (``float64``, ``float32``, ``bfloat16``, ``float16``, ...).
An integer, boolean or complex leaf raises a ``ValueError`` that names the leaf's path, at
``tx.init``, at the first ``update`` and in every path that adds noise (:func:`perturb`,
:func:`perturb_subtree` inside a model's layer scan, :func:`scaled_direction_tree` for the update);
nothing is rounded or skipped silently. Why raise rather than skip: ``jax.grad`` rejects
integer inputs the same way, and skipping could not keep such a leaf intact anyway, because the
optax transformations chained after an estimator are outside zojax's control
(``optax.apply_updates`` adds a float32 update to an ``int32`` leaf in float32, which changes
values above ``2**24`` even for a zero update, and ``optax.adamw``'s decay moves it). Complex leaves
are rejected because the noise is real (casting ``θ`` to float32 would drop the imaginary part).
Keep such state out of the trained pytree and close over it in the loss, as one would with
``jax.grad``: ``value_fn=lambda p: loss({**p, **frozen})``.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from zojax.specs import DISTRIBUTIONS
from zojax.specs import PERTURBATIONS as PERTURBATIONS  # re-exported (zojax.estimators checks it)

KEY_IMPL = "threefry4x32"
UNROLL_MAX = 4  # directions with more keys are drawn as one vmap and reduced (see Direction.leaf)
STACKED_ENTRY = "layers"
Distribution = Literal["gaussian", "rademacher"]

PyTree = Any
KeyPath = Sequence[Any]


def key_data(key: int | jax.Array) -> jax.Array:
    """Returns the raw ``uint32[4]`` data of a ``threefry4x32`` key built from ``key``.

    Args:
      key: an integer seed, a typed key of any implementation, or raw ``uint32[4]`` key data.

    Returns:
      ``uint32[4]``; a key of another implementation is mapped deterministically through its bits.

    Example:
      >>> key_data(0).shape
      (4,)
    """
    if isinstance(key, (int, np.integer)):
        return jax.random.key_data(jax.random.key(int(key), impl=KEY_IMPL))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) == KEY_IMPL:
            return jax.random.key_data(key)
        return jax.random.bits(key, (4,), jnp.uint32)
    if key.dtype == jnp.uint32 and key.shape == (4,):
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):  # legacy jax.random.PRNGKey
        return jax.random.bits(jax.random.wrap_key_data(key), (4,), jnp.uint32)
    raise ValueError(
        f"key: expected an int seed, a typed PRNG key or uint32[4] key data, got dtype {key.dtype} shape {key.shape}"
    )


def _leaf_dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else jnp.result_type(x)


def check_float_leaf(path: KeyPath, x: Any) -> None:
    """Raises the non-float rule's ``ValueError`` (see the module docstring) for one leaf."""
    dtype = _leaf_dtype(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"params: leaf {jax.tree_util.keystr(tuple(path))} has dtype {dtype}; zojax perturbs "
            f"and updates real floating-point leaves only (jax.grad likewise rejects integer "
            f"inputs). Keep integer, boolean and complex state out of the trained pytree and close "
            f"over it in the loss, e.g. value_fn=lambda p: loss({{**p, **frozen}})"
        )


def check_float_leaves(tree: PyTree, prefix: KeyPath = ()) -> None:
    """Applies :func:`check_float_leaf` to every leaf of ``tree`` (located at ``prefix``).

    Only dtypes are inspected, so this is free under ``jit`` (it runs at trace time).

    Example:
      >>> check_float_leaves({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: params: leaf ['step'] has dtype int32; ...
    """
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        check_float_leaf(tuple(prefix) + tuple(path), x)


def wrap(data: jax.Array) -> jax.Array:
    """Wraps ``uint32[..., 4]`` key data as typed ``threefry4x32`` keys."""
    return jax.random.wrap_key_data(data, impl=KEY_IMPL)


_HI_DOMAIN = np.array([0x9E3779B9, 0x7F4A7C15], np.uint32)


def fold_in(data: jax.Array, value: int | jax.Array) -> jax.Array:
    """Derives new ``uint32[4]`` key data from ``data`` and ``value``: a 128-bit ``fold_in``.

    Each 64-bit half is folded with ``threefry2x32`` (the high half domain-separated by a constant
    XOR). Not ``fold_in`` on a ``threefry4x32`` key: XLA's CPU compile time of that hash grows
    superlinearly with the number of derivations in a program (16 derivations: 13.5 s vs 0.7 s in
    jax 0.10.2; ``docs/jax_workarounds.md``). The bulk draws use :func:`counter_bits`.
    """
    data = jnp.asarray(data, jnp.uint32)
    value = jnp.asarray(value).astype(jnp.uint32)

    def half(bits: jax.Array) -> jax.Array:
        key = jax.random.wrap_key_data(bits, impl="threefry2x32")
        return jax.random.key_data(jax.random.fold_in(key, value))

    return jnp.concatenate([half(data[:2]), half(data[2:] ^ _HI_DOMAIN)])


def candidate_keys(step_key: jax.Array, num: int) -> jax.Array:
    """The ``num`` candidate keys of one step: ``uint32[num, 4]``, key ``i = fold_in(step_key, i)``.

    Unrolled on purpose: in jax 0.10.2 a ``vmap`` of a ``threefry4x32`` ``fold_in`` over a traced key
    compiles on CPU to a program that runs for seconds (or hangs), even for two keys
    (``docs/jax_workarounds.md``: not reproduced with the current :func:`fold_in`).
    """
    return jnp.stack([fold_in(step_key, i) for i in range(num)])


def path_id(path: KeyPath) -> int:
    """Stable 31-bit id of a pytree key path: ``crc32(jax.tree_util.keystr(path))``."""
    return zlib.crc32(jax.tree_util.keystr(tuple(path)).encode()) & 0x7FFFFFFF


def is_stacked(path: KeyPath) -> bool:
    """Whether a leaf carries a leading layer axis (it lives under a top-level ``"layers"`` entry)."""
    if not path:
        return False
    first = path[0]
    name = getattr(first, "key", getattr(first, "name", None))
    return name == STACKED_ENTRY


_MIX = ((17, 0xED5AD4BB), (11, 0xAC4C1B51), (15, 0x31848BAB), (14, None))


def _mix32(x: jax.Array) -> jax.Array:
    """Wellons' ``triple32``: a bijective 32-bit integer hash with avalanche bias 0.021."""
    for shift, mult in _MIX:
        x = x ^ (x >> jnp.uint32(shift))
        if mult is not None:
            x = x * jnp.uint32(mult)
    return x


def counter_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    r"""``uint32`` words ``h_k(i)`` for the row-major element indices ``i`` of ``shape``.

    .. math::

       h_k(i) = \mathrm{mix}(\mathrm{mix}(\mathrm{mix}(i \oplus k_0) \oplus k_1) \oplus k_2)

    with ``mix`` the ``triple32`` hash and ``k`` the ``uint32[4]`` key data (``k_3`` unused: the
    key already comes out of a ``threefry`` ``fold_in``). A counter-based generator: every element
    is a pure function of its index, so XLA fuses the draw into its consumer and partitions it
    like any elementwise op (values do not depend on the sharding). ~25 integer ops per word
    against ~250 for ``jax.random.bits`` with ``threefry4x32``: a MeZO step's draws and its
    compiled program shrink accordingly (``experiments/bench_draws.py``). Statistical checks:
    ``tests/test_perturb.py``.

    Args:
      key: ``uint32[4]`` key data.
      shape: the output shape; at most ``2**32`` elements.

    Returns:
      ``uint32[shape]``.

    Example:
      >>> words = counter_bits(key_data(0), (2, 3))
      >>> bool(words[1, 0] == counter_bits(key_data(0), (6,))[3])  # the row-major index counts
      True
    """
    size = int(np.prod(shape, dtype=np.int64))
    if size > 2**32:
        raise ValueError(f"counter_bits: {shape} has {size} elements, more than 2**32 counters")
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    x = _mix32(index ^ key[0])
    x = _mix32(x ^ key[1])
    return _mix32(x ^ key[2])


def _gaussian(words: jax.Array) -> jax.Array:
    """Standard normal float32 from uint32 words: ``√2 · erfinv(u)``, ``u`` uniform in (−1, 1) from
    the top 23 bits (the transform of ``jax.random.normal``)."""
    one_to_two = jax.lax.bitcast_convert_type((words >> jnp.uint32(9)) | jnp.uint32(0x3F800000), jnp.float32)
    u = jnp.maximum(one_to_two * 2.0 - 3.0, jnp.nextafter(jnp.float32(-1.0), jnp.float32(1.0)))
    return jnp.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def _draw(key: jax.Array, shape: tuple[int, ...], distribution: str) -> jax.Array:
    """Draws float32 noise from ``uint32[4]`` key data with :func:`counter_bits`."""
    # The barrier keeps XLA from fusing the scalar key derivation (fold_in hashes) into the bulk
    # draw, where it would be recomputed per element and slow compiling; values are unchanged
    # (docs/jax_workarounds.md).
    key = jax.lax.optimization_barrier(key)
    if distribution == "gaussian":
        return _gaussian(counter_bits(key, shape))
    if distribution == "rademacher":
        return _packed_signs(key, shape)
    raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")


def _packed_signs(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Rademacher ``±1`` as float32, 32 signs unpacked from each random 32-bit word.

    Element ``[..., j]`` is bit ``j mod 32`` of word ``[..., j // 32]`` of
    ``counter_bits(key, shape[:-1] + (⌈n/32⌉,))`` (``n = shape[-1]``): one 32-bit word per 32
    elements instead of one per element.
    """
    if not shape:
        return _packed_signs(key, (1,))[0]
    n = shape[-1]
    words = counter_bits(key, (*shape[:-1], -(-n // 32)))
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    bits = bits.reshape((*shape[:-1], -1))[..., :n]
    return 1.0 - 2.0 * bits.astype(jnp.float32)


def leaf_noise(
    key: jax.Array,
    path: KeyPath,
    shape: Sequence[int],
    distribution: str = "gaussian",
    layer: int | jax.Array | None = None,
) -> jax.Array:
    """One candidate's float32 noise ``z`` for one leaf (or one layer slice of a stacked leaf).

    Args:
      key: ``uint32[4]`` candidate key data.
      path: the leaf's key path in the perturbed pytree.
      shape: the leaf's full shape (with the layer axis for stacked leaves), or the shape of one
        layer's slice when ``layer`` is given.
      distribution: ``"gaussian"`` or ``"rademacher"``.
      layer: for a stacked leaf, draw only this layer's slice.

    Returns:
      float32 noise of shape ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    leaf_key = fold_in(key, path_id(path))
    if not is_stacked(path):
        if layer is not None:
            raise ValueError(f"layer= given for a leaf that is not stacked: {jax.tree_util.keystr(tuple(path))}")
        return _draw(leaf_key, shape, distribution)
    if layer is not None:
        return _draw(fold_in(leaf_key, layer), shape, distribution)
    layers = jnp.arange(shape[0], dtype=jnp.uint32)
    return jax.vmap(lambda i: _draw(fold_in(leaf_key, i), shape[1:], distribution))(layers)


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
