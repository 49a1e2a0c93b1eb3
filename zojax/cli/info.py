"""``zojax methods`` and ``zojax tasks``: the listings (no JAX is imported for either)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zojax import registry
from zojax.train import config as C

OTHER_METHODS = {
    C.FO_METHOD: (1, "first-order fine-tuning: Adam on jax.grad of the same objective (1 forward + 1 backward/step)"),
    "zero-shot": (0, "no training: evaluate the model as it is"),
    "icl": (0, "no training: in-context learning with --num-demos demonstrations"),
}
"""The ``--method`` choices besides the registered estimators: forward passes per step, description."""


def methods_table() -> str:
    """One line per ``--method`` choice: name, forward passes per step, description."""
    rows = [(name, m.forwards_per_step(), m.description) for name, m in registry.METHODS.items()]
    rows += [(name, *OTHER_METHODS[name]) for name in C.method_names() if name not in registry.METHODS]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {n:<{width}}  {f:>2} fwd/step  {d}" for n, f, d in rows)


def methods_main(argv: Sequence[str] | None = None) -> int:
    """``zojax methods``: the registry with forward passes per step."""
    argparse.ArgumentParser(prog="zojax methods", description=methods_main.__doc__).parse_args(argv)
    print("method (--method), forward passes per step with default options, description")
    print(methods_table())
    return 0


def tasks_main(argv: Sequence[str] | None = None) -> int:
    """``zojax tasks``: every task with its data source and split sizes (``python -m zojax.tasks``)."""
    from zojax.tasks.__main__ import main

    return main(argv, prog="zojax tasks")
