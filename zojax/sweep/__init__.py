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

    [[methods]]
    label = "MeZO-GV"
    "optim.method" = "mezo-gv"
    lr_from = "demo_pilot.toml"       # the rate a pilot sweep chose for MeZO-GV (by dev; see tuning)

A cell is ``base ∪ grid values ∪ method options`` (later ones win; a method that sets
``optim.steps`` drops the base's ``optim.forward_budget`` and vice versa), run as an ordinary
trainer run in its own directory. The sweep is resumable: a cell whose ``results.json`` says
``done`` is skipped, one that started resumes from its checkpoint (``--resume``), and the others
start. Each cell directory also holds ``sweep_cell.json`` (the sweep name, the method label and
the cell's axis values), which ``zojax table`` reads.

A method with ``lr_from`` (a pilot spec, relative to this one) runs at the learning rate the pilot's
cells of the same label choose by ``zojax table``'s rule; the sweep refuses to start while they are
unfinished or when the choice is at the edge of the pilot's grid (:mod:`zojax.sweep.tuning`).

The package: :mod:`zojax.sweep.spec` (the spec file -> cells, cell ids, a cell's status on disk),
:mod:`zojax.sweep.plan` (``--dry-run``: resolve and check every cell, budgets, time estimates, from a forward pass or
from the finished cells),
:mod:`zojax.sweep.tuning` (``lr_from``: learning rates chosen by a pilot sweep),
:mod:`zojax.sweep.runner` (``zojax finetune`` command lines, the resumable local runner).
"""

from zojax.sweep.plan import (
    PlanRow,
    budgets,
    check_cell_data,
    describe_plan,
    expected_seconds,
    finished_wall_times,
    format_seconds,
    measure_forward_seconds,
    plan,
)
from zojax.sweep.runner import SweepRunner, finetune_argv, shell_line
from zojax.sweep.spec import CELL_FILE, PENDING, Cell, SweepSpec, cell_id, cell_label, cell_status, load_spec
from zojax.sweep.tuning import PilotChoice, TuningPending, pilot_choice

__all__ = [
    "CELL_FILE",
    "PENDING",
    "Cell",
    "PilotChoice",
    "PlanRow",
    "SweepRunner",
    "SweepSpec",
    "TuningPending",
    "budgets",
    "cell_id",
    "cell_label",
    "cell_status",
    "check_cell_data",
    "describe_plan",
    "expected_seconds",
    "finetune_argv",
    "finished_wall_times",
    "format_seconds",
    "load_spec",
    "measure_forward_seconds",
    "pilot_choice",
    "plan",
    "shell_line",
]
