"""``python -m zojax.tasks`` (``zojax tasks``): every task with its data source and split sizes."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from zojax.tasks.data import TaskDataMissingError, candidate_data_dirs, resolve_data_dir
from zojax.tasks.registry import TASKS


def main(argv: list[str] | None = None, prog: str = "python -m zojax.tasks") -> int:
    """Print one row per task (see :func:`list_tasks`); ``zojax tasks`` caches the listing."""
    from zojax.cli.info import tasks_parser

    status, _ = list_tasks(tasks_parser(prog).parse_args(argv), sys.stdout)
    return status


def list_tasks(args: argparse.Namespace, out: TextIO) -> tuple[int, bool]:
    """Writes one row per task to ``out``: kind, metric, objective, the data's sizes, the split sizes
    of ``zojax finetune``'s default protocol and of MeZO's (``--protocol mezo``), the source.

    Returns:
      ``(exit status, complete)``: complete when every task's data was read from local files.
    """
    from zojax.train.config import PROTOCOL_SIZES  # no JAX: the protocols' sizes

    def say(line: str = "") -> None:
        out.write(line + "\n")

    base = resolve_data_dir(args.data_dir)
    searched = ", ".join(str(p) for p in candidate_data_dirs(args.data_dir))
    say(f"data dir: {base if base else 'none found (searched ' + searched + ')'}")
    sizes = "{:>5} {:>4} {:>5}"
    left = f"{'':48} {'data rows':^17}"
    head = (
        f"{'task':8} {'kind':15} {'metric':8} {'objective':14} {'train pool':>10} {'valid':>6}   "
        f"{sizes.format('train', 'dev', 'test')}   {sizes.format('train', 'dev', 'test')}  source"
    )
    say(f"{left}   {'--protocol quick':^16}   {'--protocol mezo':^16}".rstrip())
    say(f"{'':48} {'':17}   {'(the default)':^16}   {'(MeZO)':^16}".rstrip())
    say(head)
    say("-" * len(head))
    notes: list[str] = []
    missing = 0
    local = True
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
            say(row + f"{'-':>10} {'-':>6}   {sizes.format('-', '-', '-')}   {sizes.format('-', '-', '-')}  MISSING")
            notes.append(str(e) if args.verbose else f"{name}: {str(e).split('. Expected')[0]}")
            continue
        m = by_protocol["mezo"].meta
        local = local and not str(m["source"]).startswith("hub")
        src = m["source"] + (" [carved from validation]" if m["carved_from_validation"] else "")
        cells = [sizes.format(len(s.train), len(s.dev), len(s.test)) for s in by_protocol.values()]
        say(row + f"{m['train_pool_size']:>10} {m['validation_size']:>6}   {'   '.join(cells)}  {src}")
        notes.extend(m["notes"])
    if notes:
        say("\nnotes:")
        for n in notes:
            say(f"  - {n}")
    say(f"\n{len(TASKS) - missing}/{len(TASKS)} tasks available (seed {args.seed}).")
    return 0, missing == 0 and local


if __name__ == "__main__":
    sys.exit(main())
