"""Locating and reading the benchmark data, offline (official file formats) or from the hub.

Every reader returns rows in the Hugging Face hub schema of the dataset MeZO loads (``super_glue``,
``glue/sst2``, ``rajpurkar/squad``, ``ucinlp/drop``), so the example builders in
:mod:`zojax.tasks.registry` see one format whatever the source.

Data directory lookup (first existing wins): the ``data_dir`` argument, ``$ZOJAX_DATA_DIR``,
``./../shared/data`` relative to the current directory, ``<repo>/../shared/data``.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zojax.tasks.base import RawData

ENV_VAR = "ZOJAX_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]

Row = dict[str, Any]


class TaskDataMissingError(FileNotFoundError):
    """Raised when a task's data is neither in the data folder nor reachable on the hub."""


def candidate_data_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for data, in priority order (explicit, env, cwd, repo root)."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    out: list[Path] = []
    for p in (Path.cwd() / ".." / "shared" / "data", REPO_ROOT / ".." / "shared" / "data"):
        p = p.resolve()
        if p not in out:
            out.append(p)
    return out


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing folder among :func:`candidate_data_dirs`, or None."""
    for p in candidate_data_dirs(data_dir):
        if p.is_dir():
            return p
    return None


# --------------------------------------------------------------------------- generic readers


def read_jsonl(path: Path) -> list[Row]:
    """Read a JSON-lines file (SuperGLUE's format)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_tsv(path: Path) -> list[Row]:
    """Read a GLUE tsv with header; ``QUOTE_NONE`` because SST-2 sentences contain quotes."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return [dict(zip(header, r, strict=False)) for r in reader if r]


def read_parquet(path: Path) -> list[Row]:
    """Read a parquet file (the hub's layout) into python rows."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- format converters


def _bool_label(v: Any) -> int:
    if isinstance(v, str):
        return int(v.strip().lower() in ("true", "1"))
    return int(bool(v))


RTE_LABELS = {"entailment": 0, "not_entailment": 1}
CB_LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}


def _label_map(mapping: dict[str, int]) -> Callable[[Any], int]:
    def f(v: Any) -> int:
        return mapping[v] if isinstance(v, str) else int(v)

    return f


def superglue_rows(task: str, rows: Iterable[Row]) -> list[Row]:
    """Convert official SuperGLUE v2 jsonl rows of ``task`` to the hub schema (flattening
    MultiRC and ReCoRD as the hub and MeZO do)."""
    out: list[Row] = []
    for r in rows:
        if task == "rte":
            out.append({**r, "label": _label_map(RTE_LABELS)(r["label"])})
        elif task == "cb":
            out.append({**r, "label": _label_map(CB_LABELS)(r["label"])})
        elif task in ("boolq", "wic"):
            out.append({**r, "label": _bool_label(r["label"])})
        elif task == "copa":
            out.append({**r, "label": int(r["label"])})
        elif task == "wsc":
            t = r["target"]
            out.append(
                {
                    "text": r["text"],
                    "span1_index": t["span1_index"],
                    "span2_index": t["span2_index"],
                    "span1_text": t["span1_text"],
                    "span2_text": t["span2_text"],
                    "idx": r["idx"],
                    "label": _bool_label(r["label"]),
                }
            )
        elif task == "multirc":
            # one row per (paragraph, question, answer), like super_glue/multirc on the hub
            para = r["passage"]["text"]
            for q in r["passage"]["questions"]:
                for a in q["answers"]:
                    out.append(
                        {
                            "paragraph": para,
                            "question": q["question"],
                            "answer": a["text"],
                            "idx": {
                                "paragraph": r["idx"], "question": q["idx"], "answer": a["idx"]
                            },
                            "label": _bool_label(a.get("label", 0)),
                        }
                    )
        elif task == "record":
            # one row per query, like super_glue/record on the hub (entity end is inclusive)
            text = r["passage"]["text"]
            spans = sorted(r["passage"]["entities"], key=lambda e: e["start"])
            entities = sorted({text[e["start"] : e["end"] + 1] for e in spans})
            for qa in r["qas"]:
                out.append(
                    {
                        "passage": text,
                        "query": qa["query"],
                        "entities": entities,
                        "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                        "idx": {"passage": r["idx"], "query": qa["idx"]},
                    }
                )
        else:
            raise ValueError(f"unknown SuperGLUE task {task!r}")
    return out


def squad_json_rows(obj: dict[str, Any]) -> list[Row]:
    """Flatten an official SQuAD v1.1 json (``{"data": [{"title", "paragraphs": ...}]}``)."""
    out: list[Row] = []
    for article in obj["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in qa["answers"]],
                            "answer_start": [a["answer_start"] for a in qa["answers"]],
                        },
                    }
                )
    return out


