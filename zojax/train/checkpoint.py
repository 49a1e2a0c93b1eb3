"""Orbax checkpoints that are detected when corrupt or partial, with fallback to the previous one.

Layout of ``<run>/checkpoints/``::

    step_00000010/
      items/params/    orbax StandardCheckpointHandler, one folder per item
      items/opt_state/ (the optimizer state, incl. the PRNG key)
      meta.json        step, forwards, best-by-dev bookkeeping, log offsets, config
      MANIFEST.json    size and SHA-256 of every file above; written last: the commit marker
    best_00000008/     the best-by-dev parameters found at step 8 (items/params only)

Identical parameters are never stored twice: ``step_N`` and ``best_N`` both hold the parameters
after ``N`` steps of the same run, so whichever is saved second hard-links the other's
``items/params`` files instead of writing them (its own folder, deletable on its own; a file system
without hard links, or a multi-process run, writes a copy). Checkpoints written before this layout
(one ``state/`` tree) are still read.

A checkpoint is written into a temporary folder and renamed into place once its manifest exists, so
a process killed mid-save leaves no folder that looks complete. On restore every file is checked
against the manifest before orbax reads it; a checkpoint that fails (missing manifest, a truncated
or altered file, an orbax error) is renamed ``corrupt.<name>`` with a warning and the previous one
is tried.

A save that fails (a full disk, an unwritable folder, Ctrl-C) removes its partial ``tmp.<name>.<pid>``
folder and leaves the checkpoints already there untouched; a full disk raises
:class:`~zojax.errors.DiskFullError` (a one-line :class:`~zojax.errors.UserError`) saying so.
Temporary folders left by a killed process are removed by :meth:`Checkpoints.remove_stale` (called
by :meth:`Checkpoints.restore_latest`, i.e. on ``--resume``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from zojax.errors import DiskFullError, UserError, disk_full_reason
from zojax.train import hosts

PyTree = Any
MANIFEST = "MANIFEST.json"
META = "meta.json"
STATE = "state"  # the layout before items/: one tree {"params", "opt_state"}
ITEMS = "items"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_BEST_RE = re.compile(r"^best_(\d{8,})$")
_TMP_RE = re.compile(r"^tmp\.((?:step|best)_\d{8,})(?:\.\d+)?$")
_OLD_RE = re.compile(r"^old\.((?:step|best)_\d{8,})(?:\.\d+)?$")
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class CheckpointWarning(UserWarning):
    """A checkpoint was unusable and an older one (or none) is used instead."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Writes ``MANIFEST.json`` (size and SHA-256 of every other file), fsynced."""
    files = {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)] for p in _files(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify(folder: Path) -> None:
    """Raises ``ValueError`` saying what is wrong when ``folder`` does not match its manifest."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ValueError("no MANIFEST.json (the save did not finish)")
    try:
        files = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"unreadable MANIFEST.json ({e})") from None
    for rel, (size, digest) in files.items():
        p = folder / rel
        if not p.is_file():
            raise ValueError(f"missing file {rel}")
        if p.stat().st_size != size:
            raise ValueError(f"{rel} has {p.stat().st_size} bytes, expected {size} (truncated?)")
        if _sha256(p) != digest:
            raise ValueError(f"{rel} does not match its SHA-256 (corrupt)")


def abstract(tree: PyTree) -> PyTree:
    """Shapes and dtypes of ``tree`` (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
    """Periodic checkpoints plus a best-by-dev slot in ``directory``.

    Attributes:
      directory: ``<run>/checkpoints``.
      keep: how many periodic checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        self.directory = Path(directory).absolute()  # orbax wants absolute paths
        self.keep = int(keep)
        self._ckpt = ocp.Checkpointer(ocp.StandardCheckpointHandler())

    # ------------------------------------------------------------------ writing
    def _write(self, name: str, state: Mapping[str, PyTree], meta: Mapping[str, Any]) -> Path:
        """Writes ``tmp.<name>[.<pid>]``, then renames it to ``name``. With several processes every
        process writes its shards into the same folder (orbax), process 0 writes ``meta.json`` and the
        manifest and renames, and barriers fence each stage (see :mod:`zojax.train.hosts`)."""
        final = self.directory / name
        multi, main = hosts.count() > 1, hosts.is_main()
        tmp = self.directory / (f"tmp.{name}" if multi else f"tmp.{name}.{os.getpid()}")
        try:
            if main:
                self.directory.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
            hosts.barrier(f"zojax-ckpt-{name}-prepared")
            for key, tree in state.items():
                if not (key == "params" and main and not multi and self._link_twin_params(name, tmp)):
                    self._ckpt.save(tmp / ITEMS / key, args=ocp.args.StandardSave(tree))
            if main:
                with open(tmp / META, "w") as f:
                    json.dump(dict(meta), f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                write_manifest(tmp)
        except BaseException as e:  # a full disk, a permission change, Ctrl-C: leave nothing partial
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            err = self._save_error(name, e)
            if err is e:
                raise
            raise err from e
        if main:
            old = None
            if final.exists():
                old = self.directory / (f"old.{name}" if multi else f"old.{name}.{os.getpid()}")
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        hosts.barrier(f"zojax-ckpt-{name}-committed")
        return final

    def _link_twin_params(self, name: str, tmp: Path) -> bool:
        """Hard-links the parameters of ``name``'s twin (``best_N`` for ``step_N`` and back), which
        hold the same parameters, into ``tmp``; ``False`` when there is no complete twin or the
        file system cannot link (the caller then writes them)."""
        kind, step = name.split("_", 1)
        twin = self.directory / f"{'best' if kind == 'step' else 'step'}_{step}"
        source = twin / ITEMS / "params"
        if not (source.is_dir() and (twin / MANIFEST).is_file()):
            return False
        dest = tmp / ITEMS / "params"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, dest, copy_function=os.link)
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)
            return False
        return True

    def _save_error(self, name: str, e: BaseException) -> BaseException:
        """The exception to raise for a failed save of ``name``: a one-line :class:`UserError` for a
        full disk or an unwritable folder, ``e`` itself otherwise."""
        run = self.directory.parent
        try:
            kept = self.steps()
        except OSError:
            kept = []
        last = f"the last complete checkpoint, step {kept[-1]}, is kept" if kept else "no earlier checkpoint exists"
        reason = disk_full_reason(e)
        if reason is not None:
            return DiskFullError(
                f"checkpoint {name}: the disk is full ({reason}) under {self.directory}; the partial "
                f"checkpoint was removed and {last}: free some space, then continue with: "
                f"zojax finetune --out {run} --resume"
            )
        if isinstance(e, OSError) and e.errno in _UNWRITABLE:
            return UserError(
                f"checkpoint {name}: cannot write under {self.directory} ({e.strerror}); {last}: make the "
                f"folder writable, then continue with: zojax finetune --out {run} --resume"
            )
        return e

    def remove_stale(self) -> list[str]:
        """Removes what a process killed while saving left behind: ``tmp.<name>.<pid>`` folders (a
        save that never finished) and ``old.<name>.<pid>`` ones (the copy a re-save replaces; put
        back when the replacement is missing). Returns the names removed."""
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        for p in sorted(self.directory.iterdir()):
            if _TMP_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
            elif (m := _OLD_RE.match(p.name)) is not None:
                final = self.directory / m.group(1)
                if final.exists():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
                else:
                    os.replace(p, final)
        return removed

    def save(self, step: int, state: Mapping[str, PyTree], meta: Mapping[str, Any]) -> Path:
        """Saves ``state`` (a dict of pytrees) and ``meta`` as step ``step``; prunes old ones.

        Returns:
          the checkpoint folder.

        Raises:
          DiskFullError: the disk filled up (the partial folder is removed, older checkpoints kept).
          UserError: the folder is not writable (likewise).
        """
        path = self._write(f"step_{step:08d}", state, {**meta, "step": int(step)})
        if hosts.is_main():
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.directory / f"step_{old:08d}", ignore_errors=True)
        return path

    def save_best(self, step: int, params: PyTree, meta: Mapping[str, Any]) -> Path:
        """Saves the best-by-dev parameters found at ``step`` into the slot ``best_<step>``."""
        return self._write(f"best_{step:08d}", {"params": params}, {**meta, "step": int(step)})

    def best_steps(self) -> list[int]:
        """Steps of the best-by-dev slots present, ascending."""
        if not self.directory.is_dir():
            return []
        found = [_BEST_RE.match(p.name) for p in self.directory.iterdir() if p.is_dir()]
        return sorted(int(m.group(1)) for m in found if m)

    def referenced_best_steps(self) -> set[int]:
        """Best-by-dev steps that the periodic checkpoints present refer to."""
        out = set()
        for step in self.steps():
            try:
                meta = json.loads((self.directory / f"step_{step:08d}" / META).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta.get("best"), dict):
                out.add(int(meta["best"]["step"]))
        return out

    def prune_best(self, current: int | None) -> None:
        """Deletes the best-by-dev slots that are neither ``current`` nor referred to by a
        periodic checkpoint (a run resumed from that checkpoint needs its notion of "best")."""
        if not hosts.is_main():
            return
        keep = self.referenced_best_steps() | ({current} if current is not None else set())
        for s in self.best_steps():
            if s not in keep:
                shutil.rmtree(self.directory / f"best_{s:08d}", ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def steps(self) -> list[int]:
        """Steps of the checkpoints present (complete or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = [_STEP_RE.match(p.name) for p in self.directory.iterdir() if p.is_dir()]
        return sorted(int(m.group(1)) for m in found if m)

    def _load(self, folder: Path, target: Mapping[str, PyTree]) -> tuple[dict, dict]:
        verify(folder)
        meta = json.loads((folder / META).read_text())
        if not (folder / ITEMS).is_dir():  # the layout before items/
            state = self._ckpt.restore(folder / STATE, args=ocp.args.StandardRestore(dict(target)))
            return dict(state), meta
        state = {
            key: self._ckpt.restore(folder / ITEMS / key, args=ocp.args.StandardRestore(tree))
            for key, tree in target.items()
        }
        return state, meta

    def _quarantine(self, folder: Path, reason: str, fallback: str) -> None:
        warnings.warn(
            f"checkpoint {folder} is unusable ({reason}); {fallback}",
            CheckpointWarning,
            stacklevel=3,
        )
        if not hosts.is_main():  # process 0 moves it aside; the others skip it the same way
            return
        dest = folder.with_name(f"corrupt.{folder.name}")
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(folder, dest)

    def restore_latest(self, target: Mapping[str, PyTree]) -> tuple[dict, dict] | None:
        """The newest usable checkpoint as ``(state, meta)``, or ``None`` if there is none.

        Temporary folders of saves that never finished are removed first (:meth:`remove_stale`).

        Args:
          target: a dict of pytrees with the state's structure (arrays or
            ``jax.ShapeDtypeStruct``; see :func:`abstract`).
        """
        if hosts.is_main():
            self.remove_stale()
        hosts.barrier("zojax-ckpt-stale-removed")
        steps = self.steps()
        for i, step in reversed(list(enumerate(steps))):
            folder = self.directory / f"step_{step:08d}"
            try:
                return self._load(folder, target)
            except Exception as e:
                fallback = (
                    f"falling back to step {steps[i - 1]}" if i > 0 else "no older checkpoint; starting from scratch"
                )
                self._quarantine(folder, f"{type(e).__name__}: {e}", fallback)
        return None

    def restore_best(self, step: int, target_params: PyTree) -> tuple[PyTree, dict] | None:
        """The best-by-dev parameters saved at ``step`` and their meta, or ``None`` (warns when
        missing or corrupt)."""
        folder = self.directory / f"best_{step:08d}"
        if not folder.exists():
            warnings.warn(f"best-by-dev checkpoint {folder} is missing", CheckpointWarning, stacklevel=2)
            return None
        try:
            state, meta = self._load(folder, {"params": target_params})
        except Exception as e:
            self._quarantine(folder, f"{type(e).__name__}: {e}", "the best-by-dev params are lost")
            return None
        return state["params"], meta
