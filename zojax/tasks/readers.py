r"""Reading data files: UTF-8 text lines, JSON lines, JSON, GLUE tsv and parquet, into python rows.

Each reader returns what the file holds (``dict`` rows, or the decoded JSON), with no task
knowledge; :mod:`zojax.tasks.formats` converts official rows to the hub schema. A file that cannot
be read raises :class:`~zojax.errors.UserError` naming the file and, where there is one, the line::

    <path>, line <n>: not valid UTF-8 (byte 0x.. at byte <k> of the line); re-save the file as UTF-8
    <path>, line <n>: not valid JSON (<reason> at column <c>); fix or delete that line
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zojax.errors import UserError

Row = dict[str, Any]


def _utf8_error(path: Path, line: int, raw: bytes, e: UnicodeDecodeError) -> UserError:
    return UserError(
        f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
        "line); re-save the file as UTF-8"
    )


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file (a leading byte-order mark is dropped; line
    endings are kept).

    Raises:
      UserError: invalid UTF-8, naming the file and the line.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, lineno, raw, e) from None


def read_jsonl(path: Path) -> list[Row]:
    """Read a JSON-lines file (SuperGLUE's format): one JSON object per non-blank line.

    Raises:
      UserError: invalid UTF-8, a line that is not valid JSON or not an object (names the file
        and the line).
    """
    rows = []
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or delete that line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}; fix or delete that line"
            )
        rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    """Read a JSON file (SQuAD's and DROP's official format).

    Raises:
      UserError: invalid UTF-8 or JSON (names the file and the line).
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        err = UnicodeDecodeError(e.encoding, e.object, e.start - start, e.end - start, e.reason)
        raise _utf8_error(path, line, data[start:], err) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file or download it again"
        ) from None


def read_tsv_lines(path: Path) -> list[tuple[int, Row]]:
    """``(line number, row)`` of a tsv with a header (``QUOTE_NONE``: one row per line)."""
    reader = csv.reader((line for _, line in read_lines(path)), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: the file is empty (expected a header line)") from None
    return [(reader.line_num, dict(zip(header, r, strict=False))) for r in reader if r]


def read_tsv(path: Path) -> list[Row]:
    """Read a GLUE tsv with header; ``QUOTE_NONE`` because SST-2 sentences contain quotes.

    Raises:
      UserError: invalid UTF-8 (names the file and the line) or an empty file.
    """
    return [r for _, r in read_tsv_lines(path)]


def read_parquet(path: Path) -> list[Row]:
    """Read a parquet file (the hub's layout) into python rows.

    Raises:
      UserError: the file is not a readable parquet file (names it).
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's ArrowInvalid / OSError for truncated or foreign files
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}); download it again") from e


__all__ = ["read_json", "read_jsonl", "read_lines", "read_parquet", "read_tsv", "read_tsv_lines"]
