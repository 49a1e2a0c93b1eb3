"""Multi-process (multi-host) set-up for sharded zeroth-order steps: TPU pods, multi-node GPU, CPU.

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
* :func:`run_steps`: a few sharded ZO steps of a random-weight model (the multi-host smoke test
  ``python -m zojax.distributed`` on every host, and ``tests/test_multihost.py``).

Environment variables read by :func:`initialize` (arguments take precedence)::

    JAX_COORDINATOR_ADDRESS   host:port of process 0 (also read by JAX itself)
    JAX_NUM_PROCESSES         number of processes
    JAX_PROCESS_ID            this process's index in [0, JAX_NUM_PROCESSES)
    ZOJAX_DISTRIBUTED=auto    call jax.distributed.initialize() with JAX's cluster auto-detection
                              (Cloud TPU pod slices, SLURM, Open MPI), no other variable needed

Example (two processes on one machine, CPU)::

    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        python -m zojax.distributed --num-cpu-devices 2 &
    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \\
        python -m zojax.distributed --num-cpu-devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


TOY = "toy"
"""``preset`` of :func:`run_steps` for a plain (not model) loss: embedding, 3 stacked tanh layers, head."""


def _toy_problem(seed: int, batch_size: int) -> tuple[PyTree, Any, Any, tuple[np.ndarray, ...]]:
    """Parameters, ``specs(mesh)``, ``loss(params, x, y)`` and a batch of the toy classifier."""
    import optax

    rng = np.random.default_rng(seed)
    params = {
        "embed": rng.normal(size=(32, 16)).astype(np.float32),
        "layers": {"w": rng.normal(size=(3, 16, 8)).astype(np.float32)},
        "head": {"kernel": (0.3 * rng.normal(size=(16, 4))).astype(np.float32), "bias": np.zeros(4, np.float32)},
    }
    x = rng.integers(0, 32, size=(batch_size, 6)).astype(np.int32)
    y = rng.integers(0, 4, size=(batch_size,)).astype(np.int32)

    def specs(mesh: Mesh) -> PyTree:
        spec = {
            "embed": P("fsdp", None),
            "layers": {"w": P(None, "fsdp", None)},
            "head": {"kernel": P(None, "fsdp"), "bias": P()},
        }
        return jax.tree.map(lambda sp: NamedSharding(mesh, sp), spec, is_leaf=lambda v: isinstance(v, P))

    def loss(p: PyTree, x: jax.Array, y: jax.Array) -> Any:
        def value(q: PyTree) -> jax.Array:
            h = q["embed"][x].mean(1)
            for layer in range(3):
                w = q["layers"]["w"][layer]
                h = h + 0.1 * jax.numpy.tanh(h @ w) @ w.T
            logits = h @ q["head"]["kernel"] + q["head"]["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return value

    return params, specs, loss, (x, y)


def host_init_params(config: Any, seed: int = 0) -> PyTree:
    """Random float32 weights with the model's shapes, drawn with numpy on the host.

    Norm scales are 1, everything else ``N(0, 0.02²)``. Cheaper than :func:`zojax.models.init_params`
    (no per-leaf device computations to compile), and identical on every process.
    """
    import zojax.models as zm

    shapes = jax.eval_shape(lambda: zm.init_params(config, 0))
    rng = np.random.default_rng(seed)

    def init(path: Any, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(leaf.shape, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(init, shapes)


def run_steps(
    *,
    preset: str = "tiny",
    method: str = "mezo-gv",
    options: dict[str, Any] | None = None,
    steps: int = 3,
    batch_size: int = 8,
    seq_len: int = 16,
    learning_rate: float = 1e-3,
    eps: float = 1e-2,
    seed: int = 0,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """``steps`` zeroth-order steps of a random-weight model on a random batch.

    ``preset`` is a :func:`zojax.models.llama_config` preset (the next-token loss with on-the-fly
    perturbation inside the layer scan) or ``"toy"`` (a plain loss over a small pytree; the
    estimator perturbs materialised copies). With a ``mesh`` the parameters are FSDP-sharded
    (models: :func:`zojax.models.sharding.shardings`, the hidden dimension over ``"fsdp"``), the
    batch is sharded over all devices and the step is jitted with those shardings (parameters and
    optimizer state donated, ``ZO_COMPILER_OPTIONS``); without one it runs on the default device.
    Every process must call it with the same arguments.

    Returns:
      ``{"losses", "projected_grads", "nonfinite", "params" (host numpy tree), "param_spans_processes",
      "seconds_per_step", "first_step_s"}``.
    """
    import optax

    import zojax
    import zojax.models as zm
    from zojax.models import sharding as msharding

    # Same values on every process: parameters and batch come from fixed seeds on the host.
    if preset == TOY:
        host_params, specs, make_loss, host_batch = _toy_problem(seed, batch_size)
    else:
        config = zm.llama_config(preset)
        host_params = host_init_params(config, seed)
        rng = np.random.default_rng(seed + 1)
        ids = rng.integers(0, config.vocab_size, size=(batch_size, seq_len)).astype(np.int32)
        host_batch = (ids, np.ones_like(ids))
        model = zm.Model(config, None)

        def make_loss(params: PyTree, ids: jax.Array, mask: jax.Array) -> Any:
            return zm.next_token_loss(model, ids, mask)

        def specs(mesh: Mesh) -> PyTree:
            return msharding.shardings(host_params, mesh)

    tx = zojax.METHODS[method].optimizer(learning_rate, eps=eps, key=seed, **(options or {}))

    def step(params: PyTree, state: PyTree, *batch: jax.Array) -> tuple[PyTree, PyTree]:
        updates, state = tx.update(params, state, params, value_fn=make_loss(params, *batch))
        return optax.apply_updates(params, updates), state

    state = jax.tree.map(np.asarray, tx.init(host_params))
    if mesh is None:
        params, state, batch = jax.device_put((host_params, state, host_batch))
        jitted = jax.jit(step, donate_argnums=(0, 1), compiler_options=zm.ZO_COMPILER_OPTIONS)
    else:
        p_sh = specs(mesh)
        replicated = NamedSharding(mesh, P())
        params = put_global(host_params, p_sh)
        state = put_global(state, replicated)
        batch = put_batch(host_batch, mesh)
        jitted = jax.jit(
            step,
            donate_argnums=(0, 1),
            out_shardings=(p_sh, jax.tree.map(lambda _: replicated, state)),
            compiler_options=zm.ZO_COMPILER_OPTIONS,
        )
    losses, pgs = [], []
    t_first = time.perf_counter()
    t0 = None
    for i in range(steps):
        if i == 1:
            t0 = time.perf_counter()
        params, state = jitted(params, state, *batch)
        zs = zojax.zo_state(state)
        losses.append(float(gather(zs.loss)))
        pgs.append(float(gather(zs.projected_grad)))
        if i == 0:
            t_first = time.perf_counter() - t_first
    seconds = (time.perf_counter() - t0) / (steps - 1) if t0 is not None else float("nan")
    spans = any(
        not leaf.is_fully_addressable and len({d.process_index for d in leaf.sharding.device_set}) > 1
        for leaf in jax.tree.leaves(params)
    )
    return {
        "losses": losses,
        "projected_grads": pgs,
        "nonfinite": int(gather(zojax.zo_state(state).nonfinite_count)),
        "params": gather(params),
        "param_spans_processes": spans,
        "seconds_per_step": seconds,
        "first_step_s": t_first,
    }


def _flat(tree: PyTree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zojax.distributed``: run the same command on every process/host.

    Joins the job (:func:`initialize`), builds :func:`global_mesh`, runs :func:`run_steps` for each
    ``--runs`` entry, prints one JSON line per run (process 0) and, with ``--out``, writes the
    gathered results of this process to ``OUT.p{process_index}.npz`` (keys ``PRESET:METHOD/losses``,
    ``.../projected_grads``, ``.../params['layers']...`` for every parameter leaf, ``meta/...``).
    """
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--coordinator", default=None, help=f"host:port (default ${ENV_COORDINATOR})")
    ap.add_argument("--num-processes", type=int, default=None, help=f"default ${ENV_NUM_PROCESSES}")
    ap.add_argument("--process-id", type=int, default=None, help=f"default ${ENV_PROCESS_ID}")
    ap.add_argument("--auto", action="store_true", help="JAX cluster auto-detection (TPU pods, SLURM)")
    ap.add_argument("--num-cpu-devices", type=int, default=None, help="CPU devices per process")
    ap.add_argument("--timeout", type=int, default=300, help="seconds to wait for all processes")
    ap.add_argument("--single-device", action="store_true", help="no mesh: the unsharded reference")
    ap.add_argument("--data", type=int, default=None, help="mesh data axis (default: processes)")
    ap.add_argument("--fsdp", type=int, default=None, help="mesh fsdp axis (default: local devices)")
    ap.add_argument(
        "--runs",
        default="tiny:mezo,tiny:mezo-gv",
        help="comma-separated PRESET:METHOD (PRESET: a llama_config preset or 'toy'; METHOD: registered)",
    )
    ap.add_argument("--num-candidates", type=int, default=4, help="M for mezo-gv / mezo-greedy")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=1e-2)
    ap.add_argument("--out", default=None, help="write OUT.p{process_index}.npz")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    joined = initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        num_cpu_devices=args.num_cpu_devices,
        initialization_timeout=args.timeout,
        auto=args.auto or None,
    )
    mesh = None if args.single_device else global_mesh(args.data, args.fsdp)
    pid = jax.process_index()
    header = {
        "process_index": pid,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "distributed": joined,
        "mesh": None if mesh is None else dict(mesh.shape),
        "platform": jax.devices()[0].platform,
    }
    print(json.dumps({**header, "startup_s": round(time.perf_counter() - t_start, 2)}), file=sys.stderr, flush=True)
    arrays: dict[str, np.ndarray] = {}
    for run in [r for r in args.runs.split(",") if r]:
        preset, _, method = run.rpartition(":")
        preset = preset or "tiny"
        name = f"{preset}:{method}"
        opts = {"num_candidates": args.num_candidates} if method in ("mezo-gv", "mezo-greedy") else {}
        r = run_steps(
            preset=preset,
            method=method,
            options=opts,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            learning_rate=args.lr,
            eps=args.eps,
            mesh=mesh,
        )
        keys = ("losses", "projected_grads", "nonfinite", "param_spans_processes", "first_step_s")
        summary = {k: r[k] for k in keys}
        if pid == 0:
            print(json.dumps({"run": name, **header, **summary, "s_per_step": r["seconds_per_step"]}), flush=True)
        arrays[f"{name}/losses"] = np.asarray(r["losses"], np.float64)
        arrays[f"{name}/projected_grads"] = np.asarray(r["projected_grads"], np.float64)
        arrays[f"{name}/nonfinite"] = np.asarray(r["nonfinite"])
        arrays[f"{name}/param_spans_processes"] = np.asarray(r["param_spans_processes"])
        arrays.update({f"{name}/params{k}": v for k, v in _flat(r["params"]).items()})
    print(json.dumps({"process_index": pid, "total_s": round(time.perf_counter() - t_start, 2)}), file=sys.stderr)
    if args.out:
        arrays.update({f"meta/{k}": np.asarray(v) for k, v in header.items() if isinstance(v, (int, bool, str))})
        np.savez(f"{args.out}.p{pid}.npz", **arrays)
    if joined:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
