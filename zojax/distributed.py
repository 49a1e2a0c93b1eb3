r"""Multi-process (multi-host) set-up for sharded zeroth-order steps: TPU pods, multi-node GPU, CPU.

A zeroth-order step needs nothing beyond what a sharded forward pass needs: the perturbation of a
leaf is a function of (key, leaf path, layer) only (:mod:`zojax.perturb`), so every process draws
exactly the noise of the shards it holds and no noise ever crosses the network. The only collectives
are the forward's (FSDP all-gathers of the weights, the loss's reduction over the data axis).

Helpers:

* :func:`initialize`: ``jax.distributed.initialize`` from arguments, environment variables or the
  cluster's auto-detection (Cloud TPU, SLURM, Open MPI), with CPU collectives (gloo) set up first.
* :func:`global_mesh`: a ``("data", "fsdp")`` mesh over all processes' devices.
* :func:`put_global` / :func:`put_batch`: global arrays from values every process holds;
  :func:`put_process_batch`: a global batch from each process's own rows.
* :func:`gather`: global arrays back to host numpy on every process.

The multi-host smoke test (a few sharded ZO steps of a random-weight model on every process) is
``experiments/multihost_smoke.py``; ``tests/test_multihost.py`` runs it on two processes.

Environment variables read by :func:`initialize` (arguments take precedence)::

    JAX_COORDINATOR_ADDRESS   host:port of process 0 (also read by JAX itself)
    JAX_NUM_PROCESSES         number of processes
    JAX_PROCESS_ID            this process's index in [0, JAX_NUM_PROCESSES)
    ZOJAX_DISTRIBUTED=auto    call jax.distributed.initialize() with JAX's cluster auto-detection
                              (Cloud TPU pod slices, SLURM, Open MPI), no other variable needed

Example (two processes on one machine, CPU)::

    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        python experiments/multihost_smoke.py --num-cpu-devices 2 &
    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \
        python experiments/multihost_smoke.py --num-cpu-devices 2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "ZOJAX_DISTRIBUTED"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    num_cpu_devices: int | None = None,
    cpu_collectives: str | None = "gloo",
    initialization_timeout: int = 300,
    auto: bool | None = None,
    preemption_service: bool = False,
) -> bool:
    """Joins this process to a multi-process JAX job, or does nothing for a single process.

    Must run before anything touches a JAX device (it configures the CPU backend first).

    Resolution order: the arguments; then ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``; then, when ``auto`` (or ``ZOJAX_DISTRIBUTED=auto``), ``jax.distributed.
    initialize()`` with JAX's cluster auto-detection (Cloud TPU pod slices, SLURM, Open MPI, ...).
    With none of these, or ``num_processes == 1``, it is single-process and returns ``False``.

    Args:
      coordinator_address: ``host:port`` of process 0's coordination service (reachable by all).
      num_processes: total number of processes.
      process_id: this process's index.
      local_device_ids: the local accelerators this process uses (e.g. one process per GPU).
      num_cpu_devices: CPU devices per process (``jax_num_cpu_devices``; CPU runs and tests only).
      cpu_collectives: ``jax_cpu_collectives_implementation`` for cross-process CPU collectives
        (``"gloo"``, the jaxlib default since 0.4.3x; ``"mpi"`` needs an MPI build; ``None`` leaves
        the setting alone). Irrelevant on TPU/GPU, whose collectives are ICI/NCCL.
      initialization_timeout: seconds to wait for all processes to connect.
      auto: use cluster auto-detection when nothing explicit is given (default: ``ZOJAX_DISTRIBUTED``
        is ``"auto"``).
      preemption_service: keep JAX's preemption service (``jax_enable_preemption_service``). Off
        by default: its C++ SIGTERM notifier can take the signal from the trainer's own handler
        (observed under load: a SIGTERM to one process was swallowed and the run went on), and
        ``zojax finetune`` already agrees on a SIGTERM across processes and checkpoints.

    Returns:
      whether a multi-process job was joined (also ``True`` when it already was).

    Raises:
      ValueError: for an incomplete explicit configuration (e.g. an address without a process id).
    """
    if num_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_enable_preemption_service", bool(preemption_service))
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if auto is None:
        auto = os.environ.get(ENV_AUTO, "").strip().lower() == "auto"
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if num_processes == 1:
            return False
        if any(v is None for v in explicit):
            raise ValueError(
                "distributed: give all of coordinator_address, num_processes and process_id "
                f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got "
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        assert num_processes is not None and process_id is not None
        if not 0 <= process_id < num_processes:
            raise ValueError(f"distributed: process_id {process_id} not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
        )
        return True
    if auto:
        jax.distributed.initialize(local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
        return jax.process_count() > 1
    return False


def global_mesh(data: int | None = None, fsdp: int | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over every process's devices (``jax.devices()`` order).

    Defaults: ``fsdp`` = devices per process, ``data`` = number of processes, so parameters are
    sharded within a host (fast interconnect) and the batch across hosts as well as within.

    Raises:
      ValueError: if ``data × fsdp`` is not the global device count.
    """
    n = jax.device_count()
    if fsdp is None:
        fsdp = n // data if data else jax.local_device_count()
    if data is None:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"global_mesh: data {data} × fsdp {fsdp} != {n} devices")
    return Mesh(np.array(jax.devices()).reshape(data, fsdp), ("data", "fsdp"))


def put_global(tree: PyTree, shardings: PyTree) -> PyTree:
    """Global arrays from host values that every process holds in full (same values everywhere).

    Each process copies only the shards its own devices hold (``jax.make_array_from_callback``);
    works for one process too. ``shardings`` is one sharding or a tree of them shaped like ``tree``.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(x: Any, s: jax.sharding.Sharding) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def put_batch(tree: PyTree, mesh: Mesh, axes: tuple[str, ...] = ("data", "fsdp")) -> PyTree:
    """Global arrays of a batch every process holds in full, the leading axis sharded over ``axes``."""
    return jax.tree.map(lambda x: put_global(x, NamedSharding(mesh, P(axes, *([None] * (np.ndim(x) - 1))))), tree)


def put_process_batch(tree: PyTree, mesh: Mesh, axes: tuple[str, ...] = ("data", "fsdp")) -> PyTree:
    """Global batch arrays from each process's own rows (``jax.make_array_from_process_local_data``).

    For real data loading on many hosts: process ``i`` passes only its ``B / process_count`` rows
    (e.g. its slice of the shuffled epoch); the global leading axis is their concatenation in
    process order, sharded over ``axes``.
    """

    def put(x: Any) -> jax.Array:
        host = np.asarray(x)
        sharding = NamedSharding(mesh, P(axes, *([None] * (host.ndim - 1))))
        return jax.make_array_from_process_local_data(sharding, host)

    return jax.tree.map(put, tree)


def gather(tree: PyTree) -> PyTree:
    """Host numpy copies of (possibly non-fully-addressable) global arrays, on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
