r"""Planning a sweep (``zojax sweep --dry-run``): every cell resolved and checked, budgets, time.

Each cell's configuration is resolved and, once per distinct task split, its model name and data
are checked as a real run would. The report gives, per method, the forward passes of a run::

    forwards per run = steps × forwards per step       (one value per method when the budgets agree)

and, given seconds per forward pass ``t`` by task (``--forward-seconds`` or measured with
:func:`measure_forward_seconds`), the training time of the cells not yet done::

    Σ_cells steps × f × t,    f = forwards per step (ZO) or 3 (a first-order forward + backward)

Once some cells are done, the time they took (evaluation and compilation included) estimates the
others': a cell not yet done is expected to take the mean wall time of the finished cells of the
same task and method label (:func:`finished_wall_times`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zojax.sweep.spec import Cell, SweepSpec, cell_label, cell_status
from zojax.train import config as C
from zojax.train.report import read_results


@dataclasses.dataclass
class PlanRow:
    """What ``--dry-run`` prints for one cell."""

    cell: Cell
    steps: int
    forwards_per_step: int
    status: str
    est_seconds: float | None
    task: str = ""


def plan(spec: SweepSpec, check_data: bool = True, forward_seconds: Mapping[str, float] | None = None) -> list[PlanRow]:
    """Resolves every cell (raising ``ValueError`` naming the first bad one) and, with
    ``check_data``, loads each distinct task split once as a real run would.

    Args:
      spec: the sweep.
      check_data: check the model name and that every cell's data loads with a non-empty train split.
      forward_seconds: seconds per forward pass by task (for the time estimate).

    Returns:
      one row per cell.
    """
    rows = []
    checked: set[tuple] = set()
    for cell in spec.cells(pending_ok=True):
        try:
            cfg = cell.config(spec.out)
        except ValueError as e:
            raise ValueError(f"cell {cell.id}: {e}") from None
        if check_data:
            d = cfg.data
            key = (cfg.model.name, d.task, d.data_dir, cfg.run.seed, d.num_train, d.num_dev, d.num_test, cfg.training)
            if key not in checked:
                try:
                    check_cell_data(cfg)
                except ValueError as e:
                    raise ValueError(f"cell {cell.id}: {e}") from None
                checked.add(key)
        fps = cfg.forwards_per_step()
        est = None
        if forward_seconds is not None and cfg.data.task in forward_seconds:
            # a first-order step is a forward and a backward pass (about two forwards' work)
            per_step = fps if C.is_zo(cfg.optim.method) else 3
            est = cfg.optim.steps * per_step * forward_seconds[cfg.data.task]
        rows.append(PlanRow(cell, cfg.optim.steps, fps, cell_status(spec.out / cell.id), est, cfg.data.task))
    return rows


def finished_wall_times(out: Path) -> dict[tuple[str, str], list[float]]:
    """Wall times (seconds, evaluations included) of the finished cells under ``out``, by
    ``(task, method label)``."""
    times: dict[tuple[str, str], list[float]] = {}
    for run_dir in sorted(p.parent for p in Path(out).glob("*/results.json")):
        report, label = read_results(run_dir), cell_label(run_dir)
        if report is not None and label is not None and isinstance(report.get("wall_time"), int | float):
            times.setdefault((report.get("task", ""), label), []).append(float(report["wall_time"]))
    return times


def expected_seconds(
    times: Mapping[tuple[str, str], Sequence[float]],
    task: str,
    label: str,
    statistic: Callable[[Sequence[float]], float] = statistics.fmean,
) -> float | None:
    """The mean (or another ``statistic``: ``min`` for the fastest) wall time of the finished cells of
    ``task`` and ``label`` (``None`` without one)."""
    done = times.get((task, label))
    return statistic(done) if done else None


def check_cell_data(cfg: C.TrainConfig) -> None:
    """What a real run would reject before training: the model name and the task's splits."""
    from zojax.tasks import TaskDataMissingError, get_task
    from zojax.train.models import check_model_name

    check_model_name(cfg.model.name)
    d = cfg.data
    try:
        raw = _raw_data(d.task, d.data_dir)
        splits = get_task(d.task).splits(
            seed=cfg.run.seed, num_train=d.num_train, num_dev=d.num_dev, num_test=d.num_test, raw=raw
        )
    except TaskDataMissingError as e:
        raise ValueError(f"--task: {e}") from None
    if cfg.training and len(splits.train) == 0:
        raise ValueError(f"--task: {d.task} has an empty training split")


@functools.lru_cache(maxsize=16)
def _raw_data(task: str, data_dir: str | None) -> Any:
    """A task's raw rows, read once per process (a dry run checks many cells of the same task)."""
    from zojax.tasks import get_task

    return get_task(task).load_raw(data_dir)


