r"""Candidate log-prob scoring and MeZO's training objectives, for any model.

The objectives are reductions of token log-probabilities, written once here:

* ``classification`` (:func:`classification_from_logprobs`): cross-entropy over candidates whose
  logits are the mean log-probabilities of each candidate's option tokens (SST-2, RTE, CB, BoolQ,
  WSC, WiC, MultiRC); :func:`shared_classification_from_logits` is the same objective when every
  candidate is one token after a shared prompt.
* ``lm`` (:func:`lm_from_logprobs`): teacher-forced cross-entropy on the gold answer tokens (COPA,
  ReCoRD, SQuAD, DROP), averaged over all answer tokens of the batch (as torch's
  ``CrossEntropyLoss``).

:data:`OBJECTIVES` maps ``Task.objective`` to them. The trainer feeds them the model's
memory-friendly log-probabilities (:func:`zojax.train.loss.task_loss`); for any other model,
:func:`classification_loss` and :func:`lm_loss` take a generic ``logits_fn(params, input_ids
int32[N, T], attention_mask int32[N, T]) -> float[N, T, V]`` (left padding) and a batch dict from
:mod:`zojax.tasks.encode`, so they are pure and jittable:
``jax.jit(partial(classification_loss, logits_fn))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from zojax.tasks.encode import TokenizerLike
from zojax.tasks.metrics import clean_generation
from zojax.tasks.registry import Task

LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
GenerateFn = Callable[[list[list[int]]], Sequence[Sequence[int]]]
"""``generate_fn(prompts) -> the new token ids of each prompt`` (greedy, a batch at a time)."""
Batch = Mapping[str, Any]
Array = jax.Array

NEG = -1e9  # finite "minus infinity" for masked candidates (keeps gradients NaN-free)


# ---------------------------------------------------------------------- log-probabilities
def token_logprobs(logits: Array, input_ids: Array) -> Array:
    """``out[n, t] = log p(input_ids[n, t] | input_ids[n, :t])``; ``out[:, 0] = 0``.

    Computed as ``logit[target] - logsumexp(logits)`` in float32, without materialising a
    full log-softmax."""
    lg = logits[:, :-1].astype(jnp.float32)
    tgt = input_ids[:, 1:]
    picked = jnp.take_along_axis(lg, tgt[..., None], axis=-1)[..., 0]
    lp = picked - jax.nn.logsumexp(lg, axis=-1)
    return jnp.pad(lp, ((0, 0), (1, 0)))


def target_mean(logprobs: Array, target_mask: Array) -> Array:
    """``Σ_t m_t log p_t / max(Σ_t m_t, 1)`` over the last axis: a sequence's mean target log-prob."""
    return jnp.sum(logprobs * target_mask, -1) / jnp.maximum(jnp.sum(target_mask, -1), 1.0)


def sequence_scores(
    logits_fn: LogitsFn,
    params: Any,
    input_ids: Array,
    attention_mask: Array,
    target_mask: Array,
) -> Array:
    """Mean log-prob of the target tokens of each sequence; leading dims are flattened for the
    forward pass and restored (e.g. [B, C, T] -> [B, C])."""
    lead = input_ids.shape[:-1]
    t = input_ids.shape[-1]
    ids = input_ids.reshape(-1, t).astype(jnp.int32)
    mask = attention_mask.reshape(-1, t).astype(jnp.int32)
    tm = target_mask.reshape(-1, t).astype(jnp.float32)
    lp = token_logprobs(logits_fn(params, ids, mask), ids)
    return target_mean(lp, tm).reshape(lead)


# ---------------------------------------------------------------------- the objectives
def shifted_target_mask(target_mask: Array) -> Array:
    """``target_mask[..., 1:]``: the weights of next-token log-probabilities (targets ``t ≥ 1``)."""
    return jnp.asarray(target_mask, jnp.float32)[..., 1:]


