r"""Hooks: what runs after a training step every N steps (logging, the progress bar, dev
evaluation, checkpoints), so that the loop itself only steps.

A :class:`Hook` is a function of the :class:`StepInfo` of the step just taken, due every ``every``
steps, at the final step (``at_end``) and/or when a predicate says so (``when``, e.g. time since the
last checkpoint); :class:`Hooks` runs the due ones in the order they were added.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """The step just taken.

    Attributes:
      step: steps done (1 after the first step).
      total: the run's number of steps.
      params: the parameters after the step.
      opt_state: the optimizer state after the step.
      stats: the step's statistics as Python numbers (``loss``, ``projected_grad``, ...).
      step_time: seconds since the previous step's hooks finished.
    """

    step: int
    total: int
    params: PyTree
    opt_state: PyTree
    stats: Mapping[str, Any]
    step_time: float


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn`` after every ``every``-th step (0: not by count), at the last step (``at_end``) and
    whenever ``when()`` is true."""

    fn: Callable[[StepInfo], None]
    every: int = 0
    at_end: bool = False
    when: Callable[[], bool] | None = None

    def due(self, info: StepInfo) -> bool:
        """Whether the hook runs after ``info``'s step."""
        if self.at_end and info.step == info.total:
            return True
        if self.every and info.step % self.every == 0:
            return True
        return self.when is not None and self.when()


class Hooks:
    """Hooks run in the order they were added."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []

    def add(
        self,
        fn: Callable[[StepInfo], None],
        every: int = 0,
        at_end: bool = False,
        when: Callable[[], bool] | None = None,
    ) -> None:
        """Adds a hook (see :class:`Hook`)."""
        self.hooks.append(Hook(fn, every, at_end, when))

    def run(self, info: StepInfo) -> None:
        """Runs the hooks due after ``info``'s step."""
        for hook in self.hooks:
            if hook.due(info):
                hook.fn(info)


class ProgressBar:
    """A tqdm bar on stderr showing the loss, forward passes and forward passes per second."""

    def __init__(self, total: int, initial: int, desc: str, forwards_per_step: int) -> None:
        from tqdm.auto import tqdm

        self.fps = forwards_per_step
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, info: StepInfo) -> None:
        dt = info.step_time
        self.bar.set_postfix(
            loss=f"{info.stats['loss']:.4f}",
            fwd=info.step * self.fps,
            fwd_s=f"{self.fps / dt:.2f}" if dt > 0 else "-",
            refresh=False,
        )
        self.bar.update(1)

    @staticmethod
    def write(msg: str) -> None:
        """Prints ``msg`` above the bar."""
        from tqdm.auto import tqdm

        tqdm.write(msg)

    def close(self) -> None:
        self.bar.close()
