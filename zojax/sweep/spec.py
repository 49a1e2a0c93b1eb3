r"""Sweep specs: the spec file -> its cells, each cell's id, options and configuration.

A cell is one point of ``grid × methods × (each method's list-valued options)``; its options are
``base ∪ grid values ∪ method options`` (later ones win; a method that sets ``optim.steps`` drops
the base's ``optim.forward_budget`` and vice versa), and its id names its axis values::

    cell_id("MeZO", {"data.task": "sst2", "optim.lr": 1e-6, "run.seed": 0}) == "task-sst2_MeZO_lr-1e-06_seed-0"

A cell's folder is ``<out>/<id>``; :func:`cell_status` reads where it stands from the files there.
The spec format is in :mod:`zojax.sweep`'s docstring.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zojax.train import config as C
from zojax.train.report import read_results

CELL_FILE = "sweep_cell.json"
PENDING = "pending"  # the lr of a method whose lr_from pilot is unfinished (dry runs and tables only)
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
      lr_from: ``{label: pilot spec path}`` for methods whose learning rate a pilot sweep chooses
        (:mod:`zojax.sweep.tuning`).
      pilot_choices: the pilots' choices read once by :meth:`with_pilot_choices` (``None``: read
        the pilots' results at each call of :meth:`lr_choices`).
    """

    name: str
    out: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    methods: tuple[tuple[str, dict[str, Any]], ...]
    cleanup_checkpoints: bool = True
    path: Path | None = None
    lr_from: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    pilot_choices: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)

    def lr_choices(self) -> dict[str, Any]:
        """``{label: zojax.sweep.tuning.PilotChoice}`` for the methods tuned by ``lr_from``."""
        if self.pilot_choices is not None:
            return dict(self.pilot_choices)
        from zojax.sweep.tuning import pilot_choice

        return {label: pilot_choice(pilot, label) for label, pilot in self.lr_from.items()}

    def with_pilot_choices(self) -> SweepSpec:
        """This spec with its pilots' choices read now, once: its cells, dry-run report and log then
        agree even if a pilot cell finishes meanwhile (a chain of sweeps runs the pilots beside it)."""
        return dataclasses.replace(self, pilot_choices=self.lr_choices())

    def cells(self, pending_ok: bool = False) -> list[Cell]:
        """Every cell, in a stable order (grid axes outermost, then methods and their axes).

        A method tuned by ``lr_from`` runs at its pilot's chosen learning rate (an ``optim.lr`` axis
        of one value, so its cell ids are the pilot's). While the pilot is unfinished this raises
        :class:`zojax.sweep.tuning.TuningPending`, or with ``pending_ok`` (dry runs, tables) gives
        the method's cells the id value ``lr-pending`` and, so that they resolve for a dry run's
        checks and budgets, the smallest rate of the pilot's grid as a stand-in.
        """
        from zojax.sweep.tuning import TuningPending

        choices = self.lr_choices()
        methods = []
        for label, options in self.methods:
            if label in choices:
                lr = choices[label].lr
                if lr is None and not pending_ok:
                    choice = choices[label]
                    run_pilot = f"run `zojax sweep {choice.pilot}` first"
                    raise TuningPending(f"sweep {self.name}: {choice.describe()}; {run_pilot}")
                options = {**options, "optim.lr": [PENDING if lr is None else lr]}
            methods.append((label, options))
        out = []
        axes = list(self.grid)
        for values in itertools.product(*(self.grid[a] for a in axes)):
            point = dict(zip(axes, values, strict=True))
            for label, options in methods:
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
                    if options_all.get("optim.lr") == PENDING:
                        options_all["optim.lr"] = choices[label].grid[0]
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
    lr_from: dict[str, Path] = {}
    for i, m in enumerate(raw.get("methods", [])):
        m = _flatten(m)
        label = m.pop("label", None) or m.get("optim.method")
        if not label:
            raise ValueError(f"{p} [[methods]] #{i + 1}: give a label or optim.method")
        pilot = m.pop("lr_from", None)
        _check_keys(f"{p} [[methods]] {label}", m)
        if pilot is not None:
            if "optim.lr" in m:
                raise ValueError(f"{p} [[methods]] {label}: set optim.lr or lr_from, not both")
            lr_from[str(label)] = p.parent / str(pilot)
            if not lr_from[str(label)].is_file():
                raise ValueError(f"{p} [[methods]] {label}: lr_from names {lr_from[str(label)]}, which is not a file")
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
        lr_from=lr_from,
    )


def cell_status(run_dir: Path) -> str:
    """``done`` (results.json with status done), ``started`` (a config.json) or ``new``."""
    if read_results(run_dir) is not None:
        return "done"
    return "started" if (run_dir / "config.json").is_file() else "new"


def cell_label(run_dir: Path) -> str | None:
    """The method label a sweep gave the run in ``run_dir`` (its :data:`CELL_FILE`), or ``None`` for a
    run that no sweep made."""
    try:
        return str(json.loads((Path(run_dir) / CELL_FILE).read_text())["label"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["CELL_FILE", "PENDING", "Cell", "SweepSpec", "cell_id", "cell_label", "cell_status", "load_spec"]