def budgets(rows: Iterable[PlanRow]) -> dict[str, set[int]]:
    """Forward passes per run by method label (a set: one value when every cell agrees)."""
    out: dict[str, set[int]] = {}
    for r in rows:
        out.setdefault(r.cell.label, set()).add(r.steps * r.forwards_per_step)
    return out


def describe_plan(spec: SweepSpec, rows: Sequence[PlanRow]) -> str:
    """The ``--dry-run`` report: cell count, per-method budgets and steps, the learning rates chosen by
    pilots (``lr_from``), status, time estimate."""
    lines = [f"sweep {spec.name}: {len(rows)} cells in {spec.out}"]
    by_label: dict[str, list[PlanRow]] = {}
    for r in rows:
        by_label.setdefault(r.cell.label, []).append(r)
    for label, rs in by_label.items():
        fw = sorted({r.steps * r.forwards_per_step for r in rs})
        steps = sorted({r.steps for r in rs})
        fps = sorted({r.forwards_per_step for r in rs})
        lines.append(
            f"  {label}: {len(rs)} cells, {'/'.join(map(str, steps))} steps x {'/'.join(map(str, fps))} "
            f"forwards/step = {'/'.join(map(str, fw))} forward passes per run"
        )
    lines += [f"  {choice.describe()}" for choice in spec.lr_choices().values()]
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "started", "new")}
    lines.append(f"  status: {counts['done']} done, {counts['started']} started, {counts['new']} new")
    est = [r.est_seconds for r in rows if r.status != "done"]
    if est and all(e is not None for e in est):
        total = sum(e for e in est if e is not None)
        lines.append(
            f"  estimated training time of the remaining cells: {total / 3600:.1f} h "
            "(forward passes x seconds per forward pass, a first-order step as 3; evaluation and compilation "
            "not included)"
        )
    remaining = [r for r in rows if r.status != "done"]
    times = finished_wall_times(spec.out)
    expected = [expected_seconds(times, r.task, r.cell.label) for r in remaining]
    known = [e for e in expected if e is not None]
    if remaining and known:
        fastest = sum(e for r in remaining if (e := expected_seconds(times, r.task, r.cell.label, min)) is not None)
        lines.append(
            f"  measured: {format_seconds(sum(known))} for {len(known)} of the {len(remaining)} remaining cells, "
            "at the mean wall time of the finished cells of the same task and method (evaluation included); "
            f"{format_seconds(fastest)} at the fastest of them (a CPU shared while they ran slows the mean)"
            + ("" if len(known) == len(remaining) else f"; {len(remaining) - len(known)} have no finished twin yet")
        )
    return "\n".join(lines)


def measure_forward_seconds(spec: SweepSpec, repeats: int = 3) -> dict[str, float]:
    """Seconds of one training-shaped forward pass per task of the sweep (the median of ``repeats``
    after a compiling call), on this machine with the spec's model."""
    import statistics

    import jax

    from zojax.tasks import get_task
    from zojax.train.data import TrainBatches
    from zojax.train.models import build_model

    out: dict[str, float] = {}
    models: dict[tuple[str, str], Any] = {}
    for cell in spec.cells(pending_ok=True):
        cfg = cell.config(spec.out)
        if cfg.data.task in out or not cfg.training:
            continue
        key = (cfg.model.name, cfg.model.dtype)
        if key not in models:
            models[key] = build_model(*key)
        model, params = models[key]
        task = get_task(cfg.data.task)
        d = cfg.data
        splits = task.splits(seed=cfg.run.seed, num_train=d.num_train, num_dev=d.num_dev, num_test=d.num_test,
                             data_dir=d.data_dir)  # fmt: skip
        data = TrainBatches(task, splits.train.examples, model.tokenizer, cfg.optim.batch_size, 0, d.max_length,
                            d.max_new_tokens)  # fmt: skip
        batch = data.batch(0)
        fn = jax.jit(functools.partial(_loss_value, model, task.objective))
        jax.block_until_ready(fn(params, batch))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, batch))
            times.append(time.perf_counter() - t0)
        out[cfg.data.task] = statistics.median(times)
    return out


def _loss_value(model: Any, objective: str, params: Any, batch: Mapping[str, Any]) -> Any:
    from zojax.train.loss import task_loss

    return task_loss(model, objective, batch)(params)


def format_seconds(s: float) -> str:
    """``1h02m`` / ``3m05s`` / ``12s``."""
    if not math.isfinite(s):
        return "?"
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.0f}s"


__all__ = [
    "PlanRow",
    "budgets",
    "check_cell_data",
    "describe_plan",
    "expected_seconds",
    "finished_wall_times",
    "format_seconds",
    "measure_forward_seconds",
    "plan",
]
