"""Where a zeroth-order step's time goes: the forward, the perturbation inside it, the update.

For a random-weight model of a real shape, times in one process, interleaved round by round (so
all parts see the same machine load):

* ``forward``: the jitted loss ``L(θ)``;
* ``perturbed_forward``: ``L(θ + εv)`` with the noise drawn inside the layer scan (the estimators'
  path); minus ``forward`` it is what one perturbation costs a forward pass;
* ``update``: ``θ ← θ − c·v`` with the noise drawn again, parameters donated (what the optimizer's
  update costs);

for each ``--distribution`` and a direction of ``--keys`` candidate keys (1: MeZO; M: a guiding
vector over M candidates). From these it prints the MeZO step predicted from its parts,
``(2·perturbed_forward + update) / (2·forward)``, to compare with ``bench.py``'s measured ratio.

Usage::

    python experiments/bench_draws.py --model smollm2-135m --batch-size 16 --seq-len 64 \
        --distribution gaussian,rademacher --json results/bench_draws.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

import zojax.models as zm
from zojax import perturb
from zojax.step import ZO_COMPILER_OPTIONS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import device_description, make_batch, model_config, write_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--distribution", default="gaussian,rademacher", help="comma separated")
    ap.add_argument("--keys", type=int, default=1, help="candidate keys in the direction (1: MeZO)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    dists = [d.strip() for d in args.distribution.split(",") if d.strip()]
    for d in dists:
        if d not in perturb.DISTRIBUTIONS:
            ap.error(f"--distribution: {d!r} is not one of {perturb.DISTRIBUTIONS}")

    config = model_config(args.model)
    model, params = zm.init_model(config, 0)
    batch = make_batch(config, args.batch_size, args.seq_len, 1)
    loss = zm.next_token_loss(model, batch["input_ids"], batch["attention_mask"])

    def direction(key: jax.Array, dist: str) -> perturb.Direction:
        keys = perturb.candidate_keys(key, args.keys)
        return perturb.Direction(keys, jnp.full((args.keys,), 1.0 / args.keys, jnp.float32), dist)

    def compile_(fn: Any, donate: bool = False) -> Any:
        jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
        return jitted.lower(params, perturb.key_data(0)).compile(compiler_options=ZO_COMPILER_OPTIONS)

    parts: dict[str, Any] = {"forward": compile_(lambda p, k: loss(p))}
    for d in dists:
        parts[f"perturbed_forward/{d}"] = compile_(lambda p, k, d=d: loss.perturbed(p, direction(k, d), 1e-3))
        parts[f"update/{d}"] = compile_(lambda p, k, d=d: perturb.perturb(p, direction(k, d), -1e-6), donate=True)
    print(f"{args.model}, batch {args.batch_size} x {args.seq_len}, keys {args.keys}: compiled", file=sys.stderr)

    times: dict[str, list[float]] = {name: [] for name in parts}
    for r in range(args.repeats + 1):  # round 0 warms up
        for name, fn in parts.items():
            t = time.perf_counter()
            out = jax.block_until_ready(fn(params, perturb.key_data(r)))
            dt = time.perf_counter() - t
            if name.startswith("update/"):
                params = out  # the donated input is gone; carry on from the update
            if r:
                times[name].append(dt)
        print(f"  round {r}/{args.repeats}", file=sys.stderr, flush=True)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    fwd = med["forward"]
    rows = []
    print(
        "\n| noise | forward (s) | perturbed forward (s) | perturbation / forward | update (s) "
        "| predicted MeZO step / 2 forwards |"
    )
    print("|---|---|---|---|---|---|")
    for d in dists:
        pf, up = med[f"perturbed_forward/{d}"], med[f"update/{d}"]
        row = {
            "model": args.model,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "keys": args.keys,
            "distribution": d,
            "forward_s": fwd,
            "perturbed_forward_s": pf,
            "perturbation_over_forward": (pf - fwd) / fwd,
            "update_s": up,
            "predicted_mezo_step_over_forwards": (2 * pf + up) / (2 * fwd),
            "repeat_seconds": {k: v for k, v in times.items() if k == "forward" or k.endswith(d)},
            "device": device_description(),
            "jax": jax.__version__,
        }
        rows.append(row)
        print(
            f"| {d} | {fwd:.3f} | {pf:.3f} | {row['perturbation_over_forward']:.3f} | {up:.3f} | "
            f"{row['predicted_mezo_step_over_forwards']:.3f} |"
        )
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
