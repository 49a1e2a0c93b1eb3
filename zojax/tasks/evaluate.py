"""Zero-shot and in-context-learning evaluation (MeZO's ``Framework.evaluate``), batched.

Candidate scoring packs the (example, candidate) sequences of many examples into left-padded
forward passes: rows are sorted by length, lengths are bucketed to a multiple of
``pad_to_multiple_of`` and each pass holds about ``token_budget`` tokens (a fixed number of rows
per bucket, the last pass padded with copies) so a jitted scorer compiles once per bucket
(buckets are geometric: 2**k or 1.5 * 2**k tokens, about two shapes per doubling).
The generic ``logits_fn`` interface has no KV cache, so the prompt is not shared across
candidates; batching all candidates together is what is done instead. Generation batches its
prompts the same way (sorted by length, ``token_budget`` tokens of prompt plus new tokens per call).

On several devices a :class:`~zojax.models.rows.Rows` placement (the trainer's
:class:`~zojax.train.placement.Placement`) splits every pass's rows over its ``data`` axis: the
rows per pass are rounded up to a multiple of its size ``D`` (the budget is the whole pass's, as
``--batch-size`` is the whole step's), filled with copies whose results are dropped, placed with
``placement.batch`` and the per-row results fetched whole on every process.

A caller that may have to stop (the trainer on SIGTERM) passes ``should_stop``: it is asked before
every pass, and when it says so the evaluation raises :class:`EvaluationStopped` instead of finishing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from zojax.models.rows import LOCAL, Rows, padded_rows
from zojax.tasks.base import Example
from zojax.tasks.encode import (
    Encoded,
    TokenizerLike,
    encode_candidates,
    encode_generation_prompt,
    left_pad,
    pad_id,
    padded_length,
)
from zojax.tasks.metrics import f1_score, is_correct
from zojax.tasks.registry import Task
from zojax.tasks.sampling import icl_demo_sets
from zojax.tasks.scoring import GenerateFn, LogitsFn, generate_texts, sequence_scores

ShouldStop = Callable[[], bool]


class EvaluationStopped(Exception):
    """An evaluation stopped between two passes because ``should_stop()`` said so.

    Attributes:
      done: the passes finished before the stop.
      total: the passes the evaluation had.
    """

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"evaluation stopped after {done} of {total} passes")
        self.done, self.total = done, total


@dataclass
class EvalResult:
    """Result of evaluating one task.

    ``metric`` is ``accuracy`` or ``f1``; ``value`` in [0, 1]; ``predictions`` holds per-example
    predicted candidate indices (candidate tasks) or generated strings (generation tasks).
    ``stats`` has timings and throughput (``seconds``, ``sequences``, ``tokens``,
    ``sequences_per_s``, ``tokens_per_s``, ``examples_per_s``)."""

    task: str
    metric: str
    value: float
    n: int
    num_demos: int
    predictions: list[Any] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def _result(task: Task, metric: str, per_example: Sequence[float], demos: Any, predictions: list,
            scores: list, stats: dict[str, float]) -> EvalResult:  # fmt: skip
    """The :class:`EvalResult` whose value is the mean of ``per_example`` (NaN when empty)."""
    value = float(np.mean(per_example)) if len(per_example) else float("nan")
    return EvalResult(task.name, metric, value, len(per_example), len(demos[0]) if demos else 0, predictions,
                      scores, stats)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _jitted_scorer(logits_fn: LogitsFn) -> Callable[..., jax.Array]:
    return jax.jit(functools.partial(sequence_scores, logits_fn))


def passes(chunks: Sequence[Any], desc: str, progress: bool, should_stop: ShouldStop | None) -> Iterator[Any]:
    """``chunks`` one by one (behind a progress bar when ``progress``), asking ``should_stop()``
    before each: raises :class:`EvaluationStopped` when it is true."""
    bar = chunks
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(chunks, total=len(chunks), desc=desc, leave=False)
    try:
        for i, chunk in enumerate(bar):
            if should_stop is not None and should_stop():
                raise EvaluationStopped(i, len(chunks))
            yield chunk
    finally:
        if bar is not chunks:
            bar.close()


def length_chunks(
    lengths: Sequence[int], token_budget: int, pad_to_multiple_of: int, data_size: int = 1, extra: int = 0
) -> list[tuple[list[int], int, int]]:
    r"""Passes of about ``token_budget`` tokens: ``(indices, padded length t, rows)`` each.

    Rows are taken longest first; a pass's length is its longest row's
    ``padded_length(n + extra, pad_to_multiple_of, geometric=True)`` and it holds
    ``rows = ⌈max(1, ⌊token_budget / t⌋) / D⌉·D`` rows (the last pass of a length fewer).

    Args:
      lengths: each row's token count.
      token_budget: tokens per pass (over all data shards).
      pad_to_multiple_of: the length bucket's multiple.
      data_size: ``D``, the rows' multiple (:attr:`zojax.models.rows.Rows.data_size`).
      extra: tokens added to every row (generation: the new tokens).

    Returns:
      the passes, covering every index once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[tuple[list[int], int, int]] = []
    i = 0
    while i < len(order):
        t = padded_length(lengths[order[i]] + extra, pad_to_multiple_of, geometric=True)
        rows = padded_rows(max(1, token_budget // t), data_size)
        chunks.append((order[i : i + rows], t, rows))
        i += rows
    return chunks


def score_sequences(
    logits_fn: LogitsFn,
    params: Any,
    tokenizer: TokenizerLike,
    seqs: Sequence[Encoded],
    token_budget: int = 4096,
    pad_to_multiple_of: int = 32,
    progress: bool = False,
    desc: str = "scoring",
    placement: Rows = LOCAL,
    should_stop: ShouldStop | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Mean option log-prob of every sequence, batched by length buckets (:func:`length_chunks`),
    each pass's rows placed by ``placement`` (default: one device).

    Returns ``(scores float64[N], stats)``; raises :class:`EvaluationStopped` when ``should_stop()``
    is true before a pass."""
    scorer = _jitted_scorer(logits_fn)
    out = np.zeros(len(seqs), dtype=np.float64)
    chunks = length_chunks([len(s.ids) for s in seqs], token_budget, pad_to_multiple_of, placement.data_size)
    pad = pad_id(tokenizer)
    t0 = time.perf_counter()
    tokens = 0
    for idx, t, rows in passes(chunks, desc, progress, should_stop):
        batch = [seqs[j] for j in idx] + [seqs[idx[0]]] * (rows - len(idx))
        ids, mask, tmask = left_pad(batch, pad, t, tokenizer.bos_id)
        placed = placement.batch({"ids": ids, "mask": mask, "tmask": tmask})
        s = placement.fetch(scorer(params, placed["ids"], placed["mask"], placed["tmask"]))
        out[idx] = s[: len(idx)]
        tokens += int(sum(len(seqs[j].ids) for j in idx))
    dt = time.perf_counter() - t0
    stats = {
        "seconds": dt,
        "sequences": float(len(seqs)),
        "tokens": float(tokens),
        "forward_passes": float(len(chunks)),
        "sequences_per_s": len(seqs) / dt if dt > 0 else float("nan"),
        "tokens_per_s": tokens / dt if dt > 0 else float("nan"),
    }
    return out, stats


def evaluate_candidates(
    task: Task,
    examples: Sequence[Example],
    logits_fn: LogitsFn,
    params: Any,
    tokenizer: TokenizerLike,
    demos: Sequence[Sequence[Example]] | None = None,
    max_length: int = 2048,
    token_budget: int = 4096,
    pad_to_multiple_of: int = 32,
    progress: bool = True,
    placement: Rows = LOCAL,
    should_stop: ShouldStop | None = None,
) -> EvalResult:
    """Accuracy by candidate scoring: predict the candidate with the highest mean option
    log-prob (no calibration); correct if it is a gold candidate (any gold for ReCoRD).
    ``placement`` and ``should_stop``: see :func:`score_sequences`."""
    seqs: list[Encoded] = []
    spans: list[tuple[int, int]] = []
    for i, ex in enumerate(examples):
        enc = encode_candidates(task, ex, tokenizer, demos[i] if demos else (), max_length)
        spans.append((len(seqs), len(seqs) + len(enc)))
        seqs.extend(enc)
    flat, stats = score_sequences(
        logits_fn,
        params,
        tokenizer,
        seqs,
        token_budget,
        pad_to_multiple_of,
        progress,
        task.name,
        placement,
        should_stop,
    )
    preds, scores = [], []
    for a, b in spans:
        s = flat[a:b]
        scores.append(s.tolist())
        preds.append(int(np.argmax(s)))
    correct = [is_correct(p, ex.gold) for p, ex in zip(preds, examples, strict=True)]
    stats["examples_per_s"] = len(examples) / stats["seconds"] if stats["seconds"] > 0 else 0.0
    return _result(task, "accuracy", correct, demos, preds, scores, stats)


def evaluate_generation(
    task: Task,
    examples: Sequence[Example],
    generate_fn: GenerateFn,
    tokenizer: TokenizerLike,
    demos: Sequence[Sequence[Example]] | None = None,
    max_length: int = 2048,
    max_new_tokens: int = 50,
    progress: bool = True,
    stop_rule: str = "text",
    token_budget: int = 0,
    placement: Rows = LOCAL,
    should_stop: ShouldStop | None = None,
) -> EvalResult:
    r"""F1 of greedy generations, max over gold answers (SQuAD normalisation).

    ``generate_fn(prompts) -> new ids of each`` runs a batch of prompts: :func:`length_chunks` of
    ``token_budget`` tokens of prompt plus ``max_new_tokens`` per call (``0``: one prompt per data
    shard), longest prompts first, each call's rows a multiple of ``placement.data_size`` (filled
    with copies whose generations are dropped); ``generate_fn`` places them with the same
    ``placement`` (:meth:`zojax.models.Model.generate_batch`).

    ``stop_rule`` cleans the text: ``"text"`` cuts it at the first "\n" (default), ``"mezo"``
    only strips it, as MeZO does; ``generate_fn`` should stop by the same rule
    (``Model.generate_batch(..., stop_rule=...)``). ``should_stop()``, when given, is asked before
    every call (:class:`EvaluationStopped`)."""
    t0 = time.perf_counter()
    prompts = [
        encode_generation_prompt(task, ex, tokenizer, demos[i] if demos else (), max_length, max_new_tokens)
        for i, ex in enumerate(examples)
    ]
    chunks = length_chunks([len(p) for p in prompts], token_budget, 32, placement.data_size, max_new_tokens)
    texts: list[str] = [""] * len(prompts)
    for idx, _, rows in passes(chunks, task.name, progress, should_stop):
        batch = [prompts[j] for j in idx] + [prompts[idx[0]]] * (rows - len(idx))
        for j, text in zip(idx, generate_texts(generate_fn, tokenizer, batch, stop_rule=stop_rule), strict=False):
            texts[j] = text
    dt = time.perf_counter() - t0
    f1s = [f1_score(t, ex.answers) for t, ex in zip(texts, examples, strict=True)]
    stats = {"seconds": dt, "examples_per_s": len(examples) / dt if dt > 0 else 0.0}
    return _result(task, "f1", f1s, demos, texts, [], stats)


def evaluate(
    task: Task,
    examples: Sequence[Example],
    tokenizer: TokenizerLike,
    logits_fn: LogitsFn | None = None,
    params: Any = None,
    generate_fn: GenerateFn | None = None,
    num_demos: int = 0,
    demo_pool: Sequence[Example] | None = None,
    stop_rule: str = "text",
    placement: Rows = LOCAL,
    **kwargs: Any,
) -> EvalResult:
    """Zero-shot (``num_demos=0``) or ICL evaluation with MeZO's demonstrations: one seeded set of
    ``num_demos`` examples per test example, drawn from ``demo_pool`` (the train pool).

    ``stop_rule`` (generation tasks only; see :func:`evaluate_generation`): ``"text"`` or
    ``"mezo"``. ``placement``: where each pass's rows live (default: one device; the trainer's
    mesh splits them over ``data``)."""
    demos = None
    if num_demos > 0:
        if not demo_pool:
            raise ValueError("ICL needs a demo_pool (e.g. TaskSplits.train_pool)")
        demos = icl_demo_sets(demo_pool, len(examples), num_demos)
    if task.generation:
        if generate_fn is None:
            raise ValueError(f"{task.name} is a generation task: pass generate_fn")
        return evaluate_generation(
            task, examples, generate_fn, tokenizer, demos, stop_rule=stop_rule, placement=placement, **kwargs
        )
    if logits_fn is None:
        raise ValueError(f"{task.name} is scored by candidates: pass logits_fn and params")
    return evaluate_candidates(task, examples, logits_fn, params, tokenizer, demos, placement=placement, **kwargs)


def zero_shot(task: Task, examples: Sequence[Example], tokenizer: TokenizerLike, **kwargs: Any) -> EvalResult:
    """:func:`evaluate` without demonstrations."""
    return evaluate(task, examples, tokenizer, num_demos=0, **kwargs)


def icl(
    task: Task,
    examples: Sequence[Example],
    tokenizer: TokenizerLike,
    demo_pool: Sequence[Example],
    num_demos: int = 32,
    **kwargs: Any,
) -> EvalResult:
    """:func:`evaluate` with ``num_demos`` (MeZO: 32) demonstrations per test example."""
    return evaluate(task, examples, tokenizer, num_demos=num_demos, demo_pool=demo_pool, **kwargs)
