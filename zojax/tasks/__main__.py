"""``python -m zojax.tasks``: list every task with its data source and split sizes."""

from __future__ import annotations

import argparse
import sys

from zojax.tasks.data import TaskDataMissingError, candidate_data_dirs, resolve_data_dir
from zojax.tasks.registry import TASKS


def main(argv: list[str] | None = None) -> int:
    """Print one row per task: kind, metric, objective, source, pool sizes, MeZO split sizes."""
    ap = argparse.ArgumentParser(prog="python -m zojax.tasks", description=__doc__)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $ZOJAX_DATA_DIR, "
                    "./../shared/data, <repo>/../shared/data)")
    ap.add_argument("--source", default="auto", choices=["auto", "local", "hub"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print full errors and notes")
    args = ap.parse_args(argv)

    base = resolve_data_dir(args.data_dir)
    searched = ", ".join(str(p) for p in candidate_data_dirs(args.data_dir))
    print(f"data dir: {base if base else 'none found (searched ' + searched + ')'}")
    head = (f"{'task':8} {'kind':15} {'metric':8} {'objective':14} {'train pool':>10} "
            f"{'valid':>6} {'train':>5} {'dev':>4} {'test':>5}  source")
    print(head)
    print("-" * len(head))
    notes: list[str] = []
    missing = 0
    for name, task in TASKS.items():
        row = f"{name:8} {task.kind:15} {task.metric:8} {task.objective:14} "
        try:
            s = task.splits(seed=args.seed, data_dir=args.data_dir, source=args.source)
        except TaskDataMissingError as e:
            missing += 1
            print(row + f"{'-':>10} {'-':>6} {'-':>5} {'-':>4} {'-':>5}  MISSING")
            notes.append(str(e) if args.verbose else f"{name}: {str(e).split('. Expected')[0]}")
            continue
        m = s.meta
        src = m["source"] + (" [carved from validation]" if m["carved_from_validation"] else "")
        print(row + f"{m['train_pool_size']:>10} {m['validation_size']:>6} {len(s.train):>5} "
              f"{len(s.dev):>4} {len(s.test):>5}  {src}")
        notes.extend(m["notes"])
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  - {n}")
    print(f"\n{len(TASKS) - missing}/{len(TASKS)} tasks available (seed {args.seed}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
