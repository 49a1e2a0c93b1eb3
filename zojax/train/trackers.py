r"""Where a run's records go: ``metrics.jsonl``, TensorBoard and Weights & Biases, behind one :class:`Tracker`.

* :class:`JsonlTracker`, always: ``metrics.jsonl``, one JSON object per line (non-finite numbers
  as ``null``). It is what the report, ``zojax table``, the plots and the tests read. Timing fields
  (:data:`TIMING_KEYS`) are the only ones that differ between an interrupted-and-resumed run and
  an uninterrupted one.
* :class:`TensorBoardTracker` (``"tensorboard"``, the default): ``tb/events.out.tfevents.*`` written
  with ``tensorboardX``. Numeric fields are scalars under ``<event>/<field>`` with the step as
  x-axis and again under ``<event>_by_forwards/<field>`` with the cumulative forward passes as
  x-axis (timing fields excepted), so TensorBoard can compare methods at equal compute.
* :class:`WandbTracker` (``"wandb"``; ``pip install 'zojax[wandb]'``): Weights & Biases, scalars
  under ``<event>/<field>`` at the step with ``forwards`` alongside, and the configuration.
  ``WANDB_MODE=offline`` (W&B's own variable) keeps the run on disk under ``<run dir>/wandb``;
  ``WANDB_PROJECT`` names the project (default ``zojax``).

Another tracker is any class with ``log``, ``log_config`` and ``close`` (:class:`Tracker`), passed to
:class:`zojax.train.logging.MetricsLogger` as an object. Each process writes a new event file
(numbered ``.zojax.NNN``, in order); TensorBoard reads a folder's event files one after another.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from zojax.errors import UserError

TIMING_KEYS = frozenset({"time", "wall_time", "step_time", "forwards_per_s", "eval_time"})
"""Fields that measure time (they differ between otherwise identical runs)."""

TRACKERS = ("tensorboard", "wandb")
"""Names of the optional trackers (``TrainConfig.run.trackers``); ``metrics.jsonl`` is always written."""

WANDB_MISSING = "--trackers: 'wandb' needs the wandb package: pip install 'zojax[wandb]'"

_KEYS = frozenset({"event", "step", "forwards"})


@runtime_checkable
class Tracker(Protocol):
    """Where a run's records go (see the module docstring)."""

    def log(self, record: Mapping[str, Any]) -> None:
        """One record: ``event``, ``step``, ``forwards`` and JSON-able fields (``None`` for NaN)."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run's configuration (nested JSON-able dicts), once per process, before any record."""

    def close(self) -> None:
        """Flushes and releases the tracker."""


