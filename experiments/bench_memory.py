"""Memory of on-the-fly zeroth-order steps vs. forward passes at SmolLM2-135M shape.

Two measurements (random weights of the real shape; the numbers do not depend on the values):

1. XLA temp bytes (``.lower(...).compile().memory_analysis()``) of the loss forward and of
   :func:`zojax.jit_step` steps (``ZO_COMPILER_OPTIONS``, parameters and optimizer state donated):
   MeZO and MeZO-GV (M = 2, 4, 8). Bar: ``(temp_step − temp_fwd) / param_bytes ≤ 0.10``.
   Directions of up to ``zojax.perturb.UNROLL_MAX`` keys are unrolled, larger ones (M = 8) are one
   vmapped draw reduced over the keys; both fuse into the layer scan and the in-place update.
2. Peak RSS (``VmHWM`` in ``/proc/self/status``) of a process running only forwards vs. one running
   MeZO steps at the same batch, each in its own subprocess. Bar: ``rss_mezo / rss_fwd ≤ 1.15``.
   Reported twice: "workload" resets the peak (``/proc/self/clear_refs``) once the parameters exist,
   so it covers compiling and running with the parameters resident; "whole process" also includes
   the random initialisation (whose transient peak is ~2x the parameters). Both processes compile
   as the trainer does, returning freed memory to the OS meanwhile
   (``zojax.train.heap.returning_freed_memory``); ``--untrimmed`` also measures without. At 135M
   the workload ratio is set by the MeZO step's larger program (its compile transient and the
   loaded executable), not by data: the running increments are similar.

Usage::

    python experiments/bench_memory.py                  # everything, prints a table and JSON
    python experiments/bench_memory.py --gv 2,4 --batch 8 --seq 64 --steps 3
    python experiments/bench_memory.py --child fwd      # one RSS measurement (used internally)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

import zojax
import zojax.models as zm
from zojax.train.cache import enable_compile_cache
from zojax.train.heap import malloc_trim, proc_status_bytes, returning_freed_memory


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``)."""
    return proc_status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_rss_bytes() -> int:
    """Current resident set size (``VmRSS``)."""
    return proc_status_bytes("VmRSS")


def setup(preset: str, batch: int, seq: int, seed: int = 0):
    model, params = zm.init_model(zm.llama_config(preset), seed)
    ids = jax.random.randint(jax.random.key(seed + 1), (batch, seq), 0, model.config.vocab_size)
    return model, params, ids, jnp.ones_like(ids)


def make_fwd(model, ids, mask):
    """The loss forward, jitted with the step's compiler options (nothing donated)."""

    def fwd(params):
        return zm.next_token_loss(model, ids, mask)(params)

    return jax.jit(fwd, **zojax.jit_options(donate=False))


def make_step(model, ids, mask, tx):
    """The MeZO / MeZO-GV step as the trainer compiles it (:func:`zojax.jit_step`)."""
    return zojax.jit_step(tx, lambda: zm.next_token_loss(model, ids, mask))


def compiled(jitted, *args, trim: bool = False):
    """``jitted`` compiled for ``args`` and the seconds it took; with ``trim``, freed memory is
    returned to the OS while compiling, as the trainer does
    (``zojax.train.heap.returning_freed_memory``)."""
    t = time.time()
    with returning_freed_memory() if trim else contextlib.nullcontext():
        c = jitted.lower(*args).compile()
    return c, time.time() - t


def temp_bytes(args) -> dict:
    model, params, ids, mask = setup(args.preset, args.batch, args.seq)
    pbytes = zm.param_bytes(params)
    out = {
        "param_bytes": pbytes,
        "batch": args.batch,
        "seq": args.seq,
        "preset": args.preset,
        "steps": {},
    }
    c, ct = compiled(make_fwd(model, ids, mask), params)
    base = c.memory_analysis().temp_size_in_bytes
    out["fwd_temp_bytes"] = base
    print(
        f"forward: temp {base / 2**20:.1f} MiB (params {pbytes / 2**20:.1f} MiB), compile {ct:.1f}s",
        flush=True,
    )
    methods = [("mezo", zojax.mezo(1e-6, 1e-3))]
    methods += [(f"gv{m}", zojax.mezo_gv(1e-6, 1e-3, num_candidates=m)) for m in args.gv]
    for name, tx in methods:
        state = tx.init(params)
        c, ct = compiled(make_step(model, ids, mask, tx), params, state)
        ma = c.memory_analysis()
        excess = (ma.temp_size_in_bytes - base) / pbytes
        out["steps"][name] = {
            "temp_bytes": ma.temp_size_in_bytes,
            "excess_over_fwd_div_params": excess,
            "alias_bytes": ma.alias_size_in_bytes,
            "compile_s": ct,
            "pass": excess <= 0.10,
        }
        print(
            f"{name:6s}: temp {ma.temp_size_in_bytes / 2**20:.1f} MiB, "
            f"(temp − fwd)/params = {excess:+.4f} "
            f"{'PASS' if excess <= 0.10 else 'FAIL'} (≤ 0.10), compile {ct:.1f}s",
            flush=True,
        )
    return out


