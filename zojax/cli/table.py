"""``zojax table RUN_DIRS…``: MeZO's protocol over finished runs (lr by dev, test mean ± std)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def table_main(argv: Sequence[str] | None = None) -> int:
    """``zojax table RUN_DIRS…``: MeZO's protocol over finished runs (lr by dev, test mean ± std)."""
    from zojax import table as T

    p = argparse.ArgumentParser(
        prog="zojax table",
        description="Per task and method: the learning rate chosen by mean dev metric over seeds, test mean "
        "± std over seeds, forward passes and wall time; the paired comparison with MeZO.",
    )
    p.add_argument("runs", nargs="*", help="run directories or folders holding them (e.g. a sweep's out)")
    p.add_argument("--spec", action="append", default=[], metavar="SPEC",
                   help="only the cells of this sweep spec (repeatable), e.g. the table's spec when its folder "
                   "also holds a pilot's learning-rate grid")  # fmt: skip
    p.add_argument("--baseline", default=T.BASELINE, help="the row others are compared with (default MeZO)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the Markdown to FILE")
    p.add_argument("--plot", default=None, metavar="PNG", help="dev metric and training loss vs forward passes")
    args = p.parse_args(argv)
    if not args.runs and not args.spec:
        p.error("give run directories or --spec SPEC")
    runs = list(args.runs)
    try:
        for spec in args.spec:
            dirs, n = T.spec_runs(spec)
            print(f"[zojax table] {spec}: {len(dirs)} of {n} cells finished", file=sys.stderr)
            runs += dirs
        table = T.table_from_dirs(runs, args.baseline)
    except ValueError as e:
        p.error(str(e))
    md = T.markdown(table)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(T.to_json(table) + "\n")
    if args.plot:
        T.plot(table, args.plot)
        print(f"wrote {args.plot}")
    return 0