def scalars(record: Mapping[str, Any], *, by_forwards: bool = False) -> dict[str, float]:
    """The numeric fields of ``record`` as ``{"<event>/<field>": value}``.

    ``time`` is left out; with ``by_forwards`` the tags are ``<event>_by_forwards/<field>`` and
    every timing field is left out.
    """
    event = record["event"] + ("_by_forwards" if by_forwards else "")
    skip = _KEYS | (TIMING_KEYS if by_forwards else {"time"})
    return {f"{event}/{k}": float(v) for k, v in record.items() if k not in skip and _numeric(v)}


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------- metrics.jsonl
class JsonlTracker:
    """``metrics.jsonl``: every record as one JSON line, flushed at once (``tail -f`` works and a
    crash loses nothing logged).

    Attributes:
      path: the file.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int | None = None) -> None:
        """Opens ``path`` for appending: truncated to ``offset`` bytes (a resume) or, without one,
        emptied (a new run)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if offset is not None:
            _truncate(self.path, int(offset))
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def log(self, record: Mapping[str, Any]) -> None:
        """Appends ``record`` as a line."""
        self._f.write(json.dumps(dict(record), sort_keys=False) + "\n")
        self._f.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Nothing: the configuration is in ``config.json``."""
        del config

    def tell(self) -> int:
        """Bytes written so far."""
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        """Closes the file."""
        self._f.close()


# ---------------------------------------------------------------------- TensorBoard
_EVENT_FILE = "events.out.tfevents."
_INDEX = re.compile(r"\.zojax\.(\d+)$")


def event_files(logdir: str | os.PathLike[str]) -> list[Path]:
    """The event files of ``logdir`` in the order they were written (by their ``.zojax.NNN``
    number; files without one, from before numbering, first)."""
    d = Path(logdir)
    if not d.is_dir():
        return []

    def order(p: Path) -> tuple[int, str]:
        m = _INDEX.search(p.name)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted((p for p in d.iterdir() if p.name.startswith(_EVENT_FILE) and p.is_file()), key=order)


def event_sizes(logdir: str | os.PathLike[str]) -> dict[str, int]:
    """``{file name: bytes}`` of the event files of ``logdir`` (a checkpoint's ``events`` offsets)."""
    return {p.name: p.stat().st_size for p in event_files(logdir)}


def rewind_events(logdir: str | os.PathLike[str], sizes: Mapping[str, int]) -> None:
    """Truncates each event file of ``logdir`` to its size in ``sizes`` and removes the others
    (written after the checkpoint that recorded ``sizes``; ``{}``: a new run removes them all).

    Raises:
      FileNotFoundError: a file of ``sizes`` with data is missing.
    """
    present = {p.name: p for p in event_files(logdir)}
    for name, p in present.items():
        if name not in sizes:
            p.unlink()
    for name, size in sizes.items():
        _truncate(Path(logdir) / name, int(size))


class TensorBoardTracker:
    """Scalars in a new TensorBoard event file of ``logdir`` (``tensorboardX``, written and
    flushed synchronously so that a checkpoint's file sizes cover every record logged before it).

    Attributes:
      path: the event file.
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        """Creates the next numbered event file in ``logdir``."""
        from tensorboardX.event_file_writer import EventsWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        before = set(event_files(logdir))
        index = 1 + max((int(m.group(1)) for p in before if (m := _INDEX.search(p.name))), default=-1)
        self._writer = EventsWriter(os.path.join(logdir, "events"), f".zojax.{index:03d}")
        (self.path,) = set(event_files(logdir)) - before

    def log(self, record: Mapping[str, Any]) -> None:
        """Writes the numeric fields at ``step`` and, without timing fields, at ``forwards``."""
        self._write(int(record["step"]), scalars(record))
        self._write(int(record["forwards"]), scalars(record, by_forwards=True))
        self._writer.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The configuration as a text summary (``config``, step 0)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import text

        body = "```\n" + json.dumps(config, indent=2) + "\n```"
        self._writer.write_event(Event(wall_time=time.time(), step=0, summary=text("config", body)))
        self._writer.flush()

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        if values:
            summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
            self._writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        """Flushes and closes the file."""
        self._writer.close()


def read_events(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, float]]]:
    """The scalar events of an event file, or of all event files of a folder in order, as
    ``(step, {tag: value})`` (events without scalars skipped; every record's CRC checked).

    Raises:
      ValueError: a corrupt record.
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    p = Path(path)
    for f in event_files(p) if p.is_dir() else [p]:
        data, i = f.read_bytes(), 0
        while i < len(data):
            header, body_at = data[i : i + 8], i + 12
            n = int.from_bytes(header, "little")
            body, end = data[body_at : body_at + n], body_at + n + 4
            crcs = int.from_bytes(data[i + 8 : body_at], "little"), int.from_bytes(data[end - 4 : end], "little")
            if crcs != (masked_crc32c(header), masked_crc32c(body)):
                raise ValueError(f"{f}: bad CRC in the record at byte {i}")
            i = end
            event = Event.FromString(body)
            values = {v.tag: v.simple_value for v in event.summary.value if v.HasField("simple_value")}
            if values:
                yield event.step, values


# ---------------------------------------------------------------------- Weights & Biases
class WandbTracker:
    """A Weights & Biases run (``wandb``, imported here; see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        """Starts a W&B run named after ``run_dir``, its files under ``run_dir/wandb``.

        Raises:
          UserError: ``wandb`` is not installed.
        """
        try:
            import wandb
        except ImportError:
            raise UserError(WANDB_MISSING) from None
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "zojax",
            name=run_dir.name,
            dir=str(run_dir),
            reinit="create_new",
        )

    def log(self, record: Mapping[str, Any]) -> None:
        """The numeric fields at ``step``, with ``forwards``."""
        self.run.log({**scalars(record), "forwards": int(record["forwards"])}, step=int(record["step"]))

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The configuration as the run's config."""
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        """Finishes the run."""
        self.run.finish()


def wandb_installed() -> bool:
    """Whether ``wandb`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def _truncate(path: Path, size: int) -> None:
    if path.exists():
        with open(path, "r+b") as f:
            f.truncate(size)
    elif size:
        raise FileNotFoundError(f"{path}: log file missing; cannot resume its contents")