def child(args) -> None:
    """One RSS measurement: only forwards (``fwd``) or only MeZO steps (``mezo``, params donated)."""
    if args.compile_cache:
        enable_compile_cache(args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the forward too
    model, params, ids, mask = setup(args.preset, args.batch, args.seq)
    params = jax.block_until_ready(params)
    time.sleep(0.5)
    # the random initialisation's temporaries are not part of either workload: measure from here
    malloc_trim()
    phases = {"hwm_setup": vm_hwm_bytes()}
    reset = reset_peak_rss()
    phases["rss_setup"] = vm_rss_bytes()
    if args.child == "fwd":
        c, _ = compiled(make_fwd(model, ids, mask), params, trim=args.trim)
        phases["hwm_compile"] = vm_hwm_bytes()
        malloc_trim()
        phases["rss_after_compile"] = vm_rss_bytes()
        reset_peak_rss()
        t = time.time()
        for _ in range(args.steps):
            jax.block_until_ready(c(params))
    else:
        tx = zojax.mezo(1e-6, 1e-3)
        state = tx.init(params)
        c, _ = compiled(
            make_step(model, ids, mask, tx),
            params,
            state,
            trim=args.trim,
        )
        phases["hwm_compile"] = vm_hwm_bytes()
        malloc_trim()
        phases["rss_after_compile"] = vm_rss_bytes()
        reset_peak_rss()
        t = time.time()
        for _ in range(args.steps):
            params, state, _ = c(params, state)
            jax.block_until_ready(params)
    dt = (time.time() - t) / args.steps
    phases["hwm_run"] = vm_hwm_bytes()
    print(
        json.dumps(
            {
                "mode": args.child,
                "vm_hwm": max(phases["hwm_compile"], phases["hwm_run"]),
                "vm_hwm_process": max(phases["hwm_setup"], phases["hwm_compile"], phases["hwm_run"]),
                **phases,
                "s_per_call": dt,
                "reset": reset,
            }
        )
    )


def run_child(args, mode: str, compile_cache: str = "", trim: bool = True) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        *("--child", mode, "--preset", args.preset, "--batch", str(args.batch)),
        *("--seq", str(args.seq), "--steps", str(args.steps)),
        *(("--compile-cache", compile_cache) if compile_cache else ()),
        *(() if trim else ("--untrimmed-child",)),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def rss(args, compile_cache: str = "", trim: bool = True) -> dict:
    """Peak RSS of the forward-only and the MeZO process. With ``compile_cache``, each process is
    run twice and the second run measured: both programs then load from the persistent compilation
    cache (as for a resumed or repeated run) instead of being compiled. ``trim``: both processes
    return freed memory to the OS while compiling, as the trainer does; without it the compile's
    garbage stays resident until it ends."""
    res = {}
    for mode in ("fwd", "mezo"):
        if compile_cache:
            run_child(args, mode, compile_cache, trim)  # fills the cache
        res[mode] = run_child(args, mode, compile_cache, trim)
        print(
            f"{mode:5s} process: peak RSS {res[mode]['vm_hwm'] / 2**20:.0f} MiB, "
            f"{res[mode]['s_per_call']:.2f} s per call",
            flush=True,
        )
    ratio = res["mezo"]["vm_hwm"] / res["fwd"]["vm_hwm"]
    whole = res["mezo"]["vm_hwm_process"] / res["fwd"]["vm_hwm_process"]
    print(
        f"peak RSS MeZO / forward, workload only (peak reset after the parameters exist)"
        f"{', warm compilation cache' if compile_cache else ''}"
        f"{'' if trim else ', no trimming while compiling'} = "
        f"{ratio:.3f} {'PASS' if ratio <= 1.15 else 'FAIL'} (≤ 1.15)"
    )
    print(
        f"peak RSS MeZO / forward, whole process (incl. random init) = {whole:.3f} "
        f"{'PASS' if whole <= 1.15 else 'FAIL'} (≤ 1.15)"
    )
    return {
        "fwd": res["fwd"],
        "mezo": res["mezo"],
        "ratio": ratio,
        "pass": ratio <= 1.15,
        "ratio_whole_process": whole,
        "pass_whole_process": whole <= 1.15,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gv", default="2,4,8", help="MeZO-GV candidate counts (comma separated, '' for none)")
    ap.add_argument("--skip-temp", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument(
        "--warm-cache",
        action="store_true",
        help="also measure RSS with a warm persistent compilation cache (each process run twice)",
    )
    ap.add_argument(
        "--untrimmed",
        action="store_true",
        help="also measure RSS without returning freed memory to the OS while compiling",
    )
    ap.add_argument("--compile-cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--untrimmed-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("fwd", "mezo"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.gv = [int(m) for m in args.gv.split(",") if m.strip()]
    args.trim = not args.untrimmed_child
    if args.child:
        child(args)
        return
    results = {}
    if not args.skip_rss:
        results["rss"] = rss(args)
        if args.warm_cache:
            with tempfile.TemporaryDirectory() as cache:
                results["rss_warm_cache"] = rss(args, cache)
        if args.untrimmed:
            results["rss_untrimmed"] = rss(args, trim=False)
    if not args.skip_temp:
        results["temp"] = temp_bytes(args)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
