"""Multi-host smoke test: a few sharded zeroth-order steps of a random-weight model on every process.

Run the same command on every process of the job (each joins it through
:func:`zojax.distributed.initialize`); process 0 prints one JSON line per ``--runs`` entry and, with
``--out``, every process writes its gathered results to ``OUT.p{process_index}.npz``.
``tests/test_multihost.py`` runs it on two processes on loopback and compares with one device.

Usage (two processes on one machine, CPU)::

    python experiments/multihost_smoke.py --coordinator 127.0.0.1:12355 --num-processes 2 \\
        --process-id 0 --num-cpu-devices 2 --data 1 --fsdp 4 &
    python experiments/multihost_smoke.py --coordinator 127.0.0.1:12355 --num-processes 2 \\
        --process-id 1 --num-cpu-devices 2 --data 1 --fsdp 4

On a TPU pod slice or under SLURM, ``--auto`` (JAX's cluster auto-detection) replaces the first
four flags; see experiments/README.md (Multi-host / pods).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zojax.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    gather,
    global_mesh,
    initialize,
    put_batch,
    put_global,
)

PyTree = Any

TOY = "toy"
"""``preset`` of :func:`run_steps` for a plain (not model) loss: embedding, 3 stacked tanh layers, head."""


def _toy_problem(seed: int, batch_size: int) -> tuple[PyTree, Any, Any, tuple[np.ndarray, ...]]:
    """Parameters, ``specs(mesh)``, ``make_loss(x, y) -> (params -> loss)`` and a batch of the toy classifier."""
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

    def make_loss(x: jax.Array, y: jax.Array) -> Any:
        def value(q: PyTree) -> jax.Array:
            h = q["embed"][x].mean(1)
            for layer in range(3):
                w = q["layers"]["w"][layer]
                h = h + 0.1 * jax.numpy.tanh(h @ w) @ w.T
            logits = h @ q["head"]["kernel"] + q["head"]["bias"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return value

    return params, specs, make_loss, (x, y)


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
    batch is sharded over all devices and the step is :func:`zojax.jit_step` with those shardings
    (parameters and optimizer state donated, ``ZO_COMPILER_OPTIONS``); without one it runs on the
    default device.
    Every process must call it with the same arguments.

    Returns:
      ``{"losses", "projected_grads", "nonfinite", "params" (host numpy tree), "param_spans_processes",
      "seconds_per_step", "first_step_s"}``.
    """
    import functools

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
        make_loss = functools.partial(zm.next_token_loss, zm.Model(config))  # (ids, mask) -> loss

        def specs(mesh: Mesh) -> PyTree:
            return msharding.shardings(host_params, mesh)

    tx = zojax.METHODS[method].optimizer(learning_rate, eps=eps, key=seed, **(options or {}))
    state = jax.tree.map(np.asarray, tx.init(host_params))
    if mesh is None:
        params, state, batch = jax.device_put((host_params, state, host_batch))
        jitted = zojax.jit_step(tx, make_loss)
    else:
        p_sh = specs(mesh)
        replicated = NamedSharding(mesh, P())
        params = put_global(host_params, p_sh)
        state = put_global(state, replicated)
        batch = put_batch(host_batch, mesh)
        jitted = zojax.jit_step(tx, make_loss, out_shardings=(p_sh, replicated, replicated))  # state, stats replicated
    losses, pgs = [], []
    t_first = time.perf_counter()
    t0 = None
    for i in range(steps):
        if i == 1:
            t0 = time.perf_counter()
        params, state, _ = jitted(params, state, *batch)
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
    """``python experiments/multihost_smoke.py``: run the same command on every process/host.

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
