"""Run logs: metrics as JSON lines and TensorBoard-compatible scalar summaries.

* ``metrics.jsonl``: one JSON object per line; every line has ``event``, ``step`` and ``forwards``
  (cumulative training forward passes). Timing fields (:data:`TIMING_KEYS`) are the only ones that
  differ between an interrupted-and-resumed run and an uninterrupted one.
* ``tb/events.out.tfevents.*``: TensorBoard event files written by a small built-in writer (the
  TFRecord framing with masked CRC-32C and hand-encoded ``Event``/``Summary`` protobufs; no
  TensorFlow, ``tensorboardX`` or protobuf dependency). Numeric fields are written as scalars under
  ``<event>/<field>`` with the step as x-axis and again under ``<event>_by_forwards/<field>`` with
  the cumulative forward passes as x-axis (timing fields excepted), so TensorBoard can compare
  methods at equal compute.

Both files are append-only; :meth:`MetricsLogger.offsets` records their sizes in a checkpoint and a
resumed run truncates them back to those sizes, so the logs continue exactly where the checkpoint
was taken.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TIMING_KEYS = frozenset({"time", "wall_time", "step_time", "forwards_per_s", "eval_time"})
"""Fields that measure time (they differ between otherwise identical runs)."""


# ---------------------------------------------------------------------- CRC-32C (Castagnoli)
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: ``((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2³²)``."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------- protobuf encoding
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int, *, file_version: str | None = None, scalars: Mapping[str, float]
) -> bytes:
    """A serialised ``tensorflow.Event``.

    Fields: ``wall_time`` (1, double), ``step`` (2, int64), ``file_version`` (3, string) or
    ``summary`` (5) with ``Summary.value`` (1) entries ``{tag (1): string, simple_value (2):
    float}``.
    """
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v))
            for tag, v in scalars.items()
        )
        out += _len_field(5, values)
    return out


def frame_record(data: bytes) -> bytes:
    """TFRecord framing: ``len u64 | masked_crc(len) u32 | data | masked_crc(data) u32``."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class EventFileWriter:
    """Appends scalar summaries to a TensorBoard event file.

    Attributes:
      path: the event file.
    """

    def __init__(self, logdir: str | os.PathLike[str], path: str | None = None) -> None:
        """Opens ``path`` (an existing file in ``logdir`` to append to) or a new file."""
        Path(logdir).mkdir(parents=True, exist_ok=True)
        new = path is None or not (Path(logdir) / path).exists()
        if path is None:
            path = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.zojax"
        self.path = Path(logdir) / path
        self._f = open(self.path, "ab")  # noqa: SIM115 (kept open for the run)
        if new:
            self._f.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2", scalars={})))

    def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one event holding ``scalars`` (tag -> value) at ``step``."""
        if scalars:
            self._f.write(frame_record(encode_event(time.time(), int(step), scalars=scalars)))

    def flush(self) -> None:
        """Flushes to the OS."""
        self._f.flush()

    def tell(self) -> int:
        """Bytes written so far."""
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        """Closes the file."""
        self._f.close()


def read_events(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, float]]]:
    """Decodes an event file written by :class:`EventFileWriter` into ``(step, {tag: value})``,
    checking every CRC (raises ``ValueError`` on corruption)."""
    data = Path(path).read_bytes()
    i = 0
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        (hc,) = struct.unpack("<I", data[i + 8 : i + 12])
        body = data[i + 12 : i + 12 + n]
        (bc,) = struct.unpack("<I", data[i + 12 + n : i + 16 + n])
        if hc != masked_crc32c(header) or bc != masked_crc32c(body):
            raise ValueError(f"{path}: bad CRC in the record at byte {i}")
        i += 16 + n
        yield _decode_event(body)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def _fields(b: bytes) -> Iterator[tuple[int, int, Any]]:
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(b, i)
        elif wt == 1:
            v, i = b[i : i + 8], i + 8
        elif wt == 5:
            v, i = b[i : i + 4], i + 4
        elif wt == 2:
            n, i = _read_varint(b, i)
            v, i = b[i : i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def _decode_event(body: bytes) -> tuple[int, dict[str, float]]:
    step, scalars = 0, {}
    for num, _, v in _fields(body):
        if num == 2:
            step = v
        elif num == 5:
            for vnum, _, value in _fields(v):
                if vnum != 1:
                    continue
                tag, val = "", math.nan
                for fnum, _, f in _fields(value):
                    if fnum == 1:
                        tag = f.decode()
                    elif fnum == 2:
                        (val,) = struct.unpack("<f", f)
                scalars[tag] = val
    return step, scalars


# ---------------------------------------------------------------------- metrics logger
def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MetricsLogger:
    """Writes ``metrics.jsonl`` and TensorBoard scalars for a run directory.

    Attributes:
      run_dir: the run directory.
      path: ``run_dir/metrics.jsonl``.
    """

    def __init__(self, run_dir: str | os.PathLike[str], offsets: Mapping[str, Any] | None = None):
        """Opens the logs; with ``offsets`` (from a checkpoint) truncates them back to it first.

        Args:
          run_dir: the run directory.
          offsets: ``{"metrics": bytes, "events_file": name, "events": bytes}`` (see
            :meth:`offsets`); ``None`` for a fresh run.
        """
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        tb = self.run_dir / "tb"
        events_name = None
        if offsets is not None:
            _truncate(self.path, int(offsets["metrics"]))
            events_name = offsets.get("events_file")
            if events_name:
                _truncate(tb / events_name, int(offsets["events"]))
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.tb = EventFileWriter(tb, events_name)

    def log(self, record: Mapping[str, Any]) -> None:
        """Appends ``record`` (needs ``event``, ``step``, ``forwards``) to both logs."""
        rec = {k: _jsonable(v) for k, v in record.items()}
        self._f.write(json.dumps(rec, sort_keys=False) + "\n")
        event, step, fwd = rec["event"], int(rec["step"]), int(rec["forwards"])
        skip = {"step", "forwards", "event"} | {"time"}
        scalars = {f"{event}/{k}": float(v) for k, v in rec.items() if k not in skip and _numeric(v)}
        self.tb.add_scalars(step, scalars)
        by_fwd = {
            f"{event}_by_forwards/{k}": float(v)
            for k, v in rec.items()
            if k not in skip and k not in TIMING_KEYS and _numeric(v)
        }
        self.tb.add_scalars(fwd, by_fwd)
        self.flush()  # a line at a time: `tail -f` works and a crash loses nothing logged

    def offsets(self) -> dict[str, Any]:
        """Current sizes of both logs (flushed), to be stored with a checkpoint."""
        self._f.flush()
        return {
            "metrics": self._f.tell(),
            "events_file": self.tb.path.name,
            "events": self.tb.tell(),
        }

    def flush(self) -> None:
        """Flushes both logs."""
        self._f.flush()
        self.tb.flush()

    def close(self) -> None:
        """Closes both logs."""
        self._f.close()
        self.tb.close()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _truncate(path: Path, size: int) -> None:
    if path.exists():
        with open(path, "r+b") as f:
            f.truncate(size)
    elif size:
        raise FileNotFoundError(f"{path}: log file missing; cannot resume its contents")


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
