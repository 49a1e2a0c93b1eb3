r"""A run's logs: :class:`MetricsLogger` hands every record to the run's trackers, and rewinds them on resume.

A run's records are dicts with ``event`` (``train``, ``eval``, ``test``), ``step``, ``forwards``
(cumulative training forward passes) and fields. :class:`MetricsLogger` hands every record to each
:class:`~zojax.train.trackers.Tracker` of the run: ``metrics.jsonl`` always, and the ones
``TrainConfig.run.trackers`` names (TensorBoard by default, Weights & Biases; see
:mod:`zojax.train.trackers`).

Resume: ``metrics.jsonl`` and the event files are append-only. :meth:`MetricsLogger.offsets`
records their sizes in a checkpoint, and a resumed run truncates them back to those sizes (and
removes event files written after the checkpoint), so the logs continue exactly where the
checkpoint was taken. W&B runs are not rewound: each process is its own W&B run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from zojax.train.trackers import (
    TIMING_KEYS,
    TRACKERS,
    WANDB_MISSING,
    JsonlTracker,
    TensorBoardTracker,
    Tracker,
    WandbTracker,
    event_sizes,
    read_events,
    rewind_events,
    wandb_installed,
)

__all__ = [
    "TIMING_KEYS",
    "TRACKERS",
    "WANDB_MISSING",
    "MetricsLogger",
    "NullLogger",
    "Tracker",
    "read_events",
    "read_metrics",
    "strip_timing",
    "wandb_installed",
]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parses a ``metrics.jsonl`` file (a partial last line, from a crash, is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def strip_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without the :data:`TIMING_KEYS` fields (for comparing runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# ---------------------------------------------------------------------- a run's logs
class NullLogger:
    """The logger of a process other than 0 in a multi-process run: it writes nothing."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Discards ``record``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Discards ``config``."""

    def offsets(self) -> dict[str, Any]:
        """No logs, no offsets."""
        return {}

    def close(self) -> None:
        """Nothing to close."""


class MetricsLogger:
    """Writes ``metrics.jsonl`` and the run's trackers for a run directory.

    Attributes:
      run_dir: the run directory.
      path: ``run_dir/metrics.jsonl``.
      trackers: the :class:`JsonlTracker`, then the others in the order given.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        offsets: Mapping[str, Any] | None = None,
        trackers: Iterable[str | Tracker] = ("tensorboard",),
    ) -> None:
        """Opens the logs; with ``offsets`` (from a checkpoint) rewinds them to it first.

        Args:
          run_dir: the run directory.
          offsets: ``{"metrics": bytes, "events": {event file: bytes}}`` (:meth:`offsets`);
            ``None`` for a new run (which removes old logs).
          trackers: names from :data:`TRACKERS` or :class:`Tracker` objects.
        """
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb_dir = self.run_dir / "tb"
        rewind_events(self._tb_dir, _event_offsets(offsets))
        self._jsonl = JsonlTracker(self.path, None if offsets is None else int(offsets["metrics"]))
        self.trackers: list[Tracker] = [self._jsonl]
        try:
            for t in trackers:
                self.trackers.append(self._make(t) if isinstance(t, str) else t)
        except BaseException:
            self.close()
            raise

    def _make(self, name: str) -> Tracker:
        if name == "tensorboard":
            return TensorBoardTracker(self._tb_dir)
        if name == "wandb":
            return WandbTracker(self.run_dir)
        raise ValueError(f"--trackers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")

    def log(self, record: Mapping[str, Any]) -> None:
        """Hands ``record`` (needs ``event``, ``step``, ``forwards``) to every tracker."""
        rec = {k: _jsonable(v) for k, v in record.items()}
        for t in self.trackers:
            t.log(rec)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Hands the run's configuration to every tracker."""
        for t in self.trackers:
            t.log_config(config)

    def offsets(self) -> dict[str, Any]:
        """Current sizes of the logs (flushed), to be stored with a checkpoint."""
        return {"metrics": self._jsonl.tell(), "events": event_sizes(self._tb_dir)}

    def close(self) -> None:
        """Closes every tracker (all of them, even if one fails)."""
        errors = []
        for t in self.trackers:
            try:
                t.close()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]


def _event_offsets(offsets: Mapping[str, Any] | None) -> dict[str, int]:
    """The event files' sizes of ``offsets`` (also the older ``events_file``/``events`` form)."""
    if offsets is None:
        return {}
    events = offsets.get("events") or {}
    if not isinstance(events, Mapping):
        return {offsets["events_file"]: int(events)} if offsets.get("events_file") else {}
    return {k: int(v) for k, v in events.items()}


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
