"""Metrics: accuracy (any-gold for ReCoRD) and SQuAD-normalised token F1 (MeZO's ``metrics.py``)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from zojax.specs import STOP_RULES

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, squeeze whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between two answers after :func:`normalize_answer`."""
    p = normalize_answer(prediction).split()
    g = normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Max token F1 over the gold answers (MeZO: "no answer"/"CANNOTANSWER" golds need an exact
    normalised match)."""
    if not golds:
        raise ValueError("f1_score needs at least one gold answer")
    if golds[0] in ("CANNOTANSWER", "no answer"):
        return float(normalize_answer(golds[0]) == normalize_answer(prediction))
    return max(token_f1(prediction, g) for g in golds)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def is_correct(predicted: int, gold: Sequence[int]) -> bool:
    """Candidate-scoring correctness: the predicted index is one of the gold indices (ReCoRD counts
    a prediction correct if it is in the answer list)."""
    return int(predicted) in {int(g) for g in gold}


def accuracy(predicted: Sequence[int], gold: Sequence[Sequence[int]]) -> float:
    """Mean :func:`is_correct` over examples."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold differ in length")
    if not predicted:
        return float("nan")
    return sum(is_correct(p, g) for p, g in zip(predicted, gold, strict=True)) / len(predicted)


def clean_generation(text: str, stop: str = "\n", stop_rule: str = "text") -> str:
    r"""Post-processing of a greedy generation's decoded text.

    ``stop_rule="text"``: cut at the first ``stop`` and strip (the answer is the first line).
    ``"mezo"``: strip only, as MeZO's ``decode(...).strip()``: MeZO stops at the exact newline
    token id, so a continuation that went past a merged token such as ``".\n"`` is kept whole.
    """
    if stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule: expected one of {STOP_RULES}, got {stop_rule!r}")
    if stop_rule == "mezo" or not stop:
        return text.strip()
    return text.split(stop)[0].strip()
