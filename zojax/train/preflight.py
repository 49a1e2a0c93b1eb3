"""Checks that run before a job loads its data and model, so that what would fail later fails first.

Both raise :class:`~zojax.errors.UserError` with a one-line message naming the option and the fix:

* :func:`check_out_writable`: the run directory (``--out``) can be created and written (probed with
  a temporary file in it or in its nearest existing parent; nothing is left behind);
* :func:`check_train_split`: a training method has a non-empty training split.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from zojax.errors import UserError, disk_full_reason

__all__ = ["check_out_writable", "check_train_split"]


def _probe(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".zojax-write-test-", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_out_writable(out: str | os.PathLike[str], flag: str = "--out") -> None:
    """Raises :class:`UserError` unless the run directory ``out`` can be created and written.

    The check writes (and removes) a temporary file in ``out`` (and ``out/checkpoints``) when they
    exist, else in the nearest existing parent; it creates no folder.

    Args:
      out: the run directory.
      flag: the option named in the message.
    """
    path = Path(out).expanduser()
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise UserError(f"{flag}: {out} cannot be created: {existing} is a broken symbolic link; choose another {flag}")
    if not existing.is_dir():
        where = f"{out} is" if existing == path else f"{out} cannot be created: {existing} is"
        raise UserError(f"{flag}: {where} a file, not a folder; choose another {flag}")
    folders = [existing]
    if existing == path and (path / "checkpoints").is_dir():
        folders.append(path / "checkpoints")
    for folder in folders:
        try:
            _probe(folder)
        except OSError as e:
            reason = disk_full_reason(e) or e.strerror or str(e)
            target = "" if folder == path else f" ({out} would be created there)"
            raise UserError(
                f"{flag}: {folder} is not writable ({reason}){target}; choose a writable {flag} (or fix the "
                "folder's permissions / free some space)"
            ) from e


def check_train_split(config: Any, splits: Any) -> None:
    """Raises :class:`UserError` when ``config`` trains (a ZO method or ``ft``) on an empty split.

    Args:
      config: the resolved :class:`~zojax.train.config.TrainConfig`.
      splits: the task's :class:`~zojax.tasks.TaskSplits`.
    """
    if not config.training or len(splits.train) > 0:
        return
    meta = splits.meta
    source = str(meta.get("source", "?"))
    raise UserError(
        f"--task: {config.data.task} has an empty training split ({source}: train pool "
        f"{meta.get('train_pool_size', 0)} examples, validation {meta.get('validation_size', 0)}), so "
        f"--method {config.optim.method} has nothing to train on; add the task's training file (or more "
        "validation rows to carve from) to the data folder, or evaluate only with --method zero-shot"
    )
