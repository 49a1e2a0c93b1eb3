r"""The noise contract: ``uint32[4]`` keys, their derivation, and the counter-based draws of one leaf.

Every perturbation zojax draws, i.i.d. or subspace, comes from :func:`leaf_noise` (or the
:func:`_draw` under it): a pure function of (candidate key, leaf path, layer, element index), so a
materialised copy, a per-layer draw inside ``lax.scan`` and a sharded draw give bitwise the same
values (the full contract: :mod:`zojax.perturb`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from zojax.specs import DISTRIBUTIONS

KEY_IMPL = "threefry4x32"
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
