"""Errors the user caused and can fix (a bad file, a missing folder, a full disk).

:class:`UserError` marks an error whose message alone tells the user what is wrong and what to do
(it names the file, line, tensor or option, and the fix). ``zojax finetune`` prints such an error
as one line (``zojax finetune: error: ...``) and exits non-zero, keeping the traceback behind
``--debug``; any other exception is a bug and shows its traceback.

The subclasses also derive from the built-in exception a caller would expect (``FileNotFoundError``,
``KeyError``, ``MemoryError``, ``OSError``), so code that catches those keeps working.
"""

from __future__ import annotations

import errno

__all__ = [
    "DiskFullError",
    "UserError",
    "UserFileNotFoundError",
    "UserKeyError",
    "UserMemoryError",
    "disk_full_reason",
    "one_line",
]


class UserError(ValueError):
    """An error caused by the user's input or environment; the message says what to fix."""

    def __str__(self) -> str:
        # one message argument, printed as is (KeyError would quote it, OSError would add errno)
        if len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a named folder must hold) does not exist."""


class UserKeyError(UserError, KeyError):
    """Something a user's file must contain (a tensor, a field) is missing."""


class UserMemoryError(UserError, MemoryError):
    """What the user asked for does not fit in this machine's memory."""


class DiskFullError(UserError, OSError):
    """The disk (or quota) filled up while writing."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "resource_exhausted: no space")


def disk_full_reason(exc: BaseException | None) -> str | None:
    """``"No space left on device"`` (or the quota message) when ``exc`` or an exception it was
    raised from or during is a full disk (``ENOSPC``/``EDQUOT``, also as text from libraries such
    as tensorstore that wrap it); otherwise ``None``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return exc.strerror or "No space left on device"
        text = str(exc).lower()
        for t in _DISK_FULL_TEXT:
            if t in text:
                return "Disk quota exceeded" if "quota" in t else "No space left on device"
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(text: object) -> str:
    """``text`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())
