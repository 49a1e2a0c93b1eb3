"""Speed and memory of every registered method's step against the forward pass it is built from.

For a random-weight model of a real shape at a batch size and sequence length, measures

* ``forward_s``: one call of the jitted loss forward (the trainer's loss, same batch), timed in the
  method's process right after its steps (so both see the same load on a shared machine); the
  forward's own process (``forward_s_separate_process``) gives the baseline RSS and temp bytes;
* ``step_s``: one training step of each method, the trainer's own jitted step
  (:func:`zojax.train.step.build_step`: on-the-fly perturbable loss, parameters and optimizer state
  donated, ``ZO_COMPILER_OPTIONS`` for zeroth-order steps);
* ``step_over_forwards = step_s / (forwards_per_step × forward_s)``: 1.0 means a ZO step costs
  exactly its forward passes (the noise generation and the update are free). For first-order Adam
  (``ft-adam``) ``forwards_per_step`` is 1 and the ratio is the cost of forward + backward + Adam in
  forward passes (typically ~3);
* ``temp_over_param_bytes``: XLA's temp allocation of the compiled step
  (``lower(...).compile().memory_analysis().temp_size_in_bytes``) over the parameter bytes;
* ``peak_rss_over_forward``: peak RSS of a process running the step over that of a process running
  only forwards (``VmHWM``, the peak reset once the parameters exist, as in ``bench_memory.py``);
  on GPU/TPU also ``peak_device_over_forward`` from the device's ``peak_bytes_in_use``.

Each method (and the forward) runs in its own subprocess (``--child``), one after another: the
RSS peak is per process, and one compile per method serves timing, memory analysis and RSS.
Timings: ``--warmup`` calls after compiling, then ``--repeats`` timed repeats of ``--steps`` calls
each (``block_until_ready``); the reported time per call is the median over repeats.

Usage::

    python experiments/bench.py --model smollm2-135m --batch-size 16 --seq-len 64 --json results/bench_cpu.json
    python experiments/bench.py --model tiny --methods mezo,mezo-gv-m4,ft-adam --repeats 3
    python experiments/bench.py --model llama-1b --batch-size 4 --seq-len 128 --methods mezo

Models: ``smollm2-135m``, ``smollm2-360m``, ``llama-1b`` (Llama-3.2-1B shape) and any other
:func:`zojax.models.llama_config` preset (``tiny`` for a smoke test); ``opt-...`` for OPT presets.
Methods (``--methods``, comma separated): ``mezo``, ``nspsa-q2``, ``mezo-gv-m2``, ``mezo-gv-m4``,
``mezo-gv-m8``, ``mezo-greedy-m4``, ``mezo-centred-m4``, ``subzero-r32``, ``subzero-gv-m4-r32``,
``ft-adam`` (the default: all of them), any ``nspsa-qN`` / ``mezo-gv-mN`` / ``mezo-greedy-mN`` /
``mezo-centred-mN``, or a registry name
alone for its default variants. Every method registered in :data:`zojax.METHODS` is included by
default. A ``-rR`` suffix selects SubZero's subspace noise of rank ``R`` (``perturbation="subspace"``,
``refresh_every`` = :data:`SUBSPACE_REFRESH`), and ``subzero`` spells ``mezo`` (``subzero-r32`` is
MeZO with rank-32 subspace noise, ``subzero-gv-m4-r32`` MeZO-GV M = 4 with it). For those rows the
method's process also times ``basis_s``: one jitted regeneration of every matrix leaf's ``U, V``
(Gaussian draws + QR, all layers), what a refresh step would pay if the factors were cached,
printed below the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_memory import malloc_trim, reset_peak_rss, vm_hwm_bytes, vm_rss_bytes

import zojax.models as zm
from zojax import perturb, registry
from zojax.train.heap import returning_freed_memory
from zojax.train.loss import task_loss, training_loss
from zojax.train.step import Tuned, build_step

FORWARD = "forward"
FO_ADAM = "ft-adam"
# Options that define a method's variants, as (name suffix letter, option name), and the variants
# run by default. A registered method not listed here runs once with its default options.
VARIANT_OPTION: dict[str, tuple[str, str]] = {
    "nspsa": ("q", "num_queries"),
    "mezo-gv": ("m", "num_candidates"),
    "mezo-greedy": ("m", "num_candidates"),
    "mezo-centred": ("m", "num_candidates"),
}
DEFAULT_VARIANTS: dict[str, tuple[int, ...]] = {
    "nspsa": (2,),
    "mezo-gv": (2, 4, 8),
    "mezo-greedy": (4,),
    "mezo-centred": (4,),
}
SUBZERO_VARIANTS = ("subzero-r32", "subzero-gv-m4-r32")  # run by default, after the registry's
SUBSPACE_REFRESH = 1000  # the trainer's default --refresh-every
LEARNING_RATE = 1e-6
EPS = 1e-3
OBJECTIVE = "lm"  # teacher-forced next-token loss on every position (zojax.train.loss)


def default_methods() -> list[str]:
    """Every registered method (with its default variants), then first-order Adam."""
    names = []
    for name in registry.METHODS:
        if name in DEFAULT_VARIANTS:
            letter = VARIANT_OPTION[name][0]
            names += [f"{name}-{letter}{v}" for v in DEFAULT_VARIANTS[name]]
        else:
            names.append(name)
    return [*names, *SUBZERO_VARIANTS, FO_ADAM]


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """``"mezo-gv-m4"`` -> ``("mezo-gv", {"num_candidates": 4})``; ``"ft-adam"`` -> ``("ft-adam", {})``;
    ``"subzero-gv-m4-r32"`` -> ``("mezo-gv", {"num_candidates": 4, "perturbation": "subspace",
    "rank": 32, "refresh_every": SUBSPACE_REFRESH})``.

    Raises:
      ValueError: for an unknown name (the message lists the choices).
    """
    low = re.fullmatch(r"(.+)-r(\d+)", name)
    if low and low.group(1) != FO_ADAM:
        inner = re.sub(r"^subzero", "mezo", low.group(1))
        try:
            base, options = parse_method(inner)
        except ValueError:
            pass
        else:
            if base != FO_ADAM and int(low.group(2)) >= 1:
                sub = {"perturbation": "subspace", "rank": int(low.group(2)), "refresh_every": SUBSPACE_REFRESH}
                return base, {**options, **sub}
    if name == FO_ADAM or (name in registry.METHODS and name not in VARIANT_OPTION):
        return name, {}
    m = re.fullmatch(r"(.+)-([a-z])(\d+)", name)
    if m and m.group(1) in VARIANT_OPTION and VARIANT_OPTION[m.group(1)][0] == m.group(2):
        return m.group(1), {VARIANT_OPTION[m.group(1)][1]: int(m.group(3))}
    raise ValueError(
        f"--methods: unknown method {name!r}; choose from {default_methods()} "
        f"(or nspsa-qN, mezo-gv-mN, mezo-greedy-mN, mezo-centred-mN, a registry name: {sorted(registry.METHODS)}, "
        f"any of them with a -rR suffix for rank-R subspace noise, subzero for mezo)"
    )


def expand_methods(spec: str) -> list[str]:
    """The comma-separated ``--methods`` list, registry names expanded to their default variants."""
    out: list[str] = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        if raw in DEFAULT_VARIANTS:
            letter = VARIANT_OPTION[raw][0]
            names = [f"{raw}-{letter}{v}" for v in DEFAULT_VARIANTS[raw]]
        else:
            names = [raw]
        for n in names:
            parse_method(n)
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("--methods: no method given")
    return out


def forwards_per_step(name: str) -> int:
    """Forward passes per step (registry accounting); 1 for first-order Adam (plus its backward)."""
    base, options = parse_method(name)
    if base == FO_ADAM:
        return 1
    options = {k: v for k, v in options.items() if k not in registry.PERTURBATION_OPTIONS}
    return registry.get(base).forwards_per_step(**options)


def model_config(name: str) -> zm.ModelConfig:
    """The architecture of ``--model``: a Llama preset, or ``opt-...`` for an OPT preset."""
    try:
        if name.startswith("opt-") or name == "opt-tiny":
            return zm.opt_config(name[4:] if name == "opt-tiny" else name)
        return zm.llama_config(name)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None


def make_batch(config: zm.ModelConfig, batch_size: int, seq_len: int, seed: int) -> dict[str, jax.Array]:
    """A random-token ``lm`` batch (every position a target), the same for every method."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch_size, seq_len)).astype(np.int32)
    ones = np.ones_like(ids)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(ones), "target_mask": jnp.asarray(ones)}


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the first device (GPU/TPU), ``None`` where not reported (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory stats raise various errors
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _rss(fn: Callable[[], int]) -> int | None:
    try:
        return fn()
    except (OSError, RuntimeError):  # no /proc (macOS): no RSS numbers
        return None


def time_calls(call: Callable[[], Any], steps: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of each of ``repeats`` repeats of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            call()
        out.append((time.perf_counter() - t) / steps)
    return out


def subspace_bases(params: Any, rank: int) -> Callable[[jax.Array], Any]:
    """A jitted ``key -> every matrix leaf's (U, V)`` of rank ``rank`` (every layer of stacked leaves):
    the Gaussian draws and QR that SubZero's noise regenerates (:func:`zojax.perturb.subspace_basis`)."""

    def bases(key: jax.Array) -> list[Any]:
        sub = perturb.Subspace(key, rank)
        out = []
        for path, x in jax.tree_util.tree_leaves_with_path(params):
            stacked = perturb.is_stacked(path)
            mn = perturb.matrix_shape(x.shape[1:] if stacked else x.shape)
            if mn is None:
                continue
            if stacked:
                layers = jnp.arange(x.shape[0], dtype=jnp.uint32)
                out.append(jax.vmap(lambda i, p=path, mn=mn: perturb.subspace_basis(sub, p, *mn, i))(layers))
            else:
                out.append(perturb.subspace_basis(sub, path, *mn))
        return out

    return jax.jit(bases)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process: the forward (``--child forward``) or one method's step."""
    name = args.child
    say = lambda msg: print(f"  [{name}] {msg}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    config = model_config(args.model)
    model, params = zm.init_model(config, args.seed, dtype=args.dtype)
    params = jax.block_until_ready(params)
    batch = make_batch(config, args.batch_size, args.seq_len, args.seed + 1)
    param_bytes = zm.param_bytes(params)
    say(f"random {config.name} parameters ({param_bytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    time.sleep(0.2)
    malloc_trim()  # the random initialisation's temporaries are no part of the workload
    hwm_setup = _rss(vm_hwm_bytes)
    reset = reset_peak_rss()
    rss_setup = _rss(vm_rss_bytes)

    if args.dense_noise:
        from zojax.models import forward as model_forward

        model_forward.LOW_RANK_DENSE = False  # read when the step is traced (perturb_layer)
    forward = jax.jit(lambda p, b: task_loss(model, OBJECTIVE, b)(p))
    t = time.perf_counter()
    if name == FORWARD:
        with returning_freed_memory():
            compiled = forward.lower(params, batch).compile()

        def call() -> Any:
            return jax.block_until_ready(compiled(params, batch))

        losses = lambda: [float(call())]
    else:
        base, options = parse_method(name)
        zeroth_order = base != FO_ADAM
        if zeroth_order:
            tx = registry.get(base).optimizer(
                LEARNING_RATE, eps=EPS, key=args.seed, distribution=args.distribution, **options
            )
        else:
            tx = optax.adam(LEARNING_RATE)
        step = build_step(Tuned(model, params, None), training_loss(OBJECTIVE), tx, zeroth_order)
        state = {"params": params, "opt": tx.init(params)}
        with returning_freed_memory():  # as the trainer compiles its step
            compiled = step.lower(state["params"], state["opt"], None, batch).compile()
        last: dict[str, Any] = {}

        def call() -> Any:
            state["params"], state["opt"], last["stats"] = compiled(state["params"], state["opt"], None, batch)
            return jax.block_until_ready(state["params"])

        def losses() -> list[float]:
            call()
            return [float(last["stats"]["loss"])]

    compile_s = time.perf_counter() - t
    hwm_compile = _rss(vm_hwm_bytes)
    ma = compiled.memory_analysis()
    temp = int(ma.temp_size_in_bytes) if ma is not None else None
    say(f"compiled in {compile_s:.1f}s, temp {temp / 2**20 if temp is not None else float('nan'):.1f} MiB; timing")
    malloc_trim()
    rss_after_compile = _rss(vm_rss_bytes)
    reset_peak_rss()
    first_loss = losses()
    times = time_calls(call, args.steps, args.repeats, max(args.warmup - 1, 0))
    hwm_run = _rss(vm_hwm_bytes)
    seconds = statistics.median(times)
    say(f"{seconds:.4g}s per call (repeats {', '.join(f'{x:.4g}' for x in times)})")
    forward_times = None
    if name != FORWARD:
        # The forward again, right after the step and in the same process, so that the ratio
        # compares timings taken under the same (shared-machine) load.
        p_now = state["params"]
        fwd_compiled = forward.lower(p_now, batch).compile()
        forward_times = time_calls(
            lambda: jax.block_until_ready(fwd_compiled(p_now, batch)), args.steps, args.repeats, max(args.warmup, 1)
        )
        say(
            f"forward {statistics.median(forward_times):.4g}s per call (repeats "
            f"{', '.join(f'{x:.4g}' for x in forward_times)})"
        )
    basis_s = None
    if name != FORWARD and options.get("perturbation") == "subspace":
        bases = subspace_bases(state["params"], options["rank"])
        key = perturb.subspace_key(perturb.key_data(args.seed), 0, options["refresh_every"])
        basis_s = statistics.median(
            time_calls(lambda: jax.block_until_ready(bases(key)), args.steps, args.repeats, max(args.warmup, 1))
        )
        say(f"U, V of every matrix (rank {options['rank']}): {basis_s:.4g}s")
    peaks = [h for h in (hwm_compile, hwm_run) if h is not None]
    return {
        "name": name,
        "seconds": seconds,
        "repeat_seconds": times,
        "forward_seconds": None if forward_times is None else statistics.median(forward_times),
        "forward_repeat_seconds": forward_times,
        "basis_s": basis_s,
        "compile_s": compile_s,
        "temp_bytes": temp,
        "param_bytes": param_bytes,
        "loss": first_loss[0],
        "peak_rss": max(peaks) if peaks else None,
        "peak_rss_process": max([hwm_setup, *peaks]) if peaks and hwm_setup is not None else None,
        "rss_setup": rss_setup,
        "rss_after_compile": rss_after_compile,
        "hwm_compile": hwm_compile,
        "hwm_run": hwm_run,
        "peak_rss_reset": reset,
        "peak_device_bytes": device_peak_bytes(),
    }


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``--child name`` in a fresh process (its stderr passes through as progress)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        *("--model", args.model, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)),
        *("--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup)),
        *("--dtype", args.dtype, "--seed", str(args.seed), "--distribution", args.distribution),
        *(["--dense-noise"] if args.dense_noise else []),
    ]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.child_timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {args.child_timeout} s"}
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"name": name, "error": f"exit status {p.returncode} (see its stderr above)"}
    return json.loads(lines[-1])


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, ``None`` when either is missing."""
    return None if a is None or b is None or b == 0 else a / b


def device_description() -> str:
    """The device in words, e.g. ``cpu (x86_64, 2 cores)`` or ``NVIDIA H100 80GB HBM3``."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return f"{d.platform}: {d.device_kind} x{jax.device_count()}"


def zojax_source() -> str | None:
    """``git describe --always --dirty`` of the zojax checkout being measured, if it is one."""
    import zojax

    root = os.path.dirname(os.path.dirname(os.path.abspath(zojax.__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def summarize(fwd: dict[str, Any], results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The JSON rows: one per method, each carrying the forward's numbers it is compared with."""
    rows = []
    common = {
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        "distribution": args.distribution,
        "low_rank_dense": not args.dense_noise,
        "device": device_description(),
        "jax": jax.__version__,
        "zojax_source": zojax_source(),
        "steps": args.steps,
        "repeats": args.repeats,
        "param_bytes": fwd.get("param_bytes"),
        "forward_temp_bytes": fwd.get("temp_bytes"),
        "forward_peak_rss": fwd.get("peak_rss"),
        "forward_compile_s": fwd.get("compile_s"),
    }
    for r in results:
        name = r["name"]
        base, options = parse_method(name)
        k = forwards_per_step(name)
        fwd_s = r.get("forward_seconds") or fwd.get("seconds")
        row = {
            "method": name,
            "registry_name": base,
            "options": options,
            "forwards_per_step": k,
            "forward_s": fwd_s,
            "forward_s_separate_process": fwd.get("seconds"),
            "step_s": r.get("seconds"),
            "step_over_forwards": ratio(r.get("seconds"), None if fwd_s is None else k * fwd_s),
            "temp_over_param_bytes": ratio(r.get("temp_bytes"), r.get("param_bytes")),
            "peak_rss_over_forward": ratio(r.get("peak_rss"), fwd.get("peak_rss")),
            "peak_rss_process_over_forward": ratio(r.get("peak_rss_process"), fwd.get("peak_rss_process")),
            "peak_device_over_forward": ratio(r.get("peak_device_bytes"), fwd.get("peak_device_bytes")),
            "excess_temp_over_param_bytes": ratio(
                None
                if r.get("temp_bytes") is None or fwd.get("temp_bytes") is None
                else r["temp_bytes"] - fwd["temp_bytes"],
                r.get("param_bytes"),
            ),
            "temp_bytes": r.get("temp_bytes"),
            "basis_s": r.get("basis_s"),
            "basis_over_forward": ratio(r.get("basis_s"), fwd_s),
            "peak_rss": r.get("peak_rss"),
            "compile_s": r.get("compile_s"),
            "repeat_seconds": r.get("repeat_seconds"),
            "loss": r.get("loss"),
            **common,
        }
        if "error" in r:
            row["error"] = r["error"]
        rows.append(row)
    return rows


def fmt(x: float | None, spec: str) -> str:
    """``format(x, spec)``, or ``—`` for a missing value."""
    return "—" if x is None else format(x, spec)


def table(fwd: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown table printed at the end (and pasted into ``experiments/README.md``)."""
    pb = fwd.get("param_bytes")
    lines = [
        "| method | forwards / step | step (s) | forward (s) | step / (forwards × forward) | temp / param bytes "
        "| peak RSS / forward | compile (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| forward (own process) | 1 | — | {fmt(fwd.get('seconds'), '.4g')} | 1 "
        f"| {fmt(ratio(fwd.get('temp_bytes'), pb), '.3f')} | 1 | {fmt(fwd.get('compile_s'), '.1f')} |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['forwards_per_step']} | {fmt(r['step_s'], '.4g')} | {fmt(r['forward_s'], '.4g')} "
            f"| {fmt(r['step_over_forwards'], '.3f')} | {fmt(r['temp_over_param_bytes'], '.3f')} "
            f"| {fmt(r['peak_rss_over_forward'], '.3f')} | {fmt(r['compile_s'], '.1f')} |"
            + (f" error: {r['error']}" if "error" in r else "")
        )
    for r in rows:
        if r.get("basis_s") is not None:
            lines.append(
                f"\n{r['method']}: U, V of every matrix (draws + QR, all layers, rank {r['options']['rank']}) "
                f"{fmt(r['basis_s'], '.4g')} s = {fmt(r['basis_over_forward'], '.3f')} forwards (a refresh step's "
                f"cost were U, V cached; regenerated, it is inside every perturbed forward and the update)"
            )
    return "\n".join(lines)


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
    """Writes ``rows`` to ``path`` (parent folders created) and says so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Parses arguments; a parent runs the forward and every method as children and reports."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, smollm2-360m, llama-1b, tiny, ...")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--methods", default=",".join(default_methods()), help="comma separated (default: all)")
    ap.add_argument("--steps", type=int, default=1, help="calls per timed repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument(
        "--distribution",
        default="gaussian",
        choices=perturb.DISTRIBUTIONS,
        help="perturbation noise of the zeroth-order methods (rademacher: 32 signs per random word)",
    )
    ap.add_argument(
        "--dense-noise",
        action="store_true",
        help="subspace noise on dense kernels materialised as W + s A B^T (an A/B of "
        "zojax.models.forward.LOW_RANK_DENSE, default: x K + s (x A) B^T)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="write the JSON list of per-method results here")
    ap.add_argument("--child-timeout", type=float, default=7200, help="seconds per method")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for flag in ("batch_size", "seq_len", "steps", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')}: must be at least 1")
    try:
        model_config(args.model)
        methods = expand_methods(args.methods)
    except ValueError as e:
        ap.error(str(e))
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return

    n = len(methods) + 1
    print(
        f"bench: {args.model} batch {args.batch_size} x {args.seq_len} tokens, {args.dtype}, "
        f"{args.distribution} noise, on "
        f"{device_description()}; {n} processes (forward + {len(methods)} methods), one at a time",
        file=sys.stderr,
        flush=True,
    )
    t_all = time.perf_counter()
    results = []
    fwd: dict[str, Any] = {}
    for i, name in enumerate([FORWARD, *methods], 1):
        t = time.perf_counter()
        print(f"[{i}/{n}] {name} ...", file=sys.stderr, flush=True)
        r = run_child(name, args)
        msg = r.get("error") or f"{r['seconds']:.4g}s per call"
        print(f"[{i}/{n}] {name}: {msg} ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
        if name == FORWARD:
            if "error" in r:
                sys.exit(f"bench: the forward failed ({r['error']}); nothing to compare with")
            fwd = r
        else:
            results.append(r)
    rows = summarize(fwd, results, args)
    print(
        f"\n{args.model} ({fwd['param_bytes'] / 2**20:.0f} MiB of parameters), batch {args.batch_size} x "
        f"{args.seq_len}, {args.dtype}, {device_description()}, jax {jax.__version__}; "
        f"median of {args.repeats} x {args.steps} calls; total {time.perf_counter() - t_all:.0f}s\n"
    )
    print(table(fwd, rows), flush=True)
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
