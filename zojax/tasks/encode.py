r"""Tokenisation as MeZO does it (``utils.encode_prompt``), left padding, and fixed-shape batches.

Conventions:

* Prompts are tokenised with a BOS (``tokenizer.encode(text, add_bos=True)``). The option (answer)
  tokens of a candidate are the last ``option_len`` tokens of its full sequence, where
  ``option_len = len(encode(verbalize(ex, cand))) - len(encode(encode_prompt(ex)))`` (MeZO).
* ICL demonstrations are each rendered with their gold answer and ``.strip()``-ed, joined with the
  task's separator ("\n\n"), then the test prompt follows after another separator.
* Too-long sequences are truncated on the left, keeping the BOS token (MeZO), to ``max_length``
  (``max_length - max_new_tokens`` for generation prompts).
* Batches are left-padded. ``target_mask[..., t] = 1`` marks tokens ``t`` that are scored, i.e.
  whose log-probability ``log p(x_t | x_<t)`` comes from the logits at ``t - 1``.

Batch formats (all numpy, fixed shapes, so a jitted objective can consume them):

* classification: ``input_ids`` int32[B, C, T], ``attention_mask`` int32[B, C, T],
  ``target_mask`` float32[B, C, T], ``candidate_mask`` float32[B, C] (0 for padded candidates,
  whose rows copy candidate 0), ``labels`` int32[B] (MeZO's label: first gold), ``gold_mask``
  float32[B, C] (all gold candidates; ReCoRD may have several).
* lm: ``input_ids`` int32[B, T], ``attention_mask`` int32[B, T], ``target_mask`` float32[B, T]
  (the gold answer tokens; or every non-pad token but the first with ``only_option=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from zojax.shapes import padded_length
from zojax.tasks.base import Example
from zojax.tasks.registry import Task


class TokenizerLike(Protocol):
    """What the task code needs from a tokenizer."""

    bos_id: int | None
    pad_id: int | None

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` (with a leading BOS when ``add_bos``)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        ...


def pad_id(tokenizer: TokenizerLike) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS, else 0."""
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_id", None)
    return int(pad) if pad is not None else 0


def truncate_keep_bos(ids: list[int], max_length: int, bos_id: int | None) -> list[int]:
    """Left-truncate to ``max_length`` tokens, keeping a leading BOS (MeZO's truncation)."""
    if len(ids) <= max_length:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return ids[:1] + ids[1:][len(ids) - max_length :]
    return ids[len(ids) - max_length :]


def render_demos(task: Task, demos: Sequence[Example]) -> str:
    """Demonstrations rendered with their gold answers, stripped, joined by the separator."""
    return task.train_sep.join(task.template.verbalize(d, d.correct_candidate).strip() for d in demos).strip()


def _with_demos(task: Task, demos: Sequence[Example], text: str) -> str:
    return (render_demos(task, demos) + task.train_sep + text).lstrip().strip(" ")


@dataclass(frozen=True)
class Encoded:
    """One token sequence and how many of its final tokens are the answer."""

    ids: list[int]
    option_len: int


def encode_candidates(
    task: Task,
    ex: Example,
    tokenizer: TokenizerLike,
    demos: Sequence[Example] = (),
    max_length: int = 2048,
) -> list[Encoded]:
    """One sequence per candidate (prompt, demonstrations, candidate), MeZO's ``encode_prompt``."""
    tpl = task.template
    prompt = tpl.encode(ex).strip(" ")
    verbalized = [tpl.verbalize(ex, c).strip(" ") for c in ex.candidates]
    n_prompt = len(tokenizer.encode(prompt))
    out = []
    for v in verbalized:
        option_len = len(tokenizer.encode(v)) - n_prompt
        ids = truncate_keep_bos(tokenizer.encode(_with_demos(task, demos, v)), max_length, tokenizer.bos_id)
        out.append(Encoded(ids, max(1, min(option_len, len(ids) - 1))))
    return out


def encode_gold(
    task: Task,
    ex: Example,
    tokenizer: TokenizerLike,
    max_length: int = 2048,
    max_new_tokens: int | None = 50,
) -> Encoded:
    r"""The example rendered with its gold answer (training sequence of the ``lm`` objective).

    Generation tasks: MeZO's ``generation_with_gold`` (answer + "\n"), truncated to
    ``max_length - max_new_tokens``; multiple choice: the gold candidate's sequence."""
    if task.generation:
        tpl = task.template
        prompt = tpl.encode(ex).strip(" ")
        v = tpl.verbalize(ex, ex.correct_candidate).strip(" ")
        option_len = len(tokenizer.encode(v)) - len(tokenizer.encode(prompt))
        limit = max_length - (max_new_tokens or 0)
        ids = truncate_keep_bos(tokenizer.encode(v), limit, tokenizer.bos_id)
        return Encoded(ids, max(1, min(option_len, len(ids) - 1)))
    return encode_candidates(task, ex, tokenizer, (), max_length)[ex.label]


