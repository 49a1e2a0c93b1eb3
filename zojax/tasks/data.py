r"""Locating the benchmark data: per-task sources in the data folder, the hub, and :func:`load_raw`.

Every source returns rows in the Hugging Face hub schema of the dataset MeZO loads (``super_glue``,
``glue/sst2``, ``google/boolq``, ``rajpurkar/squad``, ``ucinlp/drop``), so the example builders in
:mod:`zojax.tasks.registry` see one format whatever the source: a :class:`LocalSource` reads a
task's folder with the generic readers (:mod:`zojax.tasks.readers`, re-exported here) and converts
the official formats (:mod:`zojax.tasks.formats`, re-exported here); a :class:`HubSource` names
the hub dataset. Local DROP rows also carry ``gold_answers`` (every acceptable answer, as the
official evaluation reads them). Partial local files (the DROP and BoolQ subsets) are named in the
notes, which every report prints.

:func:`load_raw` with ``source="auto"``::

    local folder with a non-empty validation split  ->  RawData(train | None, val, "local:<folder>")
    else hub reachable and loadable                   ->  RawData(train, val, "hub:<repo>[/<name>]")
    else                                              ->  TaskDataMissingError (folders, files, where to get them)

Data directory lookup (first existing wins): the ``data_dir`` argument, ``$ZOJAX_DATA_DIR``,
``./../shared/data`` relative to the current directory, ``<repo>/../shared/data``.

A data file that cannot be read (invalid UTF-8, a malformed JSON line, an unreadable parquet file, a
row without the task's fields) raises :class:`~zojax.errors.UserError` naming the file and, where
there is one, the line number.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zojax.errors import UserError, UserFileNotFoundError
from zojax.paths import ENV_VAR, REPO_ROOT, candidate_data_dirs, resolve_data_dir  # noqa: F401 (re-exported)
from zojax.tasks.base import RawData
from zojax.tasks.formats import (  # noqa: F401 (re-exported)
    BOOLQ_TITLE_SEP,
    CB_LABELS,
    RTE_LABELS,
    SPAN_SEP,
    boolq_google_rows,
    boolq_split_title,
    drop_answer_spans,
    drop_gold_answers,
    drop_json_rows,
    drop_subset_rows,
    squad_json_rows,
    superglue_rows,
)
from zojax.tasks.readers import (  # noqa: F401 (re-exported)
    read_json,
    read_jsonl,
    read_lines,
    read_parquet,
    read_tsv,
    read_tsv_lines,
)

Row = dict[str, Any]


class TaskDataMissingError(UserFileNotFoundError):
    """Raised when a task's data is neither in the data folder nor reachable on the hub (a
    ``FileNotFoundError`` and a :class:`~zojax.errors.UserError`)."""


# --------------------------------------------------------------------------- per-task sources


@dataclass(frozen=True)
class LocalSource:
    """Where a task lives in the data folder and how to read it.

    ``expected`` lists the file names a user should provide (for error messages);
    ``read`` returns ``(train_rows | None, validation_rows | None, notes)`` from the task folder.
    """

    folder: str
    expected: tuple[str, ...]
    read: Callable[[Path], tuple[list[Row] | None, list[Row] | None, list[str]]]


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub (``datasets.load_dataset(path, name)``).

    ``fallbacks`` are alternatives tried in order (legacy canonical names moved to orgs): a repo
    id (with ``name``) or a ``(repo id, name)`` pair.
    """

    path: str
    name: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    fallbacks: tuple[str | tuple[str, str | None], ...] = ()

    def candidates(self) -> list[tuple[str, str | None]]:
        """``(path, name)`` pairs to try, in order."""
        return [(f, self.name) if isinstance(f, str) else f for f in (self.path, *self.fallbacks)]


def superglue_local(folder: str, task: str) -> LocalSource:
    """A SuperGLUE task stored as ``<folder>/{train,val}.jsonl``."""

    def read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
        tr, va = d / "train.jsonl", d / "val.jsonl"
        train = superglue_rows(task, read_jsonl(tr)) if tr.is_file() else None
        val = superglue_rows(task, read_jsonl(va)) if va.is_file() else None
        few = d / "FewGLUE_32dev"
        if val is None and train is None and few.is_dir():
            # FewGLUE's 32 train + 32 "dev32" examples (both from the official train split): too
            # few to split as MeZO does, so they stand in for validation and get carved.
            files = [few / "train.jsonl", few / "dev32.jsonl"]
            rows = [r for f in files if f.is_file() for r in read_jsonl(f)]
            if rows:
                note = (
                    f"{task}: only FewGLUE_32dev found ({len(rows)} official train passages); "
                    "train/dev/test are carved from them, so results are not comparable to MeZO's"
                )
                return None, superglue_rows(task, rows), [note]
        return train, val, []

    return LocalSource(folder, ("train.jsonl", "val.jsonl"), read)


