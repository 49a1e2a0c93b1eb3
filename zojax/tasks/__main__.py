"""``python -m zojax.tasks`` (``zojax tasks``): every task with its data source and split sizes."""

from __future__ import annotations

import argparse
import sys

from zojax.tasks.data import TaskDataMissingError, candidate_data_dirs, resolve_data_dir
from zojax.tasks.registry import TASKS


def main(argv: list[str] | None = None, prog: str = "python -m zojax.tasks") -> int:
    """Print one row per task: kind, metric, objective, the data's sizes, the split sizes of
    ``zojax finetune``'s default protocol and of MeZO's (``--protocol mezo``), the source."""
    from zojax.train.config import PROTOCOL_SIZES  # no JAX: the protocols' sizes

    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    ap.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default: $ZOJAX_DATA_DIR, ./../shared/data, <repo>/../shared/data)",
    )
    ap.add_argument("--source", default="auto", choices=["auto", "local", "hub"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print full errors and notes")
    args = ap.parse_args(argv)

    base = resolve_data_dir(args.data_dir)
    searched = ", ".join(str(p) for p in candidate_data_dirs(args.data_dir))
    print(f"data dir: {base if base else 'none found (searched ' + searched + ')'}")
    sizes = "{:>5} {:>4} {:>5}"
    left = f"{'':48} {'data rows':^17}"
    head = (
        f"{'task':8} {'kind':15} {'metric':8} {'objective':14} {'train pool':>10} {'valid':>6}   "
        f"{sizes.format('train', 'dev', 'test')}   {sizes.format('train', 'dev', 'test')}  source"
    )
    print(f"{left}   {'--protocol quick':^16}   {'--protocol mezo':^16}".rstrip())
    print(f"{'':48} {'':17}   {'(the default)':^16}   {'(MeZO)':^16}".rstrip())
    print(head)
    print("-" * len(head))
    notes: list[str] = []
    missing = 0
    for name, task in TASKS.items():
        row = f"{name:8} {task.kind:15} {task.metric:8} {task.objective:14} "
        try:
            raw = task.load_raw(args.data_dir, args.source)
            by_protocol = {
                p: task.splits(args.seed, s["num_train"], s["num_dev"], s["num_test"], raw=raw)
                for p, s in PROTOCOL_SIZES.items()
            }
        except TaskDataMissingError as e:
            missing += 1
            print(row + f"{'-':>10} {'-':>6}   {sizes.format('-', '-', '-')}   {sizes.format('-', '-', '-')}  MISSING")
            notes.append(str(e) if args.verbose else f"{name}: {str(e).split('. Expected')[0]}")
            continue
        m = by_protocol["mezo"].meta
        src = m["source"] + (" [carved from validation]" if m["carved_from_validation"] else "")
        cells = [sizes.format(len(s.train), len(s.dev), len(s.test)) for s in by_protocol.values()]
        print(row + f"{m['train_pool_size']:>10} {m['validation_size']:>6}   {'   '.join(cells)}  {src}")
        notes.extend(m["notes"])
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  - {n}")
    print(f"\n{len(TASKS) - missing}/{len(TASKS)} tasks available (seed {args.seed}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