def classification_from_logprobs(logprobs: Array, batch: Batch) -> Array:
    r"""Cross-entropy over candidates from token log-probabilities.

    .. math::

       s_{bc} = \frac{\sum_t m_{bct} \log p(x_{bct})}{\max(\sum_t m_{bct}, 1)}, \qquad
       L = -\frac{1}{B} \sum_b \log \operatorname{softmax}(s_{b\cdot})_{y_b},

    with padded candidates' scores set to a large negative value.

    Args:
      logprobs: ``float32[B·C, T−1]``, ``log p(x_{t+1} | x_{≤t})``.
      batch: a classification batch (``target_mask [B, C, T]``, ``candidate_mask``, ``labels``).

    Returns:
      the scalar loss.
    """
    return candidate_nll(candidate_scores_from_logprobs(logprobs, batch), batch).mean()


def candidate_nll(scores: Array, batch: Batch) -> Array:
    r"""Per-example cross-entropy over candidates: :math:`-\log \operatorname{softmax}(s_{b\cdot})_{y_b}`.

    Args:
      scores: ``float32[B, C]`` candidate scores (padded candidates are masked here).
      batch: ``candidate_mask [B, C]`` and ``labels [B]``.

    Returns:
      ``float32[B]``.
    """
    scores = jnp.where(jnp.asarray(batch["candidate_mask"]) > 0, scores, NEG)
    logp = jax.nn.log_softmax(scores, axis=-1)
    labels = jnp.asarray(batch["labels"], jnp.int32)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def lm_from_logprobs(logprobs: Array, batch: Batch) -> Array:
    """Teacher-forced cross-entropy on the target tokens: ``−Σ m log p / max(Σ m, 1)``.

    Args:
      logprobs: ``float32[B, T−1]``.
      batch: an ``lm`` batch (``target_mask [B, T]``).

    Returns:
      the scalar loss.
    """
    tm = shifted_target_mask(batch["target_mask"])
    return -jnp.sum(logprobs * tm) / jnp.maximum(jnp.sum(tm), 1.0)


def shared_candidate_scores(logits: Array, batch: Batch) -> Array:
    """``float32[B, C]``: each single-token candidate's log-probability after its prompt."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(batch["candidate_ids"], jnp.int32), axis=-1)


def shared_classification_from_logits(logits: Array, batch: Batch) -> Array:
    r"""Cross-entropy over single-token candidates from the next-token logits of the prompts.

    .. math::

       s_{bc} = \log \operatorname{softmax}(\ell_b)_{k_{bc}}, \qquad
       L = -\frac{1}{B} \sum_b \log \operatorname{softmax}(s_{b\cdot})_{y_b},

    with ``k_{bc}`` the token of candidate ``c`` (``candidate_ids``) and padded candidates masked.

    Args:
      logits: ``float32[B, V]`` logits after each prompt's last token.
      batch: a shared-prompt batch (``candidate_ids [B, C]``, ``candidate_mask``, ``labels``).

    Returns:
      the scalar loss (equal to :func:`classification_from_logprobs` on the per-candidate batch).
    """
    return candidate_nll(shared_candidate_scores(logits, batch), batch).mean()


def candidate_scores_from_logprobs(logprobs: Array, batch: Batch) -> Array:
    """``float32[B, C]``: each candidate's mean option-token log-probability (the logits of
    :func:`classification_from_logprobs`)."""
    tm = shifted_target_mask(batch["target_mask"])
    b, c = tm.shape[:2]
    return target_mean(logprobs.reshape(b, c, -1), tm)


def negative_accuracy(scores: Array, batch: Batch) -> Array:
    r"""MeZO's non-differentiable accuracy objective: minus the fraction of correct predictions.

    .. math::

       \hat c_b = \arg\max_{c:\,\text{mask}_{bc} = 1} s_{bc}, \qquad
       L = -\frac{1}{B} \sum_b \text{gold}_{b \hat c_b}

    (a prediction is correct when it is any gold candidate, as ReCoRD's metric; elsewhere the one
    label). Piecewise constant in the parameters: only a zeroth-order method can train on it.

    Args:
      scores: ``float32[B, C]`` candidate scores.
      batch: ``candidate_mask [B, C]``, ``gold_mask [B, C]``.

    Returns:
      the scalar loss in ``[−1, 0]``.
    """
    scores = jnp.where(jnp.asarray(batch["candidate_mask"]) > 0, scores, NEG)
    predicted = jnp.argmax(scores, axis=-1)
    gold = jnp.asarray(batch["gold_mask"], jnp.float32)
    return -jnp.mean(jnp.take_along_axis(gold, predicted[:, None], axis=-1)[:, 0])


def accuracy_from_logprobs(logprobs: Array, batch: Batch) -> Array:
    """:func:`negative_accuracy` of a candidate batch's token log-probabilities
    (``float32[B·C, T−1]``)."""
    return negative_accuracy(candidate_scores_from_logprobs(logprobs, batch), batch)


def accuracy_from_logits(logits: Array, batch: Batch) -> Array:
    """:func:`negative_accuracy` of a shared-prompt batch's next-token logits (``float32[B, V]``)."""
    return negative_accuracy(shared_candidate_scores(logits, batch), batch)