def _sst2_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    def rows(p: Path) -> list[Row]:
        out = []
        for i, (line, r) in enumerate(read_tsv_lines(p)):
            try:
                out.append({"sentence": r["sentence"], "label": int(r["label"]), "idx": i})
            except KeyError as e:
                raise UserError(f"{p}: no {e.args[0]!r} column (the header needs sentence and label)") from None
            except (TypeError, ValueError):
                raise UserError(f"{p}, line {line}: the label must be an integer, got {r.get('label')!r}") from None
        return out

    tr, dev, te = d / "train.tsv", d / "dev.tsv", d / "test.tsv"
    notes: list[str] = []
    test_labelled = False
    if te.is_file():
        first = next(read_lines(te), (1, ""))[1]
        test_labelled = "label" in first.rstrip("\r\n").split("\t")
    if test_labelled:
        # re-split layout (e.g. ALPS): train.tsv + dev.tsv = GLUE train, test.tsv = GLUE validation
        pool = (rows(tr) if tr.is_file() else []) + (rows(dev) if dev.is_file() else [])
        for i, r in enumerate(pool):
            r["idx"] = i
        notes.append("SST-2: train = train.tsv + dev.tsv (GLUE train), validation = test.tsv")
        return (pool or None), rows(te), notes
    # official GLUE layout: train.tsv = train, dev.tsv = validation (test.tsv unlabelled)
    return (rows(tr) if tr.is_file() else None), (rows(dev) if dev.is_file() else None), notes


def _squad_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    def find(names: tuple[str, ...], pattern: str) -> list[Row] | None:
        for n in names:
            if (d / n).is_file():
                return squad_json_rows(read_json(d / n))
        for sub in (d, d / "plain_text"):
            files = sorted(sub.glob(pattern)) if sub.is_dir() else []
            if files:
                return [r for f in files for r in read_parquet(f)]
        return None

    train = find(("train-v1.1.json",), "train-*.parquet")
    val = find(("dev-v1.1.json",), "validation-*.parquet")
    return train, val, []


DROP_TRAIN_QUESTIONS = 77_409  # official DROP train: 77,409 questions (~5.5k passages)
DROP_VALIDATION_QUESTIONS = 9_536  # official DROP validation (dev): 9,536 questions


def _drop_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    """Official json files (``drop_dataset_{train,dev}.json``, also under ``drop_dataset/``);
    without the dev file, a validation sample ``validation_subset*.jsonl``. Partial files are
    named in the notes (every report must say "subset")."""

    def find(name: str) -> Path | None:
        return next((p for p in (d / name, d / "drop_dataset" / name) if p.is_file()), None)

    def questions(obj: dict[str, Any]) -> int:
        return sum(len(sec["qa_pairs"]) for sec in obj.values())

    notes: list[str] = []
    train = val = None
    if path := find("drop_dataset_train.json"):
        obj = read_json(path)
        train = drop_json_rows(obj)
        if questions(obj) < DROP_TRAIN_QUESTIONS:
            notes.append(
                f"DROP: train = a subset: {len(obj)} passages ({questions(obj):,} questions) of the "
                f"official train file ({DROP_TRAIN_QUESTIONS:,} questions; {path.name})"
            )
    if path := find("drop_dataset_dev.json"):
        obj = read_json(path)
        val = drop_json_rows(obj)
        if questions(obj) < DROP_VALIDATION_QUESTIONS:
            notes.append(
                f"DROP: validation = a subset ({questions(obj):,} of "
                f"{DROP_VALIDATION_QUESTIONS:,} questions, {path.name})"
            )
    elif subsets := sorted(d.glob("validation_subset*.jsonl")):
        val = drop_subset_rows(read_jsonl(subsets[0]))
        notes.append(
            f"DROP: test = a random {len(val):,}-question subset of the official validation split "
            f"({DROP_VALIDATION_QUESTIONS:,} questions; {subsets[0].name})"
        )
    return train, val, notes


BOOLQ_TRAIN_ROWS = 9_427  # official BoolQ train


