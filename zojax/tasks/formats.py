r"""Official dataset formats -> the Hugging Face hub schema MeZO loads.

Rows read from the official files (:mod:`zojax.tasks.readers`) are converted to the schema of the
hub dataset MeZO uses, so the example builders see one format whatever the source:

* SuperGLUE v2 jsonl -> ``super_glue/<task>``: string labels to ids (RTE ``entailment=0,
  not_entailment=1``; CB ``entailment=0, contradiction=1, neutral=2``; booleans to 0/1), WSC's
  ``target`` flattened, MultiRC one row per (paragraph, question, answer), ReCoRD one row per query
  with the passage's entity strings ``text[start : end + 1]`` (the end is inclusive).
* SQuAD v1.1 json -> ``rajpurkar/squad``: one row per question, ``answers = {text, answer_start}``.
* DROP json (and EleutherAI/drop's subset rows) -> ``ucinlp/drop``: one row per question, plus
  ``gold_answers``, every acceptable answer as one string (a multi-span answer's spans joined by
  ``", "``), as the official evaluation reads them.
* BoolQ (SuperGLUE's titled ``"<title> -- <passage>"`` with ``label``) -> ``google/boolq``
  (``answer`` as a bool, the passage without its title, kept in ``title``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]


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
                            "idx": {"paragraph": r["idx"], "question": q["idx"], "answer": a["idx"]},
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


def _drop_row(section_id: str, query_id: str, passage: str, question: str, answers: list[tuple[list[str], str]]) -> Row:
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
                out.append(_drop_row(section_id, qa["query_id"], sec["passage"], qa["question"], answers))
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
        out.append(
            {
                **{k: v for k, v in r.items() if k != "label"},
                "passage": passage,
                "title": title,
                "answer": bool(_bool_label(r["label"])),
            }
        )
    return out


__all__ = [
    "BOOLQ_TITLE_SEP",
    "CB_LABELS",
    "RTE_LABELS",
    "SPAN_SEP",
    "boolq_google_rows",
    "boolq_split_title",
    "drop_answer_spans",
    "drop_gold_answers",
    "drop_json_rows",
    "drop_subset_rows",
    "squad_json_rows",
    "superglue_rows",
]