def encode_generation_prompt(
    task: Task,
    ex: Example,
    tokenizer: TokenizerLike,
    demos: Sequence[Example] = (),
    max_length: int = 2048,
    max_new_tokens: int = 50,
) -> list[int]:
    """Prompt ids for greedy generation (demonstrations + prompt ending in "Answer:")."""
    text = _with_demos(task, demos, task.template.encode(ex).strip(" "))
    return truncate_keep_bos(tokenizer.encode(text), max_length - max_new_tokens, tokenizer.bos_id)


def left_pad(
    seqs: Sequence[Encoded], pad_id: int, length: int, bos_id: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad (truncating longer ones, keeping BOS) to ``length``.

    Returns ``input_ids`` int32[N, length], ``attention_mask`` int32[N, length] and
    ``target_mask`` float32[N, length] (1 on each sequence's last ``option_len`` tokens)."""
    n = len(seqs)
    ids = np.full((n, length), pad_id, dtype=np.int32)
    mask = np.zeros((n, length), dtype=np.int32)
    tmask = np.zeros((n, length), dtype=np.float32)
    for i, s in enumerate(seqs):
        x = truncate_keep_bos(list(s.ids), length, bos_id)
        k = max(1, min(s.option_len, len(x) - 1))
        ids[i, length - len(x) :] = x
        mask[i, length - len(x) :] = 1
        tmask[i, length - k :] = 1.0
    return ids, mask, tmask


def classification_batch(
    task: Task,
    examples: Sequence[Example],
    tokenizer: TokenizerLike,
    max_length: int = 2048,
    num_candidates: int | None = None,
    seq_len: int | None = None,
    pad_to_multiple_of: int = 8,
    demos: Sequence[Sequence[Example]] | None = None,
) -> dict[str, np.ndarray]:
    """Batch for :func:`zojax.tasks.scoring.classification_loss`.

    ``num_candidates``/``seq_len`` fix the shapes (default: the batch's maximum, ``seq_len``
    rounded up to ``pad_to_multiple_of``). ``demos[i]`` are ICL demonstrations for example i."""
    enc = [
        encode_candidates(task, ex, tokenizer, demos[i] if demos else (), max_length) for i, ex in enumerate(examples)
    ]
    c = num_candidates or max(len(e) for e in enc)
    t = seq_len or padded_length(max(len(s.ids) for e in enc for s in e), pad_to_multiple_of)
    b = len(examples)
    rows: list[Encoded] = []
    cand_mask = np.zeros((b, c), dtype=np.float32)
    gold_mask = np.zeros((b, c), dtype=np.float32)
    labels = np.zeros((b,), dtype=np.int32)
    for i, (ex, e) in enumerate(zip(examples, enc, strict=True)):
        if len(e) > c:
            raise ValueError(f"example {ex.id} has {len(e)} candidates > num_candidates={c}")
        rows.extend(e + [e[0]] * (c - len(e)))
        cand_mask[i, : len(e)] = 1.0
        gold_mask[i, list(ex.gold)] = 1.0
        labels[i] = ex.label
    ids, mask, tmask = left_pad(rows, pad_id(tokenizer), t, tokenizer.bos_id)
    return {
        "input_ids": ids.reshape(b, c, t),
        "attention_mask": mask.reshape(b, c, t),
        "target_mask": tmask.reshape(b, c, t),
        "candidate_mask": cand_mask,
        "labels": labels,
        "gold_mask": gold_mask,
    }


def lm_batch(
    task: Task,
    examples: Sequence[Example],
    tokenizer: TokenizerLike,
    max_length: int = 2048,
    seq_len: int | None = None,
    pad_to_multiple_of: int = 8,
    only_option: bool = True,
    max_new_tokens: int | None = 50,
) -> dict[str, np.ndarray]:
    """Batch for :func:`zojax.tasks.scoring.lm_loss`: each example with its gold answer.

    ``only_option=True`` scores only the answer tokens (MeZO's ``--only_train_option``);
    False scores every non-pad token after the first (plain causal-LM loss)."""
    enc = [encode_gold(task, ex, tokenizer, max_length, max_new_tokens) for ex in examples]
    t = seq_len or padded_length(max(len(s.ids) for s in enc), pad_to_multiple_of)
    ids, mask, tmask = left_pad(enc, pad_id(tokenizer), t, tokenizer.bos_id)
    if not only_option:
        tmask = mask.astype(np.float32)
        first = mask.argmax(axis=1)
        tmask[np.arange(len(enc)), first] = 0.0
    return {"input_ids": ids, "attention_mask": mask, "target_mask": tmask}


def train_batch(
    task: Task, examples: Sequence[Example], tokenizer: TokenizerLike, **kwargs: object
) -> dict[str, np.ndarray]:
    """The batch MeZO trains ``task`` on: classification for SST-2..MultiRC, lm for the rest."""
    if task.objective == "classification":
        return classification_batch(task, examples, tokenizer, **kwargs)  # type: ignore[arg-type]
    return lm_batch(task, examples, tokenizer, **kwargs)  # type: ignore[arg-type]