def _boolq_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    """SuperGLUE's ``{train,val}.jsonl``; without ``train.jsonl``, ``train_first1000.jsonl`` (the
    first official train rows, google/boolq schema) as a subset train split; rows in google/boolq's
    schema (no passage titles, as MeZO)."""
    train, val, notes = superglue_local("BoolQ", "boolq").read(d)
    first = d / "train_first1000.jsonl"
    if train is None and (d / "val.jsonl").is_file() and first.is_file():
        train = read_jsonl(first)
        notes = [
            *notes,
            f"BoolQ: train = a subset: the first {len(train):,} rows of the official train "
            f"split ({BOOLQ_TRAIN_ROWS:,} rows; {first.name}), shared by train and dev; MeZO samples "
            "its 1,000 train + 500 dev from all of them",
        ]
    train = boolq_google_rows(train) if train is not None else None
    val = boolq_google_rows(val) if val is not None else None
    if val is not None and any(r.get("title") for r in val):
        notes = [
            *notes,
            'BoolQ: SuperGLUE passages are read without their "<title> -- " prefix, '
            "as in google/boolq, which MeZO loads",
        ]
    return train, val, notes


SST2_LOCAL = LocalSource(
    "SST-2",
    ("train.tsv", "dev.tsv", "test.tsv (labelled re-split) or dev.tsv as validation"),
    _sst2_read,
)
SQUAD_LOCAL = LocalSource(
    "SQuAD",
    ("train-v1.1.json", "dev-v1.1.json", "or train-00000-of-00001.parquet, validation-00000-of-00001.parquet"),
    _squad_read,
)
DROP_LOCAL = LocalSource(
    "DROP",
    ("drop_dataset_train.json", "drop_dataset_dev.json (or a validation_subset*.jsonl sample)"),
    _drop_read,
)
BOOLQ_LOCAL = LocalSource("BoolQ", ("train.jsonl (or train_first1000.jsonl)", "val.jsonl"), _boolq_read)


# --------------------------------------------------------------------------- hub


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers (fast check so offline runs do not wait on retries).

    False when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(src: HubSource) -> tuple[list[Row], list[Row], str]:
    """Load train and validation rows from the hub; returns ``(train, validation, "repo[/name]")``."""
    import datasets

    errors: list[str] = []
    for path, name in src.candidates():
        label = f"{path}/{name}" if name else path
        try:
            d = datasets.load_dataset(path, name)
            return list(d[src.train_split]), list(d[src.validation_split]), label
        except Exception as e:
            errors.append(f"{label}: {type(e).__name__}: {e}")
    raise ConnectionError("; ".join(errors))


def load_raw(
    task_name: str,
    local: LocalSource,
    hub: HubSource,
    where_to_get: str,
    data_dir: str | os.PathLike[str] | None = None,
    source: str = "auto",
) -> RawData:
    """Load a task's raw rows. ``source``: ``auto`` (local folder if present, else hub), ``local``
    or ``hub``. Raises :class:`TaskDataMissingError` naming the task, folders and files."""
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be auto, local or hub, not {source!r}")
    searched: list[Path] = []
    partial_note = ""
    if source in ("auto", "local"):
        base = resolve_data_dir(data_dir)
        dirs = [base] if base is not None else candidate_data_dirs(data_dir)
        for b in dirs:
            folder = b / local.folder
            searched.append(folder)
            if not folder.is_dir():
                continue
            try:
                train, val, notes = local.read(folder)
            except (KeyError, TypeError, IndexError, AttributeError) as e:
                what = f"no field {e.args[0]!r}" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
                raise UserError(
                    f"{folder}: a data file there does not have {task_name}'s format ({what}); expected "
                    f"files: {', '.join(local.expected)} in the official format"
                ) from e
            if val is not None and len(val) > 0:
                if train is None:
                    notes = [
                        *notes,
                        f"{task_name}: train split absent in {folder}; train/dev/test are carved "
                        "disjointly from validation",
                    ]
                return RawData(train, val, f"local:{folder}", tuple(notes))
            partial_note = f" (found {folder} but no validation split in it)"
    hub_error = ""
    if source in ("auto", "hub"):
        if hub_reachable():
            try:
                train, val, name = load_hub(hub)
                return RawData(train, val, f"hub:{name}")
            except Exception as e:
                hub_error = f" Hub load failed: {e}."
        else:
            hub_error = " The Hugging Face hub is not reachable (offline)."
    folders = ", ".join(str(p) for p in searched) or "(local lookup disabled)"
    hub_name = hub.path + (f"/{hub.name}" if hub.name else "")
    raise TaskDataMissingError(
        f"Task {task_name!r}: no data found. Searched folder(s): {folders}{partial_note}. "
        f"Expected files there: {', '.join(local.expected)}. Get them from {where_to_get}, "
        "put them "
        f"in <data dir>/{local.folder}/ and point {ENV_VAR} (or data_dir=) at <data dir>; or go "
        f"online to load the hub dataset {hub_name}.{hub_error}"
    )