def _drop_answer_text(ans: dict[str, Any]) -> tuple[str, str] | None:
    """(text, type) of one DROP answer as ``ucinlp/drop`` builds ``answers_spans``; None for
    multi-span answers, which the hub version drops."""
    if str(ans.get("number", "")).strip():
        return str(ans["number"]).strip(), "number"
    d = ans.get("date") or {}
    date = " ".join(str(d.get(k, "")).strip() for k in ("day", "month", "year")).strip()
    date = " ".join(date.split())
    if date:
        return date, "date"
    spans = ans.get("spans") or []
    if len(spans) == 1:
        return spans[0], "span"
    return None


def drop_json_rows(obj: dict[str, Any], split: str) -> list[Row]:
    """Flatten an official DROP json (``{section_id: {"passage", "qa_pairs"}}``) to the
    ``ucinlp/drop`` schema. Train uses ``answer``; validation ``answer`` + ``validated_answers``.
    Questions whose answers are all multi-span are skipped (as on the hub)."""
    out: list[Row] = []
    for section_id, sec in obj.items():
        for qa in sec["qa_pairs"]:
            answers = [qa["answer"]]
            if split != "train":
                answers += qa.get("validated_answers", [])
            spans: list[str] = []
            types: list[str] = []
            for a in answers:
                t = _drop_answer_text(a)
                if t is not None:
                    spans.append(t[0])
                    types.append(t[1])
            if not spans:
                continue
            out.append(
                {
                    "section_id": section_id,
                    "query_id": qa["query_id"],
                    "passage": sec["passage"],
                    "question": qa["question"],
                    "answers_spans": {"spans": spans, "types": types},
                }
            )
    return out


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

    ``fallbacks`` are alternative repo ids tried in order (legacy canonical names moved to orgs).
    """

    path: str
    name: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    fallbacks: tuple[str, ...] = ()


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
        return [
            {"sentence": r["sentence"], "label": int(r["label"]), "idx": i}
            for i, r in enumerate(read_tsv(p))
        ]

    tr, dev, te = d / "train.tsv", d / "dev.tsv", d / "test.tsv"
    notes: list[str] = []
    test_labelled = False
    if te.is_file():
        with open(te, encoding="utf-8") as f:
            test_labelled = "label" in f.readline().rstrip("\n").split("\t")
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
                return squad_json_rows(json.loads((d / n).read_text(encoding="utf-8")))
        for sub in (d, d / "plain_text"):
            files = sorted(sub.glob(pattern)) if sub.is_dir() else []
            if files:
                return [r for f in files for r in read_parquet(f)]
        return None

    train = find(("train-v1.1.json",), "train-*.parquet")
    val = find(("dev-v1.1.json",), "validation-*.parquet")
    return train, val, []


def _drop_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    out: list[list[Row] | None] = []
    files = (("train", "drop_dataset_train.json"), ("validation", "drop_dataset_dev.json"))
    for split, name in files:
        path = next((p for p in (d / name, d / "drop_dataset" / name) if p.is_file()), None)
        out.append(
            drop_json_rows(json.loads(path.read_text(encoding="utf-8")), split) if path else None
        )
    return out[0], out[1], []


SST2_LOCAL = LocalSource(
    "SST-2",
    ("train.tsv", "dev.tsv", "test.tsv (labelled re-split) or dev.tsv as validation"),
    _sst2_read,
)
SQUAD_LOCAL = LocalSource(
    "SQuAD",
    ("train-v1.1.json", "dev-v1.1.json", "or train-00000-of-00001.parquet, "
     "validation-00000-of-00001.parquet"),
    _squad_read,
)
DROP_LOCAL = LocalSource("DROP", ("drop_dataset_train.json", "drop_dataset_dev.json"), _drop_read)


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
    """Load train and validation rows from the hub; returns ``(train, validation, repo_id)``."""
    import datasets

    errors: list[str] = []
    for path in (src.path, *src.fallbacks):
        try:
            d = datasets.load_dataset(path, src.name)
            return list(d[src.train_split]), list(d[src.validation_split]), path
        except Exception as e:
            errors.append(f"{path}: {type(e).__name__}: {e}")
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
            train, val, notes = local.read(folder)
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
                train, val, repo = load_hub(hub)
                name = f"{repo}/{hub.name}" if hub.name else repo
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

