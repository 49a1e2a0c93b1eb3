"""Re-checks the jax/XLA workarounds listed in ``docs/jax_workarounds.md`` against this jax build.

Each check measures the code as it is and the plain alternative a workaround replaces, and prints
both with a verdict: "needed" while the alternative is still worse by the check's margin (memory
over the bar, or 1.5x the seconds; 3x for the micro-benchmark ``fold-in``), "not needed" when this
jax build no longer shows the cause. A workaround found not needed can go once the tests the
document names for it pass without it (and ``tests/test_golden.py`` still passes).

* ``compiler-options``: temp bytes of an on-the-fly MeZO-GV step (M = 8) over the forward's, with
  :data:`zojax.ZO_COMPILER_OPTIONS` and with each option left out;
* ``fold-in``: compile seconds of 16 key derivations, :func:`zojax.perturb.fold_in` vs
  ``jax.random.fold_in`` on a ``threefry4x32`` key;
* ``candidate-keys``, ``loop-keys``, ``draw-barrier``: compile and run seconds of a MeZO-GV (M = 4)
  :func:`zojax.jit_step` with that workaround monkeypatched out, each in its own process (one that
  runs past ``--timeout``, e.g. hangs, counts as infinitely slow); ``--preset smollm2-135m`` for the
  real shape (random weights).

The whole run takes about two and a half minutes on a 2-core CPU with the default small model.

Usage::

    python experiments/jax_workarounds.py                  # every check
    python experiments/jax_workarounds.py --only fold-in,draw-barrier
    python experiments/jax_workarounds.py --only draw-barrier --preset smollm2-135m --batch-size 16 --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import optax

import zojax
import zojax.models as zm
from zojax import estimators, perturb

Row = dict[str, Any]
SMALL = "small"  # a 4-layer Llama with hidden size 128 and 4096 tokens (compiles in ~20 s on 2 cores)


def _compile_s(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - t


def _row(name: str, what: str, ours: float, plain: float, margin: float, unit: str, needed: bool | None = None) -> Row:
    """One result; the workaround is ``needed`` while the alternative is ``margin`` times worse."""
    needed = plain > margin * ours if needed is None else needed
    return {"check": name, "measure": what, "workaround": ours, "alternative": plain, "unit": unit,
            "verdict": "needed" if needed else "not needed"}  # fmt: skip


def check_compiler_options() -> list[Row]:
    """``ZO_COMPILER_OPTIONS``: temp bytes of an on-the-fly MeZO-GV step (M = 8 > UNROLL_MAX, so
    both options matter) over the forward's, in parameter bytes, with all options and with each one
    left out (the memory bar is 0.10)."""
    cfg = zm.llama_config("tiny", vocab_size=4096, hidden_size=128, intermediate_size=256, num_layers=4)
    model, weights = zm.init_model(cfg, 0)
    ids = jax.random.randint(jax.random.key(3), (4, 32), 0, cfg.vocab_size)
    mask = jnp.ones_like(ids)
    params = jax.eval_shape(lambda: weights)
    param_bytes = zm.param_bytes(params)
    tx = zojax.mezo_gv(1e-3, num_candidates=8)
    state = jax.eval_shape(tx.init, params)

    def step(p: Any, s: Any) -> Any:  # zojax.jit_step's body, compiled here with chosen options
        u, s = tx.update(p, s, p, value_fn=zm.next_token_loss(model, ids, mask))
        return optax.apply_updates(p, u), s

    def excess(options: dict[str, str]) -> float:
        fwd = jax.jit(lambda p: zm.next_token_loss(model, ids, mask)(p)).lower(params)
        base = fwd.compile(compiler_options=options).memory_analysis().temp_size_in_bytes
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state)
        return (lowered.compile(compiler_options=options).memory_analysis().temp_size_in_bytes - base) / param_bytes

    ours = excess(zojax.ZO_COMPILER_OPTIONS)
    rows = []
    for left_out in zojax.ZO_COMPILER_OPTIONS:
        plain = excess({k: v for k, v in zojax.ZO_COMPILER_OPTIONS.items() if k != left_out})
        rows.append(_row("compiler-options", f"temp over forward / param bytes, without {left_out}", ours,
                         plain, 1, "", needed=plain > 0.10))  # fmt: skip
    return rows


def check_fold_in(n: int = 16) -> list[Row]:
    """``perturb.fold_in`` (two ``threefry2x32`` halves) vs ``jax.random.fold_in`` on a
    ``threefry4x32`` key: compile time of ``n`` chained derivations (13.5 s vs 0.7 s in 0.10.2)."""

    def ours(key: jax.Array) -> jax.Array:
        for i in range(n):
            key = perturb.fold_in(key, i)
        return key

    def plain(key: jax.Array) -> jax.Array:
        k = perturb.wrap(key)
        for i in range(n):
            k = jax.random.fold_in(k, i)
        return jax.random.key_data(k)

    key = perturb.key_data(0)
    _, t_ours = _compile_s(ours, key)
    _, t_plain = _compile_s(plain, key)
    return [_row("fold-in", f"compile s, {n} derivations", t_ours, t_plain, 3, "s")]


def _vmapped_candidate_keys(step_key: jax.Array, num: int) -> jax.Array:
    return jax.vmap(lambda i: perturb.fold_in(step_key, i))(jnp.arange(num, dtype=jnp.uint32))


def _candidate_losses_over_keys(
    value_fn: Any, params: Any, step_key: jax.Array, num: int, eps: Any, distribution: str, subspace: Any = None
) -> jax.Array:
    def body(k: jax.Array) -> jax.Array:
        return perturb.evaluate(value_fn, params, perturb.Direction.single(k, 1.0, distribution, subspace), eps)

    return jax.lax.map(body, perturb.candidate_keys(step_key, num))


def _draw_without_barrier(key: jax.Array, shape: tuple[int, ...], distribution: str) -> jax.Array:
    if distribution == "gaussian":
        return perturb.noise._gaussian(perturb.counter_bits(key, shape))
    return perturb.noise._packed_signs(key, shape)


# variant -> (module, attribute, replacement): the step with one workaround taken out
VARIANTS: dict[str, tuple[Any, str, Callable[..., Any]] | None] = {
    "as-is": None,
    "candidate-keys": (perturb, "candidate_keys", _vmapped_candidate_keys),
    "loop-keys": (estimators, "candidate_losses", _candidate_losses_over_keys),
    "draw-barrier": (perturb, "_draw", _draw_without_barrier),
}


def _step_config(preset: str) -> Any:
    if preset == SMALL:
        return zm.llama_config("tiny", vocab_size=4096, hidden_size=128, intermediate_size=256, num_layers=4)
    return zm.llama_config(preset)


def gv_step_seconds(
    variant: str, preset: str = "small", batch: tuple[int, int] = (4, 32), repeats: int = 15
) -> dict[str, float]:
    """Compile and (median) run seconds of a MeZO-GV (M = 4) :func:`zojax.jit_step` on a random Llama
    (``preset``; ``batch`` = (rows, tokens)) with on-the-fly perturbation, with ``variant``'s
    workaround taken out (in this process)."""
    patch = VARIANTS[variant]
    if patch is not None:
        setattr(*patch)
    cfg = _step_config(preset)
    model, params = zm.init_model(cfg, 0)
    ids = jax.random.randint(jax.random.key(3), batch, 0, cfg.vocab_size)
    mask = jnp.ones_like(ids)
    tx = zojax.mezo_gv(1e-3, num_candidates=4)
    state = tx.init(params)
    t = time.perf_counter()
    step = zojax.jit_step(tx, lambda: zm.next_token_loss(model, ids, mask)).lower(params, state).compile()
    compile_s = time.perf_counter() - t
    params, state, _ = jax.block_until_ready(step(params, state))
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        params, state, _ = jax.block_until_ready(step(params, state))
        seconds.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "run_s": statistics.median(seconds)}


def _gv_step_in_child(variant: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, "--preset", args.preset]
    cmd += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"compile_s": float("inf"), "run_s": float("inf")}
    return json.loads(out.stdout.strip().splitlines()[-1])


_AS_IS: dict[str, dict[str, float]] = {}


def check_step_variant(variant: str, args: argparse.Namespace, margin: float = 1.5) -> list[Row]:
    """The MeZO-GV step as is vs. with ``variant``'s workaround taken out, each in a subprocess
    (one that runs past ``args.timeout``, e.g. hangs, counts as infinitely slow)."""
    if "ours" not in _AS_IS:
        _AS_IS["ours"] = _gv_step_in_child("as-is", args)
    ours, plain = _AS_IS["ours"], _gv_step_in_child(variant, args)
    return [
        _row(variant, f"GV step compile s, without the {variant} workaround", ours["compile_s"],
             plain["compile_s"], margin, "s"),
        _row(variant, f"GV step run s, without the {variant} workaround", ours["run_s"], plain["run_s"], margin, "s"),
    ]  # fmt: skip


CHECKS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "compiler-options": lambda args: check_compiler_options(),
    "fold-in": lambda args: check_fold_in(),
    **{name: lambda args, name=name: check_step_variant(name, args) for name in VARIANTS if name != "as-is"},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(CHECKS)}")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for one step variant's process")
    ap.add_argument("--preset", default=SMALL, help=f"the GV step's model: {SMALL!r} or a llama_config preset")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--json", default="", help="also write the rows here")
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(gv_step_seconds(args.child, args.preset, (args.batch_size, args.seq_len))))
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        ap.error(f"--only: unknown {unknown}; choose from {list(CHECKS)}")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}", flush=True)
    rows = []
    for name in names:
        for row in CHECKS[name](args):
            rows.append(row)
            print(f"{row['check']:16s} {row['measure']:70s} workaround {row['workaround']:8.3g} "
                  f"alternative {row['alternative']:8.3g}  {row['verdict']}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
