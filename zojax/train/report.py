r"""What a run tells its user: the opening description, the final report (``results.json``), the
closing summary lines."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zojax.train.config import TrainConfig


def size_notes(config: TrainConfig, sizes: Mapping[str, int]) -> list[str]:
    """Notes for splits smaller than requested (a small train pool or validation split)."""
    d = config.data
    notes = []
    for split, asked in (("train", d.num_train), ("dev", d.num_dev), ("test", d.num_test)):
        if asked is not None and sizes[split] < asked:
            notes.append(f"{split} has {sizes[split]} examples, fewer than the {asked} asked for (all the data allows)")
    return notes


def precision_line(config: TrainConfig) -> str:
    """How the weights are stored, computed and updated (``--dtype``, ``--master-weights``,
    ``--update-rounding``)."""
    m, o = config.model, config.optim
    if m.dtype == "float32":
        return "precision: float32"
    if m.master_weights:
        return "precision: float32 master weights, bfloat16 compute"
    return f"precision: bfloat16 weights and compute, {o.update_rounding} rounding of updates"


def precision_warning(config: TrainConfig, changed: float) -> str:
    """The warning printed when most of a low-precision step's updates rounded away."""
    return (
        f"[zojax] warning: only {changed:.1%} of the weights changed in the first step: at lr "
        f"{config.optim.lr:g} most updates are below half a bfloat16 ulp and round away; use "
        "--update-rounding stochastic or --master-weights"
    )


def describe(
    config: TrainConfig,
    splits: Any,
    model_desc: str,
    fps: int,
    data: Any,
    run_dir: Path,
    placement_line: str | None = None,
) -> list[str]:
    """The lines printed when a run starts: task, model, budget, notes, run directory."""
    c = config
    lines = [
        f"[zojax] {c.optim.method} on {splits.meta['display']} ({splits.describe()}), model "
        f"{model_desc}, tuning {c.model.tuning}",
    ]
    if c.training:
        lines.append(
            f"[zojax] {c.optim.steps} steps x {fps} forwards/step = "
            f"{c.optim.steps * fps} forward passes; batch {c.optim.batch_size}, "
            f"lr {c.optim.lr:g}, eps {c.optim.eps:g}, train seq len {data.seq_len}"
            + (f" ({data.truncated} sequences truncated)" if data.truncated else "")
        )
        if c.optim.objective != "task":
            what = {"accuracy": "minus the batch accuracy", "f1": "minus the mean F1 of greedy answers"}
            lines.append(
                f"[zojax] objective: {what[c.optim.objective]} (--objective {c.optim.objective}; "
                "dev selection by the metric)"
            )
        if c.optim.perturbation == "subspace":
            lines.append(
                f"[zojax] noise: SubZero's rank-{c.optim.rank} subspaces (U Z V^T on every matrix, i.i.d. on "
                f"vectors), a new subspace every {c.optim.refresh_every} steps (--perturbation subspace)"
            )
    if placement_line or c.model.dtype != "float32":
        lines.append(f"[zojax] {'; '.join(filter(None, [precision_line(c), placement_line]))}")
    for note in [*splits.meta.get("notes", []), *size_notes(c, splits.meta["sizes"])]:
        lines.append(f"[zojax] note: {note}")
    lines.append(f"[zojax] run dir: {run_dir}")
    return lines


def final_report(
    config: TrainConfig, job: Any, state: Any, run_dir: Path, selected_step: int, test: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What ``results.json`` holds: the run, its budget, the dev evaluations, the selected step and the test."""
    c, total, fps = config, config.optim.steps, job.forwards_per_step
    return {
        "status": "done",
        "run_dir": str(run_dir),
        "task": c.data.task,
        "method": c.optim.method,
        "tuning": c.model.tuning,
        "model": job.model_desc,
        "steps": total,
        "forwards_per_step": fps,
        "forwards": total * fps,
        "dev_before": state.dev_before,
        "dev_after": state.last_dev,
        "best": state.best,
        "selected_step": selected_step,
        "test": test,
        "splits": job.splits.meta,
        "wall_time": state.wall(),
    }


def write_results(run_dir: Path, report: Mapping[str, Any]) -> None:
    """Writes ``<run_dir>/results.json`` atomically."""
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, run_dir / "results.json")


def read_results(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The report of a finished run: ``<run_dir>/results.json`` when its status is ``done``; ``None``
    when the run is absent, unfinished (stopped, failed) or its file unreadable."""
    try:
        report = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("status") == "done" else None


def summary(report: Mapping[str, Any], training: bool, run_dir: Path) -> list[str]:
    """The closing lines: dev before/after, the selected step, the test metric."""

    def pct(d: Mapping[str, Any] | None) -> str:
        return "-" if not d else f"{100 * d['value']:.1f}%"

    r = report
    metric = (r["test"] or r["dev_after"] or r["dev_before"] or {"metric": "metric"})["metric"]
    lines = [
        f"[zojax] ===== {r['method']} / {r['task']} / {r['tuning']}: {r['steps']} steps, "
        f"{r['forwards']} forward passes, {r['wall_time']:.0f}s ====="
    ]
    if training:
        lines.append(f"[zojax] dev {metric} before: {pct(r['dev_before'])}   after: {pct(r['dev_after'])}")
        if r["best"] is not None:
            lines.append(f"[zojax] best dev ({r['best']['select_by']}) at step {r['best']['step']}")
    elif r["dev_after"]:
        lines.append(f"[zojax] dev {metric}: {pct(r['dev_after'])}")
    if r["test"] is not None:
        lines.append(
            f"[zojax] test {metric} (params of step {r['selected_step']}): "
            f"{pct(r['test'])} on {r['test']['n']} examples"
        )
    lines.append(f"[zojax] results: {run_dir / 'results.json'}")
    return lines
