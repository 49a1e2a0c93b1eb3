r"""Sweeps: a grid of ordinary ``zojax finetune`` runs described by one spec file.

A spec (TOML or JSON) names a root folder, the options every cell shares, the grid axes, and the
methods, each with its own options and learning-rate grid::

    name = "demo"
    out = "runs/sweeps/demo"          # each cell runs in <out>/<cell id>
    cleanup_checkpoints = true        # delete a finished cell's checkpoints (keep logs, results)

    [base]                            # "section.field" of TrainConfig (or nested tables)
    "model.name" = "smollm2-135m-instruct"
    "optim.forward_budget" = 1200     # every ZO method gets the same forward passes

    [grid]                            # the cartesian product of these lists
    "data.task" = ["sst2", "copa"]
    "run.seed" = [0, 1, 2]

    [[methods]]                       # one entry per row of the final table
    label = "MeZO"
    "optim.method" = "mezo"
    "optim.lr" = [1e-6, 1e-5]         # a list in a method entry is one more grid axis

A cell is ``base ∪ grid values ∪ method options`` (later ones win; a method that sets
``optim.steps`` drops the base's ``optim.forward_budget`` and vice versa), run as an ordinary
trainer run in its own directory. The sweep is resumable: a cell whose ``results.json`` says
``done`` is skipped, one that started resumes from its checkpoint (``--resume``), and the others
start. Each cell directory also holds ``sweep_cell.json`` (the sweep name, the method label and
the cell's axis values), which ``zojax table`` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zojax.train import config as C

CELL_FILE = "sweep_cell.json"
_SHORT = {"data.task": "task", "optim.method": "method", "run.seed": "seed", "optim.lr": "lr"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
      id: the cell's folder name (from its axis values).
      label: the method's label (a row of the table).
      axes: the cell's grid values (``{"data.task": "sst2", "run.seed": 0, "optim.lr": 1e-6, ...}``).
      options: every option the cell sets (``"section.field" -> value``).
    """

    id: str
    label: str
    axes: dict[str, Any]
    options: dict[str, Any]

    def config(self, out: Path) -> C.TrainConfig:
        """The cell's resolved configuration, running in ``out / id``."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in {**self.options, "run.out": str(out / self.id)}.items():
            section, field = key.split(".", 1)
            nested.setdefault(section, {})[field] = list(value) if isinstance(value, tuple) else value
        return C.from_dict(nested).resolve()


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec (see the module docstring).

    Attributes:
      name: the sweep's name.
      out: the root folder of the cells.
      base: options every cell shares.
      grid: axes whose cartesian product every method runs.
      methods: ``(label, options)`` per method; list-valued options are further axes.
      cleanup_checkpoints: delete a finished cell's checkpoints.
      path: the file it was read from.
    """

    name: str
    out: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    methods: tuple[tuple[str, dict[str, Any]], ...]
    cleanup_checkpoints: bool = True
    path: Path | None = None

    def cells(self) -> list[Cell]:
        """Every cell, in a stable order (grid axes outermost, then methods and their axes)."""
        out = []
        axes = list(self.grid)
        for values in itertools.product(*(self.grid[a] for a in axes)):
            point = dict(zip(axes, values, strict=True))
            for label, options in self.methods:
                fixed = {k: v for k, v in options.items() if not isinstance(v, list)}
                listed = {k: v for k, v in options.items() if isinstance(v, list)}
                for mvalues in itertools.product(*listed.values()):
                    mpoint = dict(zip(listed, mvalues, strict=True))
                    base = dict(self.base)
                    own = {**fixed, **mpoint}
                    if "optim.steps" in own:
                        base.pop("optim.forward_budget", None)
                    if "optim.forward_budget" in own:
                        base.pop("optim.steps", None)
                    options_all = {**base, **point, **own}
                    cell_axes = {**point, **mpoint}
                    out.append(Cell(cell_id(label, cell_axes), label, cell_axes, options_all))
        ids = [c.id for c in out]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"sweep {self.name}: cells share ids {sorted(dup)}; give the methods distinct labels")
        return out


