r"""Where a run's arrays live: the ``--mesh`` of ``zojax finetune``.

A mesh has two axes, ``data`` (the batch's rows) and ``fsdp`` (the parameters' hidden dimension,
:data:`zojax.models.sharding.DEFAULT_RULES`). :func:`parse_mesh` reads the flag:

==========================  =====================================================================
``--mesh``                  mesh
==========================  =====================================================================
``auto`` (default)          every device on the ``fsdp`` axis (and, over several processes, one
                            ``data`` row per process); no mesh at all on a single device
``none``                    no mesh: one device, arrays unsharded
``data=D,fsdp=F``           ``D × F`` devices (either may be omitted: the other takes the rest)
==========================  =====================================================================

:class:`Placement` puts the trainable and frozen parameters on the mesh with their
``NamedSharding``\ s and each batch's rows over ``data``: training batches, and evaluation's and
generation's too (it is a :class:`zojax.models.rows.Rows`: they pad their rows to a multiple of
:attr:`Placement.data_size` and :meth:`Placement.fetch` their per-row results). The jitted step,
evaluation and generation then run partitioned by XLA (GSPMD) and keep the parameters' shardings. The perturbations need
nothing more: each element's noise is a counter-based hash of its index (:mod:`zojax.perturb`), so a
shard draws its own noise where it lives and no noise crosses devices. A leaf whose sharded
dimension does not divide by the axis size is replicated instead (said by :meth:`Placement.describe`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zojax.train.resolve import mesh_axis_sizes

PyTree = Any
MESH_AXES = ("data", "fsdp")


def parse_mesh(spec: str, devices: list[Any] | None = None) -> Mesh | None:
    """The mesh ``--mesh spec`` asks for over ``devices`` (default ``jax.devices()``), or ``None``.

    Args:
      spec: ``"auto"``, ``"none"`` or ``"data=D,fsdp=F"`` (one of the two may be left out).
      devices: the devices to use, all processes' (default: ``jax.devices()``).

    Returns:
      A ``("data", "fsdp")`` ``Mesh``, or ``None`` for one unsharded device.

    Raises:
      ValueError: naming ``--mesh`` when the spec cannot be read or does not use every device.

    Example:
      >>> parse_mesh("none") is None
      True
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    text = spec.strip().lower()
    if text == "none":
        return None
    if text == "auto":
        if n == 1:
            return None
        processes = len({getattr(d, "process_index", 0) for d in devices})
        sizes = {"data": processes, "fsdp": n // processes}
    else:
        sizes = mesh_axis_sizes(spec) or {}
        if "data" not in sizes:
            sizes["data"] = n // sizes["fsdp"] if n % sizes["fsdp"] == 0 else 0
        if "fsdp" not in sizes:
            sizes["fsdp"] = n // sizes["data"] if n % sizes["data"] == 0 else 0
    if sizes["data"] * sizes["fsdp"] != n:
        raise ValueError(
            f"--mesh: data {sizes['data']} × fsdp {sizes['fsdp']} must use all {n} devices "
            f"(jax.devices(); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
        )
    return Mesh(np.array(devices, dtype=object).reshape(sizes["data"], sizes["fsdp"]), MESH_AXES)


def mesh_name(mesh: Mesh | None) -> str:
    """``"data=D,fsdp=F"`` or ``"none"``."""
    if mesh is None:
        return "none"
    return ",".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Puts a run's parameters and batches on a mesh (or leaves them alone without one).

    Attributes:
      mesh: the mesh, or ``None`` (one device: every method is the identity).
    """

    mesh: Mesh | None = None

    def param_shardings(self, tree: PyTree) -> PyTree:
        r"""``NamedSharding``\ s for a parameter pytree: FSDP by the logical axes, a leaf whose
        sharded dimensions do not divide evenly replicated."""
        from zojax.models.sharding import shardings

        assert self.mesh is not None
        mesh = self.mesh

        def fit(x: Any, s: NamedSharding) -> NamedSharding:
            for dim, axes in zip(np.shape(x), s.spec, strict=False):
                names = (axes,) if isinstance(axes, str) else tuple(axes or ())
                size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
                if dim % size:
                    return NamedSharding(mesh, PartitionSpec())
            return s

        return jax.tree.map(fit, tree, shardings(tree, mesh))

    def params(self, tree: PyTree) -> PyTree:
        """``tree`` on the mesh with :meth:`param_shardings` (``None`` and no mesh: unchanged)."""
        if self.mesh is None or tree is None:
            return tree
        return _put(tree, self.param_shardings(tree))

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch with its rows (leading axis) split over ``data`` (no mesh: unchanged); on several
        processes each places only its devices' rows.

        Raises:
          ValueError: when the batch's rows do not divide by the ``data`` axis.
        """
        if self.mesh is None:
            return batch
        data = self.mesh.shape["data"]
        rows = NamedSharding(self.mesh, PartitionSpec("data"))
        out = {}
        for k, v in batch.items():
            if np.ndim(v) and np.shape(v)[0] % data:
                raise ValueError(
                    f"--batch-size: {np.shape(v)[0]} rows do not split over the mesh's data axis "
                    f"of {data} devices; use a multiple of {data}"
                )
            out[k] = _put(v, rows if np.ndim(v) else NamedSharding(self.mesh, PartitionSpec()))
        return out

    @property
    def data_size(self) -> int:
        """The ``data`` axis's size (1 without a mesh): batches' rows come in multiples of it."""
        return 1 if self.mesh is None else int(self.mesh.shape["data"])

    def fetch(self, x: Any) -> np.ndarray:
        """A result of a placed batch (e.g. per-row scores split over ``data``) as one host array,
        whole on every process (``process_allgather`` where other processes hold some rows)."""
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def init(self, init_fn: Any, params: PyTree) -> PyTree:
        """``init_fn(params)`` (an optimizer's ``init``), on the mesh like the parameters."""
        if self.mesh is None:
            return init_fn(params)
        state = jax.jit(init_fn)(params)
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def on_mesh(x: Any) -> Any:  # constants (keys, counters) come back on one device
            sharding = getattr(x, "sharding", None)
            if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
                return x
            return _put(np.asarray(x), replicated)

        return jax.tree.map(on_mesh, state)

    def describe(self, params: PyTree) -> str:
        """One line: the mesh and how many parameters are sharded vs replicated."""
        if self.mesh is None:
            return "mesh: none (one device)"
        sharded = replicated = 0
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(self.param_shardings(params)), strict=True):
            if any(a is not None for a in s.spec):
                sharded += x.size
            else:
                replicated += x.size
        devices = self.mesh.devices.size
        return (
            f"mesh: {mesh_name(self.mesh)} over {devices} {self.mesh.devices.flat[0].platform} devices; "
            f"{sharded:,} parameters sharded over fsdp, {replicated:,} replicated"
        )


def _put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Global arrays from values every process holds: ``device_put`` on one process; on several,
    each process places only the slices its devices own (``jax.make_array_from_callback``). Arrays
    already global (sharded loading, computed from global arrays) are kept or resharded, never
    gathered to a host."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sharding else jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)
