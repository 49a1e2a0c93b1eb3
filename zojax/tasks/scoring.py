"""Candidate log-prob scoring and MeZO's training objectives, for any model.

Everything takes a generic ``logits_fn(params, input_ids int32[N, T], attention_mask int32[N, T])
-> float[N, T, V]`` (left padding) and a batch dict from :mod:`zojax.tasks.encode`, so the
objectives are pure and jittable: ``jax.jit(partial(classification_loss, logits_fn))``.

* :func:`classification_loss`: cross-entropy over candidates whose logits are the mean
  log-probabilities of each candidate's option tokens (SST-2, RTE, CB, BoolQ, WSC, WiC, MultiRC).
* :func:`lm_loss`: teacher-forced LM cross-entropy on the gold answer tokens (COPA, ReCoRD, SQuAD,
  DROP), averaged over all answer tokens of the batch (as torch's ``CrossEntropyLoss``).
* Non-differentiable ZO objectives: :func:`negative_accuracy` (jittable) and
  :func:`negative_f1` (greedy generation; host-side).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.tasks.encode import GenerationBatch, TokenizerLike
from zojax.tasks.metrics import clean_generation, f1_score
from zojax.tasks.registry import Task

LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
GenerateFn = Callable[[list[int]], Sequence[int]]
Batch = Mapping[str, Any]

NEG = -1e9  # finite "minus infinity" for masked candidates (keeps gradients NaN-free)


def token_logprobs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """``out[n, t] = log p(input_ids[n, t] | input_ids[n, :t])``; ``out[:, 0] = 0``.

    Computed as ``logit[target] - logsumexp(logits)`` in float32, without materialising a
    full log-softmax."""
    lg = logits[:, :-1].astype(jnp.float32)
    tgt = input_ids[:, 1:]
    picked = jnp.take_along_axis(lg, tgt[..., None], axis=-1)[..., 0]
    lp = picked - jax.nn.logsumexp(lg, axis=-1)
    return jnp.pad(lp, ((0, 0), (1, 0)))


def sequence_scores(
    logits_fn: LogitsFn, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
    target_mask: jax.Array,
) -> jax.Array:
    """Mean log-prob of the target tokens of each sequence; leading dims are flattened for the
    forward pass and restored (e.g. [B, C, T] -> [B, C])."""
    lead = input_ids.shape[:-1]
    t = input_ids.shape[-1]
    ids = input_ids.reshape(-1, t).astype(jnp.int32)
    mask = attention_mask.reshape(-1, t).astype(jnp.int32)
    tm = target_mask.reshape(-1, t).astype(jnp.float32)
    lp = token_logprobs(logits_fn(params, ids, mask), ids)
    mean = (lp * tm).sum(-1) / jnp.maximum(tm.sum(-1), 1.0)
    return mean.reshape(lead)


def candidate_scores(logits_fn: LogitsFn, params: Any, batch: Batch) -> jax.Array:
    """float32[B, C] candidate logits (mean option log-prob); padded candidates get ``NEG``."""
    s = sequence_scores(
        logits_fn, params, batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    )
    return jnp.where(jnp.asarray(batch["candidate_mask"]) > 0, s, NEG)


def classification_loss(logits_fn: LogitsFn, params: Any, batch: Batch) -> jax.Array:
    """MeZO's ``train_as_classification`` loss: mean over examples of cross-entropy between the
    candidate scores and ``labels``."""
    logp = jax.nn.log_softmax(candidate_scores(logits_fn, params, batch), axis=-1)
    labels = jnp.asarray(batch["labels"], jnp.int32)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def negative_accuracy(logits_fn: LogitsFn, params: Any, batch: Batch) -> jax.Array:
    """Non-differentiable ZO objective: minus the fraction of examples whose arg-max candidate is
    gold (``gold_mask``, so ReCoRD's several golds count)."""
    pred = jnp.argmax(candidate_scores(logits_fn, params, batch), axis=-1)
    hit = jnp.take_along_axis(jnp.asarray(batch["gold_mask"]), pred[:, None], axis=-1)[:, 0]
    return -hit.mean()


def lm_loss(logits_fn: LogitsFn, params: Any, batch: Batch) -> jax.Array:
    """Teacher-forced LM cross-entropy on the target (gold answer) tokens, averaged over all
    target tokens of the batch."""
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    lp = token_logprobs(logits_fn(params, ids, jnp.asarray(batch["attention_mask"])), ids)
    tm = jnp.asarray(batch["target_mask"], jnp.float32)
    return -(lp * tm).sum() / jnp.maximum(tm.sum(), 1.0)


def generate_texts(
    generate_fn: GenerateFn, tokenizer: TokenizerLike, prompts: Sequence[list[int]],
    stop: str = "\n", stop_rule: str = "text",
) -> list[str]:
    """Greedy generations (``generate_fn(prompt_ids) -> new token ids``), decoded and cleaned by
    :func:`~zojax.tasks.metrics.clean_generation` (``"text"``: cut at ``stop`` and stripped;
    ``"mezo"``: stripped). ``generate_fn`` should stop by the same ``stop_rule``
    (:meth:`zojax.models.Model.generate`)."""
    return [
        clean_generation(tokenizer.decode(list(generate_fn(list(p)))), stop, stop_rule)
        for p in prompts
    ]


def negative_f1(
    generate_fn: GenerateFn, tokenizer: TokenizerLike, batch: GenerationBatch,
    stop_rule: str = "text",
) -> float:
    """Non-differentiable ZO objective (MeZO's ``--non_diff`` for SQuAD): minus the mean F1 of
    greedy generations. ``generate_fn`` closes over the (perturbed) parameters."""
    texts = generate_texts(generate_fn, tokenizer, batch.prompts, stop_rule=stop_rule)
    return -float(np.mean([f1_score(t, a) for t, a in zip(texts, batch.answers, strict=True)]))


OBJECTIVES: dict[str, Callable[[LogitsFn, Any, Batch], jax.Array]] = {
    "classification": classification_loss,
    "lm": lm_loss,
    "accuracy": negative_accuracy,
}


def objective_for(task: Task, non_diff: bool = False) -> Callable[[LogitsFn, Any, Batch], Any]:
    """MeZO's objective for ``task``: ``classification_loss`` or ``lm_loss``; with ``non_diff``,
    ``negative_accuracy`` for candidate tasks (generation tasks use :func:`negative_f1`, which
    needs a ``generate_fn`` rather than a ``logits_fn``)."""
    if non_diff:
        if task.generation:
            raise ValueError(f"{task.name}: use negative_f1(generate_fn, tokenizer, batch)")
        return negative_accuracy
    return OBJECTIVES[task.objective]
