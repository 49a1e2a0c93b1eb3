"""``zojax sweep SPEC``: run (or check, or print) the cells of a sweep spec."""

from __future__ import annotations

import argparse
import re
import signal
from collections.abc import Sequence

from zojax.train import config as C


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``5400``, ``90m``, ``1h30m``, ``2h``, ``45s`` (``ValueError`` otherwise)."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError(f"--drain-after: expected a duration such as 5400, 90m, 1h30m or 2h, got {text!r}")
    h, mins, sec = (float(g) if g else 0.0 for g in m.groups())
    return 3600 * h + 60 * mins + sec


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``zojax sweep SPEC``: run (or check, or print) the cells of a sweep spec."""
    from zojax import sweep as S

    p = argparse.ArgumentParser(
        prog="zojax sweep",
        description="Run the cells of a sweep spec (TOML/JSON; see zojax.sweep) as zojax finetune runs, "
        "each in its own run directory. Resumable: finished cells are skipped, started ones resume "
        "from their checkpoint.",
    )
    p.add_argument("spec", help="the spec file (or a folder holding one)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every cell (options and data) and print the cell count, each method's "
                   "forward budget, and a time estimate")  # fmt: skip
    p.add_argument("--measure", action="store_true",
                   help="with --dry-run: time one training-shaped forward pass per task on this machine "
                   "(loads the model) for the estimate")  # fmt: skip
    p.add_argument("--forward-seconds", type=float, default=None, metavar="S",
                   help="with --dry-run: seconds per forward pass for the estimate (instead of --measure)")  # fmt: skip
    p.add_argument("--print-commands", action="store_true",
                   help="print one zojax finetune line per unfinished cell (for SLURM arrays, GNU parallel, "
                   "or a pod's hosts) and exit")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="cells run at once (default 1)")
    p.add_argument("--drain-after", default=None, metavar="DURATION",
                   help="after DURATION (5400, 90m, 1h30m) start no new cell; the running ones finish (for "
                   "a job or machine whose time ends before the sweep: no cell is left half-run). "
                   "SIGUSR1 drains at once")  # fmt: skip
    p.add_argument("--only", action="append", default=None, metavar="TEXT",
                   help="only cells whose id contains TEXT (repeat it for several: any of them)")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args, extra = p.parse_known_args(argv)
    try:
        drain_after = None if args.drain_after is None else parse_duration(args.drain_after)
        spec = S.load_spec(args.spec).with_pilot_choices()  # one reading of the pilots for the whole run
        only = args.only or [""]
        cells = [c for c in spec.cells(pending_ok=args.dry_run) if any(t in c.id for t in only)]
        if args.print_commands:
            for c in cells:
                if S.cell_status(spec.out / c.id) != "done":
                    argv_c = S.finetune_argv(c.config(spec.out))
                    if S.cell_status(spec.out / c.id) == "started":
                        argv_c.append("--resume")
                    print(S.shell_line(argv_c + extra))
            return 0
        if args.dry_run:
            fwd = None
            if args.forward_seconds is not None:
                fwd = {c.options.get("data.task", C.DataArgs().task): args.forward_seconds for c in cells}
            elif args.measure:
                fwd = S.measure_forward_seconds(spec)
                for task, sec in fwd.items():
                    print(f"measured forward pass: {task} {sec:.3f} s")
            ids = {c.id for c in cells}
            rows = [r for r in S.plan(spec, forward_seconds=fwd) if r.cell.id in ids]
            print(S.describe_plan(spec, rows))
            return 0
    except ValueError as e:
        p.error(str(e))
    for choice in spec.lr_choices().values():
        print(f"[zojax sweep] {spec.name}: {choice.describe()}", flush=True)
    runner = S.SweepRunner(spec, jobs=args.jobs, extra_args=extra, progress=args.progress, drain_after=drain_after)
    result = runner.run(cells)
    failed = {k: v for k, v in result.items() if v.startswith("failed")}
    counts = {s: sum(v == s for v in result.values()) for s in ("done", "skipped", "interrupted", "not started")}
    print(
        f"[zojax sweep] {spec.name}: {counts['done']} done now, {counts['skipped']} already done, "
        f"{counts['interrupted']} interrupted, {counts['not started']} not started, {len(failed)} failed"
    )
    for k, v in failed.items():
        print(f"[zojax sweep] {k}: {v}")
    if runner.drained and counts["not started"]:
        print(f"[zojax sweep] {spec.name}: drained; run it again to start the other {counts['not started']} cell(s)")
    if counts["interrupted"] or counts["not started"]:
        return 128 + signal.SIGTERM
    return 1 if failed else 0