OBJECTIVES: dict[str, Callable[[Array, Batch], Array]] = {
    "classification": classification_from_logprobs,
    "lm": lm_from_logprobs,
    "accuracy": accuracy_from_logprobs,
}
"""Objective name -> the objective as a function of ``(logprobs float32[N, T−1], batch)``
(``Task.objective``'s two, and the accuracy of candidate batches)."""

SHARED_PROMPT_OBJECTIVES: dict[str, Callable[[Array, Batch], Array]] = {
    "classification": shared_classification_from_logits,
    "accuracy": accuracy_from_logits,
}
"""The same objectives for shared-prompt batches, as functions of ``(logits float32[B, V], batch)``."""


# ---------------------------------------------------------------------- from a logits function
def _next_token_logprobs(logits_fn: LogitsFn, params: Any, batch: Batch) -> Array:
    """``float32[N, T−1]`` next-token log-probabilities of the batch's (flattened) rows."""
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    ids = ids.reshape(-1, ids.shape[-1])
    mask = jnp.asarray(batch["attention_mask"], jnp.int32).reshape(ids.shape)
    return token_logprobs(logits_fn(params, ids, mask), ids)[:, 1:]


def classification_loss(logits_fn: LogitsFn, params: Any, batch: Batch) -> Array:
    """MeZO's ``train_as_classification`` loss (:func:`classification_from_logprobs`) of a model
    given by its ``logits_fn``."""
    return classification_from_logprobs(_next_token_logprobs(logits_fn, params, batch), batch)


def lm_loss(logits_fn: LogitsFn, params: Any, batch: Batch) -> Array:
    """Teacher-forced LM cross-entropy on the target tokens (:func:`lm_from_logprobs`) of a model
    given by its ``logits_fn``."""
    return lm_from_logprobs(_next_token_logprobs(logits_fn, params, batch), batch)


def objective_for(task: Task) -> Callable[[LogitsFn, Any, Batch], Array]:
    """MeZO's objective for ``task`` as a function of ``(logits_fn, params, batch)``:
    :func:`classification_loss` or :func:`lm_loss`."""
    return {"classification": classification_loss, "lm": lm_loss}[task.objective]


def generate_texts(
    generate_fn: GenerateFn,
    tokenizer: TokenizerLike,
    prompts: Sequence[list[int]],
    stop: str = "\n",
    stop_rule: str = "text",
) -> list[str]:
    """Greedy generations of a batch of prompts (one ``generate_fn(prompts) -> new ids of each``
    call), decoded and cleaned by :func:`~zojax.tasks.metrics.clean_generation` (``"text"``: cut
    at ``stop`` and stripped; ``"mezo"``: stripped). ``generate_fn`` should stop by the same
    ``stop_rule`` (:meth:`zojax.models.Model.generate_batch`)."""
    outs = generate_fn([list(p) for p in prompts])
    return [clean_generation(tokenizer.decode(list(o)), stop, stop_rule) for o in outs]
