"""Zero-shot (or ICL) baseline on the MeZO benchmark with MeZO's protocol.

Example::

    python experiments/zero_shot.py --tasks sst2,rte,cb --num-test 200 --out results/zero_shot.json

For each task: MeZO's seeded test sample (``--num-test`` of the validation split, all of it when
smaller; carved from validation for SQuAD and ReCoRD offline, which the output records, as it
records the notes of partial files such as the DROP and BoolQ subsets), candidate scoring by mean
option log-prob (accuracy) or greedy generation (F1, SQuAD/DROP; ``--stop-rule``). Tasks whose data
is missing are reported as skipped with the reason. ``--num-demos 32`` gives MeZO's ICL baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax

from zojax.tasks import TASKS, TaskDataMissingError, evaluate, get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="zojax.models.load_model name")
    ap.add_argument("--num-test", type=int, default=1000, help="test examples/task (MeZO 1000)")
    ap.add_argument("--num-demos", type=int, default=0, help="ICL demonstrations (MeZO ICL: 32)")
    ap.add_argument("--seed", type=int, default=0, help="MeZO train_set_seed")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument(
        "--stop-rule",
        default="text",
        choices=["text", "mezo"],
        help="generation stop: text = first decoded newline (default); mezo = MeZO's exact "
        "newline token id or EOS, text kept whole",
    )
    ap.add_argument("--token-budget", type=int, default=4096, help="tokens per scoring forward")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="results/zero_shot.json")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every requested task; returns the JSON-able report."""
    from zojax.models import load_model

    t0 = time.perf_counter()
    model, params = load_model(args.model)
    load_s = time.perf_counter() - t0
    tok = model.tokenizer

    def generate_fn(prompts: list[list[int]]) -> list[list[int]]:
        return model.generate_batch(
            params, prompts, max_new_tokens=args.max_new_tokens, stop_strings=("\n",), stop_rule=args.stop_rule
        )

    report: dict[str, Any] = {
        "model": args.model,
        "num_demos": args.num_demos,
        "num_test_requested": args.num_test,
        "seed": args.seed,
        "max_length": args.max_length,
        "stop_rule": args.stop_rule,
        "protocol": "MeZO: test = RandomState(seed).permutation(validation)[:num_test]; candidate "
        "score = mean option-token log-prob (no calibration); generation = greedy, <=50 tokens, "
        "stop at newline (stop_rule), SQuAD F1 (max over the acceptable answers)",
        "machine": {"platform": platform.platform(), "jax_devices": [str(d) for d in jax.devices()]},
        "model_load_seconds": round(load_s, 1),
        "tasks": {},
    }
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = get_task(name)
        try:
            splits = task.splits(seed=args.seed, num_test=args.num_test, data_dir=args.data_dir)
        except TaskDataMissingError as e:
            print(f"[{name}] skipped: {e}", file=sys.stderr)
            report["tasks"][name] = {"skipped": str(e)}
            continue
        test = splits.test.examples
        res = evaluate(
            task,
            test,
            tok,
            logits_fn=model.logits,
            params=params,
            generate_fn=generate_fn,
            num_demos=args.num_demos,
            demo_pool=splits.train_pool,
            max_length=args.max_length,
            progress=not args.no_progress,
            stop_rule=args.stop_rule,
            **({"max_new_tokens": args.max_new_tokens} if task.generation else {"token_budget": args.token_budget}),
        )
        entry = {
            "metric": res.metric,
            "value": res.value,
            "n": res.n,
            "source": splits.meta["source"],
            "carved_from_validation": splits.meta["carved_from_validation"],
            "validation_size": splits.meta["validation_size"],
            "notes": splits.meta["notes"],
            "stats": {k: round(v, 3) for k, v in res.stats.items()},
        }
        report["tasks"][name] = entry
        print(
            f"[{name}] {res.metric} = {100 * res.value:.1f} on {res.n} test examples "
            f"({res.stats['seconds']:.1f}s, {res.stats.get('examples_per_s', 0):.2f} ex/s)"
            + (" [carved from validation]" if entry["carved_from_validation"] else "")
        )
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point: run and write ``--out``."""
    args = parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
