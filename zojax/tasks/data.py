"""Locating and reading the benchmark data, offline (official file formats) or from the hub.

Every reader returns rows in the Hugging Face hub schema of the dataset MeZO loads (``super_glue``,
``glue/sst2``, ``google/boolq``, ``rajpurkar/squad``, ``ucinlp/drop``), so the example builders in
:mod:`zojax.tasks.registry` see one format whatever the source. Local DROP rows also carry
``gold_answers`` (every acceptable answer, as the official evaluation reads them). Partial local
files (the DROP and BoolQ subsets) are named in the notes, which every report prints.

Data directory lookup (first existing wins): the ``data_dir`` argument, ``$ZOJAX_DATA_DIR``,
``./../shared/data`` relative to the current directory, ``<repo>/../shared/data``.

A data file that cannot be read (invalid UTF-8, a malformed JSON line, an unreadable parquet file, a
row without the task's fields) raises :class:`~zojax.errors.UserError` naming the file and, where
there is one, the line number.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zojax.errors import UserError, UserFileNotFoundError
from zojax.paths import ENV_VAR, REPO_ROOT, candidate_data_dirs, resolve_data_dir  # noqa: F401 (re-exported)
from zojax.tasks.base import RawData

Row = dict[str, Any]


class TaskDataMissingError(UserFileNotFoundError):
    """Raised when a task's data is neither in the data folder nor reachable on the hub (a
    ``FileNotFoundError`` and a :class:`~zojax.errors.UserError`)."""


# --------------------------------------------------------------------------- generic readers


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
            f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file or "
            "download it again"
        ) from None


def _read_tsv_lines(path: Path) -> list[tuple[int, Row]]:
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
    return [r for _, r in _read_tsv_lines(path)]


def read_parquet(path: Path) -> list[Row]:
    """Read a parquet file (the hub's layout) into python rows.

    Raises:
      UserError: the file is not a readable parquet file (names it).
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's ArrowInvalid / OSError for truncated or foreign files
        raise UserError(
            f"{path}: not a readable parquet file ({type(e).__name__}: {e}); download it again"
        ) from e


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


DROP_TRAIN_QUESTIONS = 77_409  # official DROP train: 77,409 questions (~5.5k passages)
DROP_VALIDATION_QUESTIONS = 9_536  # official DROP validation (dev): 9,536 questions
SPAN_SEP = ", "


def drop_answer_spans(ans: dict[str, Any]) -> tuple[list[str], str] | None:
    r"""``(spans, type)`` of one DROP answer json as the official evaluation reads it
    (``drop_eval.answer_json_to_strings``): the ``number`` if set, else the ``spans``, else the
    ``date`` as ``"day month year"``; ``None`` when all are empty."""
    number = str(ans.get("number", "")).strip()
    if number:
        return [number], "number"
    spans = [str(x) for x in ans.get("spans") or [] if str(x).strip()]
    if spans:
        return spans, "span" if len(spans) == 1 else "spans"
    d = ans.get("date") or {}
    date = " ".join(str(d.get(k, "")).strip() for k in ("day", "month", "year")).split()
    return ([" ".join(date)], "date") if date else None


def drop_gold_answers(answers: Iterable[list[str]]) -> list[str]:
    r"""One gold string per acceptable answer, first answer first, duplicates dropped.

    A multi-span answer is one string, its spans joined by ``", "``: the SQuAD token F1 of
    :func:`zojax.tasks.metrics.f1_score` (max over these strings) then scores a prediction against
    all of its spans (the official DROP metric instead aligns the predicted and gold spans as bags;
    single-span, number and date answers, 95% of them, score the same up to its number handling).
    """
    out: list[str] = []
    for spans in answers:
        text = SPAN_SEP.join(s.strip() for s in spans if s.strip())
        if text and text not in out:
            out.append(text)
    return out


def _drop_row(section_id: str, query_id: str, passage: str, question: str,
              answers: list[tuple[list[str], str]]) -> Row:
    """A row in ``ucinlp/drop``'s schema (``answers_spans`` of the first answer) plus
    ``gold_answers``: every acceptable answer (:func:`drop_gold_answers`)."""
    spans, kind = answers[0]
    return {
        "section_id": section_id,
        "query_id": query_id,
        "passage": passage,
        "question": question,
        "answers_spans": {"spans": list(spans), "types": [kind] * len(spans)},
        "gold_answers": drop_gold_answers(a for a, _ in answers),
    }


def drop_json_rows(obj: dict[str, Any]) -> list[Row]:
    """Flatten an official DROP json (``{section_id: {"passage", "qa_pairs"}}``): one row per
    question, its acceptable answers the ``answer`` then the ``validated_answers`` (read by
    :func:`drop_answer_spans`). Questions without any non-empty answer are skipped."""
    out: list[Row] = []
    for section_id, sec in obj.items():
        for qa in sec["qa_pairs"]:
            raw = [qa.get("answer") or {}, *qa.get("validated_answers", [])]
            answers = [a for a in (drop_answer_spans(x) for x in raw) if a is not None]
            if answers:
                out.append(_drop_row(section_id, qa["query_id"], sec["passage"], qa["question"],
                                     answers))
    return out


def drop_subset_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows of a DROP validation sample in EleutherAI/drop's schema (``query_id``, ``passage``,
    ``question``, ``answers``: acceptable answers, each a list of spans), e.g.
    ``validation_subset1000.jsonl``."""
    out: list[Row] = []
    for r in rows:
        answers = [([str(x) for x in a], "span" if len(a) == 1 else "spans") for a in r["answers"] if a]
        if answers:
            out.append(_drop_row("", r["query_id"], r["passage"], r["question"], answers))
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
        for i, (line, r) in enumerate(_read_tsv_lines(p)):
            try:
                out.append({"sentence": r["sentence"], "label": int(r["label"]), "idx": i})
            except KeyError as e:
                raise UserError(f"{p}: no {e.args[0]!r} column (the header needs sentence and label)") from None
            except (TypeError, ValueError):
                raise UserError(
                    f"{p}, line {line}: the label must be an integer, got {r.get('label')!r}"
                ) from None
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
            notes.append(f"DROP: validation = a subset ({questions(obj):,} of "
                         f"{DROP_VALIDATION_QUESTIONS:,} questions, {path.name})")
    elif subsets := sorted(d.glob("validation_subset*.jsonl")):
        val = drop_subset_rows(read_jsonl(subsets[0]))
        notes.append(
            f"DROP: test = a random {len(val):,}-question subset of the official validation split "
            f"({DROP_VALIDATION_QUESTIONS:,} questions; {subsets[0].name})"
        )
    return train, val, notes


BOOLQ_TRAIN_ROWS = 9_427  # official BoolQ train
BOOLQ_TITLE_SEP = " -- "


def boolq_split_title(passage: str) -> tuple[str, str]:
    r"""SuperGLUE's BoolQ passage ``"<title> -- <passage>"`` -> ``(title, passage)``.

    ``google/boolq``, which MeZO loads (``load_dataset("boolq")``), has the passage without the
    title; the split is at the first ``" -- "`` (titles never contain one; passages may).
    ``("", passage)`` when there is no separator."""
    title, sep, rest = passage.partition(BOOLQ_TITLE_SEP)
    return (title, rest) if sep else ("", passage)


def boolq_google_rows(rows: Iterable[Row]) -> list[Row]:
    """BoolQ rows (SuperGLUE: ``label``, titled ``passage``; or google/boolq: ``answer``) in the
    ``google/boolq`` schema MeZO reads: ``question``, ``answer`` (bool), ``passage`` without the
    title (kept in ``title``)."""
    out: list[Row] = []
    for r in rows:
        if "answer" in r:
            out.append({**r, "answer": bool(r["answer"])})
            continue
        title, passage = boolq_split_title(r["passage"])
        out.append({**{k: v for k, v in r.items() if k != "label"}, "passage": passage, "title": title,
                    "answer": bool(_bool_label(r["label"]))})
    return out


def _boolq_read(d: Path) -> tuple[list[Row] | None, list[Row] | None, list[str]]:
    """SuperGLUE's ``{train,val}.jsonl``; without ``train.jsonl``, ``train_first1000.jsonl`` (the
    first official train rows, google/boolq schema) as a subset train split; rows in google/boolq's
    schema (no passage titles, as MeZO)."""
    train, val, notes = superglue_local("BoolQ", "boolq").read(d)
    first = d / "train_first1000.jsonl"
    if train is None and (d / "val.jsonl").is_file() and first.is_file():
        train = read_jsonl(first)
        notes = [*notes, f"BoolQ: train = a subset: the first {len(train):,} rows of the official train "
                 f"split ({BOOLQ_TRAIN_ROWS:,} rows; {first.name}), shared by train and dev; MeZO samples "
                 "its 1,000 train + 500 dev from all of them"]
    train = boolq_google_rows(train) if train is not None else None
    val = boolq_google_rows(val) if val is not None else None
    if val is not None and any(r.get("title") for r in val):
        notes = [*notes, "BoolQ: SuperGLUE passages are read without their \"<title> -- \" prefix, "
                 "as in google/boolq, which MeZO loads"]
    return train, val, notes


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
DROP_LOCAL = LocalSource(
    "DROP",
    ("drop_dataset_train.json", "drop_dataset_dev.json (or a validation_subset*.jsonl sample)"),
    _drop_read,
)
BOOLQ_LOCAL = LocalSource(
    "BoolQ", ("train.jsonl (or train_first1000.jsonl)", "val.jsonl"), _boolq_read
)


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

