r"""Sharded loading of a Hugging Face checkpoint: a process reads only the slices its devices hold.

Each leaf ``x`` of the parameter pytree, with target sharding ``s`` (a ``NamedSharding``, e.g.
:meth:`zojax.train.placement.Placement.param_shardings`), is built with
``jax.make_array_from_callback(x.shape, s, cb)``, and ``cb(index)`` computes ``x[index]`` from the
memory-mapped safetensors tensors, reading only that slice::

    kernel[i, o]            = W_hf[o, i]         ->  W_hf[index_o, index_i].T     (Linear, HF (out, in))
    layers.*[l][index']     = tensor_l[index']   for l in range(L)[index_0]       (stacked layers)
    embed.embedding[index]  = E_hf[:V][index]                                     (vocabulary cut to V)

cast to the run's dtype slice by slice. JAX asks only for the addressable shards (this process's
devices), so no process ever holds the full model: over ``P`` processes on an ``fsdp`` axis that
spans them, each reads and holds ``1/P`` of the sharded parameters (replicated leaves, the norms,
whole). Equal shards that several local devices share (a ``data`` axis) are read once.

The result is bitwise the plain load (:func:`zojax.models.hf.params_from_hf_tensors`) placed
with the same shardings: slicing commutes with the transpose, the vocabulary cut and the elementwise
cast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from zojax.models.config import ModelConfig
from zojax.models.forward import resolve_dtype
from zojax.models.hf import (
    PARAM_ORDER,
    expected_shape,
    hf_layer_prefix,
    hf_layout,
    hf_tensor,
    normalise_names,
)

PyTree = Any
Index = tuple[slice, ...]
ReadLog = Callable[[str, Index, int], None]


def param_shapes(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    r"""The parameter pytree's ``jax.ShapeDtypeStruct``\ s (what :func:`zojax.models.hf.
    params_from_hf_tensors` would return, without reading anything).

    Args:
      config: the architecture.
      dtype: ``"float32"`` or ``"bfloat16"``.

    Returns:
      ``{"embed": {"embedding": ShapeDtypeStruct((V, H))}, "layers": {...: (L, ...)}, ...}``.
    """
    dt = resolve_dtype(dtype)
    top, layer = hf_layout(config)
    tree: dict[str, Any] = {}
    for path in top.values():
        tree.setdefault(path[0], {})[path[1]] = jax.ShapeDtypeStruct(expected_shape(config, path), dt)
    layers: dict[str, Any] = {}
    for path in layer.values():
        shape = (config.num_layers, *expected_shape(config, path))
        layers.setdefault(path[0], {})[path[1]] = jax.ShapeDtypeStruct(shape, dt)
    tree["layers"] = layers
    return {k: tree[k] for k in PARAM_ORDER if k in tree}


Source = Callable[[], np.ndarray]


def _sources(config: ModelConfig, getters: dict[str, Callable[[], np.ndarray]]) -> dict[tuple[str, ...], list[Source]]:
    """Every leaf's tensors as thunks of views in our orientation (one per layer for the stacked
    leaves), names and shapes checked first, before any data is read. A view is opened only while
    its slice is read, so a memory map's touched pages leave the resident set with it."""
    names = normalise_names(getters, config)
    top, layer = hf_layout(config)
    prefix = hf_layer_prefix(config)
    wanted = {path: [hf] for hf, path in top.items()}
    for suffix, path in layer.items():
        wanted[("layers", *path)] = [f"{prefix}.{i}.{suffix}" for i in range(config.num_layers)]
    out = {}
    for leaf, hf_names in wanted.items():
        path = leaf[-2:]
        for hf in hf_names:
            hf_tensor(config, getters, names, hf, path)  # raises for a missing or misshapen tensor
        out[leaf] = [functools.partial(hf_tensor, config, getters, names, hf, path) for hf in hf_names]
    return out


def _normalise(index: Index, shape: tuple[int, ...]) -> Index:
    """``index`` with explicit ``start, stop, step`` (``slice(None)`` would overrun a view that is
    longer than the leaf, and equal shards must compare equal)."""
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))


def read_slice(sources: Sequence[Source], stacked: bool, index: Index, dtype: Any) -> np.ndarray:
    r"""``x[index]`` in ``dtype`` from a leaf's tensors, reading only that slice.

    Args:
      sources: ``[t]`` for a top-level leaf, ``[t_0, …, t_{L−1}]`` for a stacked one ``x =
        stack(t_l)``: thunks returning the tensors in our orientation (views of memory maps).
      stacked: whether ``x`` is stacked.
      index: normalised slices (explicit start, stop, step), one per dimension of ``x``.
      dtype: the target dtype (the cast is elementwise, as in the plain load).

    Returns:
      a fresh array of ``x[index]``'s shape.
    """
    if not stacked:
        return sources[0]()[index].astype(dtype, order="C")
    shape = [len(range(s.start, s.stop, s.step)) for s in index]
    out = np.empty(shape, dtype)
    for j, layer in enumerate(range(len(sources))[index[0]]):
        out[j] = sources[layer]()[index[1:]]
    return out


def load_sharded(
    config: ModelConfig,
    getters: dict[str, Callable[[], np.ndarray]],
    shardings: PyTree,
    dtype: str = "float32",
    *,
    on_read: ReadLog | None = None,
) -> dict[str, Any]:
    r"""The parameters as global ``jax.Array``\ s with ``shardings``, each process reading only the
    slices its devices hold.

    Args:
      config: the architecture.
      getters: HF-named tensor getters returning memory maps (:func:`zojax.models.safetensors.
        open_safetensors`); a getter that materialises its tensor still works, without the saving.
      shardings: a pytree of ``jax.sharding.Sharding`` shaped like :func:`param_shapes`.
      dtype: ``"float32"`` or ``"bfloat16"``.
      on_read: called as ``on_read(leaf_path, index, nbytes)`` after each slice is read (tests,
        accounting).

    Returns:
      the parameter pytree, bitwise equal to the plain load placed with ``shardings``.

    Raises:
      KeyError: a required tensor is missing (named); nothing has been read then.
      ValueError: a tensor has the wrong shape (named, with both shapes); nothing has been read.
    """
    dt = resolve_dtype(dtype)
    sources = _sources(config, getters)
    shapes = param_shapes(config, dtype)

    def leaf(path: tuple[str, ...], shape: jax.ShapeDtypeStruct, sharding: Any) -> jax.Array:
        leaf_sources = sources[path]
        stacked = path[0] == "layers"
        read: dict[tuple[tuple[int, int, int], ...], np.ndarray] = {}

        def callback(index: Index) -> np.ndarray:
            norm = _normalise(index, shape.shape)
            key = tuple((s.start, s.stop, s.step) for s in norm)  # slices are unhashable before 3.12
            if key not in read:
                read[key] = read_slice(leaf_sources, stacked, norm, dt)
                if on_read is not None:
                    on_read(".".join(path), norm, read[key].nbytes)
            return read[key]

        return jax.make_array_from_callback(shape.shape, sharding, callback)

    def at(path: Any, shape: jax.ShapeDtypeStruct, sharding: Any) -> jax.Array:
        return leaf(tuple(str(p.key) for p in path), shape, sharding)

    return jax.tree_util.tree_map_with_path(at, shapes, shardings)


def local_bytes(shapes: PyTree, shardings: PyTree) -> tuple[int, int]:
    """``(total, largest leaf)`` bytes of this process's device shards of ``shapes``: what it holds
    on CPU devices, and the most host memory one leaf's slices take in transit on accelerators."""
    sizes = []
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True):
        per_device = int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
        sizes.append(per_device * len(s.addressable_devices))
    return sum(sizes), max(sizes, default=0)


__all__ = ["load_sharded", "local_bytes", "param_shapes", "read_slice"]
