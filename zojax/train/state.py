r"""The run's bookkeeping between steps; the same object is a checkpoint's ``meta.json``.

:class:`RunState` holds what a resumed run needs besides the parameters and optimizer state: the
step reached, the best-by-dev evaluation, the first and latest dev evaluations, the wall time spent
so far and the sizes of the logs (a resume truncates them back). :meth:`RunState.meta` is written
with every checkpoint and :meth:`RunState.from_meta` reads it back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass
class RunState:
    """Where a run stands.

    Attributes:
      step: training steps done.
      forwards: forward passes done (``step`` × forwards per step).
      wall_time: seconds the run had taken when this state was restored (earlier processes).
      best: the best dev evaluation (see :class:`~zojax.train.evaluation.BestTracker`) or ``None``.
      dev_before: the dev evaluation of the untrained parameters (step 0), if any.
      last_dev: the latest dev evaluation, if any.
      log_offsets: sizes of the logs at the last checkpoint (:meth:`MetricsLogger.offsets`).
    """

    step: int = 0
    forwards: int = 0
    wall_time: float = 0.0
    best: dict[str, Any] | None = None
    dev_before: dict[str, Any] | None = None
    last_dev: dict[str, Any] | None = None
    log_offsets: dict[str, Any] | None = None
    _started: float = dataclasses.field(default_factory=time.perf_counter, repr=False, compare=False)

    def wall(self) -> float:
        """Seconds the run has taken, over all its processes."""
        return self.wall_time + (time.perf_counter() - self._started)

    def meta(self, forwards_per_step: int, log_offsets: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint metadata at this point (live wall time and log sizes)."""
        return {
            "step": self.step,
            "forwards": self.step * forwards_per_step,
            "wall_time": self.wall(),
            "best": self.best,
            "dev_before": self.dev_before,
            "last_dev": self.last_dev,
            "log_offsets": log_offsets,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunState:
        """The state a checkpoint's metadata describes (its clock restarts now)."""
        return cls(
            step=int(meta["step"]),
            forwards=int(meta.get("forwards", 0)),
            wall_time=float(meta.get("wall_time", 0.0)),
            best=meta.get("best"),
            dev_before=meta.get("dev_before"),
            last_dev=meta.get("last_dev"),
            log_offsets=meta["log_offsets"],
        )