def cell_id(label: str, axes: Mapping[str, Any]) -> str:
    """A readable, path-safe folder name: ``task-sst2_MeZO_lr-1e-06_seed-0``."""
    parts = []
    for key in sorted(axes, key=lambda k: (k != "data.task", k == "run.seed", k)):
        name = _SHORT.get(key, key.split(".", 1)[1])
        value = axes[key]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{name}-{text}")
        if key == "data.task":
            parts.append(label)
    if "data.task" not in axes:
        parts.insert(0, label)
    return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_keys(where: str, options: Mapping[str, Any]) -> None:
    known = set(C.flat_items(C.TrainConfig()))
    for key in options:
        if key not in known:
            raise ValueError(
                f"{where}: unknown option {key!r} (options are TrainConfig's 'section.field', e.g. 'optim.lr')"
            )


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Reads a ``.toml`` or ``.json`` spec; raises ``ValueError`` naming what is wrong."""
    p = Path(path)
    if p.is_dir():
        candidates = sorted(p.glob("*.toml")) + sorted(p.glob("*.json"))
        if len(candidates) != 1:
            raise ValueError(f"{p}: a spec folder must hold exactly one .toml or .json spec")
        p = candidates[0]
    if not p.is_file():
        raise ValueError(f"{p}: no such sweep spec")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            raw = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
    except ValueError as e:
        raise ValueError(f"{p}: not a valid spec file ({e})") from None
    unknown = set(raw) - {"name", "out", "base", "grid", "methods", "cleanup_checkpoints"}
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {sorted(unknown)}")
    base = _flatten(raw.get("base", {}))
    grid = _flatten(raw.get("grid", {}))
    _check_keys(f"{p} [base]", base)
    _check_keys(f"{p} [grid]", grid)
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{p} [grid]: {k} must be a non-empty list")
    methods = []
    for i, m in enumerate(raw.get("methods", [])):
        m = _flatten(m)
        label = m.pop("label", None) or m.get("optim.method")
        if not label:
            raise ValueError(f"{p} [[methods]] #{i + 1}: give a label or optim.method")
        _check_keys(f"{p} [[methods]] {label}", m)
        methods.append((str(label), m))
    if not methods:
        methods.append((str(base.get("optim.method", C.OptimArgs().method)), {}))
    return SweepSpec(
        name=str(raw.get("name", p.stem)),
        out=Path(raw.get("out", f"runs/sweeps/{p.stem}")),
        base=base,
        grid=grid,
        methods=tuple(methods),
        cleanup_checkpoints=bool(raw.get("cleanup_checkpoints", True)),
        path=p,
    )


# ---------------------------------------------------------------------- commands
def finetune_argv(config: C.TrainConfig, defaults: C.TrainConfig | None = None) -> list[str]:
    """The ``zojax finetune`` arguments that reproduce ``config`` (options that differ from the
    defaults; ``optim.steps`` is left out when ``optim.forward_budget`` sets it)."""
    base = C.flat_items(defaults or C.TrainConfig())
    always = {"model.name", "data.task", "optim.method", "optim.lr", "run.seed"}
    if C.is_zo(config.optim.method):
        always |= {f"optim.{k}" for k in config.method_options() if k != "key"}
    argv: list[str] = []
    for key, value in C.flat_items(config).items():
        if key in ("run.resume", "run.dry_run") or (key == "optim.steps" and config.optim.forward_budget):
            continue
        if (value == base.get(key) and key not in always) or value is None:
            continue
        flag = C.flag(key)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def shell_line(argv: Sequence[str]) -> str:
    """``zojax finetune …`` as one shell-quoted line."""
    import shlex

    return "zojax finetune " + " ".join(shlex.quote(a) for a in argv)


def cell_status(run_dir: Path) -> str:
    """``done`` (results.json with status done), ``started`` (a config.json) or ``new``."""
    results = run_dir / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("status") == "done":
                return "done"
        except ValueError:
            pass
    return "started" if (run_dir / "config.json").is_file() else "new"


@dataclasses.dataclass
class PlanRow:
    """What ``--dry-run`` prints for one cell."""

    cell: Cell
    steps: int
    forwards_per_step: int
    status: str
    est_seconds: float | None


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
    for cell in spec.cells():
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
        rows.append(PlanRow(cell, cfg.optim.steps, fps, cell_status(spec.out / cell.id), est))
    return rows


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
    """The ``--dry-run`` report: cell count, per-method budgets and steps, status, time estimate."""
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
    for cell in spec.cells():
        cfg = cell.config(spec.out)
        if cfg.data.task in out or not cfg.training:
            continue
        key = (cfg.model.name, cfg.model.dtype)
        if key not in models:
            models[key] = build_model(*key)
        model = models[key]
        task = get_task(cfg.data.task)
        d = cfg.data
        splits = task.splits(seed=cfg.run.seed, num_train=d.num_train, num_dev=d.num_dev, num_test=d.num_test,
                             data_dir=d.data_dir)  # fmt: skip
        data = TrainBatches(task, splits.train.examples, model.tokenizer, cfg.optim.batch_size, 0, d.max_length,
                            d.max_new_tokens)  # fmt: skip
        batch = data.batch(0)
        fn = jax.jit(functools.partial(_loss_value, model.replace(params=None), task.objective))
        jax.block_until_ready(fn(model.params, batch))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(model.params, batch))
            times.append(time.perf_counter() - t0)
        out[cfg.data.task] = statistics.median(times)
    return out


def _loss_value(template: Any, objective: str, params: Any, batch: Mapping[str, Any]) -> Any:
    from zojax.train.loss import task_loss

    return task_loss(template, objective, batch)(params)


# ---------------------------------------------------------------------- running
class SweepRunner:
    """Runs the cells of a spec, ``jobs`` at a time, each as a ``zojax finetune`` subprocess.

    SIGINT/SIGTERM are passed on to the running cells, which checkpoint and stop; the sweep then
    exits, and running it again resumes them.
    """

    def __init__(self, spec: SweepSpec, jobs: int = 1, python: str | None = None,
                 extra_args: Sequence[str] = (), progress: bool = True) -> None:  # fmt: skip
        if jobs < 1:
            raise ValueError(f"--jobs: expected an integer >= 1, got {jobs}")
        self.spec = spec
        self.jobs = jobs
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.progress = progress
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def command(self, cell: Cell) -> list[str]:
        """The subprocess argv of ``cell`` (``--resume`` when it has started)."""
        cfg = cell.config(self.spec.out)
        argv = finetune_argv(cfg)
        if cell_status(self.spec.out / cell.id) == "started":
            argv.append("--resume")
        return [self.python, "-m", "zojax.cli", "finetune", *argv, "--no-progress", *self.extra_args]

    def run(self, cells: Sequence[Cell] | None = None) -> dict[str, str]:
        """Runs every cell that is not done; returns ``{cell id: final status}``
        (``done``, ``skipped`` (already done), ``failed (exit N)``, ``interrupted`` or, after a stop,
        ``not started``)."""
        cells = list(self.spec.cells() if cells is None else cells)
        todo = [c for c in cells if cell_status(self.spec.out / c.id) != "done"]
        result = {c.id: "skipped" for c in cells if c not in todo}
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        pbar = None
        if self.progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=self.spec.name, unit="cell")
        try:
            pending = list(todo)
            threads: list[threading.Thread] = []

            def worker() -> None:
                while True:
                    with self._lock:
                        if self._stopping or not pending:
                            return
                        cell = pending.pop(0)
                    status = self._run_cell(cell)
                    with self._lock:
                        result[cell.id] = status
                    if pbar is not None:
                        pbar.set_postfix_str(f"{cell.id}: {status}")
                        pbar.update(1)

            for _ in range(min(self.jobs, len(todo))):
                t = threading.Thread(target=worker, daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if pbar is not None:
                pbar.close()
        for c in todo:
            result.setdefault(c.id, "not started")
        return result

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        self._stopping = True
        name = signal.Signals(signum).name
        sys.stderr.write(f"\n[zojax sweep] {name}: stopping the running cells (they checkpoint)\n")
        with self._lock:
            for p in self._procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

    def _run_cell(self, cell: Cell) -> str:
        run_dir = self.spec.out / cell.id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CELL_FILE).write_text(
            json.dumps({"sweep": self.spec.name, "label": cell.label, "id": cell.id, "axes": cell.axes}, indent=2)
        )
        argv = self.command(cell)
        with open(run_dir / "sweep.log", "a", encoding="utf-8") as log:
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
            log.flush()
            with self._lock:
                if self._stopping:
                    return "interrupted"
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                self._procs[cell.id] = proc
            code = proc.wait()
            with self._lock:
                self._procs.pop(cell.id, None)
        if code == 0 and cell_status(run_dir) == "done":
            if self.spec.cleanup_checkpoints:
                import shutil

                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            return "done"
        if self._stopping or code in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM):
            return "interrupted"  # exit 0 without results: stopped by --stop-after
        return f"failed (exit {code}; see {run_dir / 'sweep.log'})"


def format_seconds(s: float) -> str:
    """``1h02m`` / ``3m05s`` / ``12s``."""
    if not math.isfinite(s):
        return "?"
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.0f}s"
