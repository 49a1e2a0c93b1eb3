r"""Learning rates chosen by a pilot sweep: a method entry's ``lr_from``.

MeZO's protocol tunes each method's learning rate on a grid, by dev, and then runs the table at
the chosen rate. A method entry with ``lr_from = "pilot.toml"`` (a path relative to the spec's
folder) takes the rate that ``zojax table`` would choose from that pilot's cells of the same label::

    lr* = argmax_lr  mean over the pilot's cells at lr of the dev metric   (ties: lower dev loss)

(:func:`zojax.table.choose_lr`, the table's own rule). It is refused while any of those pilot cells
is unfinished, and when ``lr*`` is the smallest or the largest value of the pilot's grid: the best
rate may lie beyond it, so widen the grid and run the new cells first. The table's cells at ``lr*``
get the pilot's cell ids, so a pilot cell that is also a table cell (same task, seed and options)
is not run twice.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any


class TuningPending(ValueError):
    """A method's ``lr_from`` pilot has unfinished cells: run the pilot first."""


@dataclasses.dataclass(frozen=True)
class PilotChoice:
    """A method's learning rate as its pilot chose it.

    Attributes:
      pilot: the pilot spec's path.
      label: the method label (the same in the pilot and in the spec that uses it).
      grid: every learning rate of the pilot's cells of ``label``, ascending.
      dev: ``{lr: (mean dev metric, mean dev loss)}`` over the finished pilot cells.
      pending: ids of the pilot's unfinished cells of ``label``.
      lr: the chosen rate (``None`` while ``pending``).
    """

    pilot: Path
    label: str
    grid: tuple[float, ...]
    dev: dict[float, tuple[float, float]]
    pending: tuple[str, ...]
    lr: float | None

    def describe(self) -> str:
        """One line: the choice and the dev metric at each rate of the grid (``*`` the chosen)."""
        cells = []
        for lr in self.grid:
            dev = self.dev.get(lr, (math.nan, math.nan))[0]
            text = "—" if math.isnan(dev) else f"{100 * dev:.1f}"
            cells.append(f"{lr:g}: {text}{'*' if lr == self.lr else ''}")
        head = f"{self.label}: learning rate from {self.pilot.name}"
        if self.lr is None:
            return f"{head}: pending ({len(self.pending)} of its cells unfinished; mean dev so far {', '.join(cells)})"
        return f"{head}: {self.lr:g} (mean dev by rate: {', '.join(cells)})"


def pilot_choice(pilot: str | Path, label: str) -> PilotChoice:
    r"""The learning rate the pilot spec ``pilot`` chooses for the method ``label``.

    Args:
      pilot: the pilot's spec file; its ``out`` is read relative to the working directory, as
        ``zojax sweep`` does.
      label: the method label; the pilot must list it with explicit learning rates.

    Returns:
      the :class:`PilotChoice` (``lr`` is ``None`` while pilot cells of ``label`` are unfinished).

    Raises:
      ValueError: the pilot has no such label, tunes it by ``lr_from`` itself, or its choice is at
        the edge of its grid (widen the grid).
    """
    from zojax import table as T
    from zojax.sweep.spec import cell_status, load_spec

    spec = load_spec(pilot)
    if spec.lr_from:
        raise ValueError(f"{spec.path}: a pilot lists its learning-rate grids; it cannot take rates from lr_from")
    cells = [c for c in spec.cells(pending_ok=True) if c.label == label]
    if not cells:
        labels = sorted({lbl for lbl, _ in spec.methods})
        raise ValueError(f"{spec.path}: no method labelled {label!r} to take a learning rate from (it has {labels})")
    grid = tuple(sorted({float(c.options["optim.lr"]) for c in cells}))
    pending = tuple(c.id for c in cells if cell_status(spec.out / c.id) != "done")
    by_lr: dict[float, list[Any]] = {}
    for c in cells:
        if c.id not in pending and (run := T.load_run(spec.out / c.id)) is not None:
            by_lr.setdefault(float(c.options["optim.lr"]), []).append(run)
    dev = {lr: T.dev_means(rs) for lr, rs in sorted(by_lr.items())}
    path = Path(spec.path) if spec.path is not None else Path(pilot)
    if pending:
        return PilotChoice(path, label, grid, dev, pending, None)
    lr = float(T.choose_lr(dev))
    choice = PilotChoice(path, label, grid, dev, pending, lr)
    if len(grid) < 3 or lr in (grid[0], grid[-1]):
        raise ValueError(
            f"{choice.describe()}: the chosen rate is at the edge of the pilot's grid, so the best one may lie "
            f"beyond it; widen the grid of {label} in {path} and run its new cells"
        )
    return choice


__all__ = ["PilotChoice", "TuningPending", "pilot_choice"]
