"""The ``zojax`` command: ``zojax finetune``, ``sweep``, ``table``, ``methods``, ``tasks``.

One module per command (:mod:`~zojax.cli.finetune`, :mod:`~zojax.cli.sweep`, :mod:`~zojax.cli.table`,
:mod:`~zojax.cli.info` for ``methods`` and ``tasks``); the ``finetune`` flags are derived from the
configuration dataclasses by :mod:`zojax.cli.args` (why argparse and not tyro or draccus: there).
JAX, the models and the data are imported only once a command needs them, so ``zojax --help``,
``zojax methods``, ``zojax tasks`` and ``zojax finetune --help`` answer without loading them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from zojax.cli.finetune import config_from_args, dry_run, finetune_main, finetune_parser
from zojax.cli.info import methods_main, methods_table, tasks_main
from zojax.cli.sweep import sweep_main
from zojax.cli.table import table_main

__all__ = [
    "COMMANDS",
    "config_from_args",
    "dry_run",
    "finetune_main",
    "finetune_parser",
    "main",
    "methods_main",
    "methods_table",
    "sweep_main",
    "table_main",
    "tasks_main",
]

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "finetune": (finetune_main, "fine-tune a model (see zojax finetune --help)"),
    "sweep": (sweep_main, "run, check or print the cells of a sweep spec (zojax sweep --help)"),
    "table": (table_main, "MeZO-protocol table from finished runs (zojax table --help)"),
    "methods": (methods_main, "list the methods with forward passes per step"),
    "tasks": (tasks_main, "list the tasks with their data source and split sizes"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zojax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="zojax",
        description="Zeroth-order fine-tuning of LLMs in JAX.",
        epilog="commands:\n"
        + "\n".join(f"  {k:<9} {v}" for k, (_, v) in COMMANDS.items())
        + "\n\nmethods:\n"
        + methods_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=tuple(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    command = p.parse_args(argv[:1]).command
    return COMMANDS[command][0](argv[1:])
