"""MeZO's training objectives on a task batch as :class:`zojax.models.PerturbableModelLoss` objects.

The objectives are those of :mod:`zojax.tasks.scoring` (classification: cross-entropy over
candidates whose logits are the mean option-token log-probabilities; ``lm``: teacher-forced
cross-entropy on the gold answer tokens), computed from the model's memory-friendly
``token_logprobs`` (hidden states shifted before the head, chunked log-softmax) instead of full
``[N, T, V]`` logits. The perturbed evaluation ``L(θ + s·v)`` passes ``perturbation=(v, s)`` to the
model, which perturbs each layer inside its scan, so no perturbed copy of ``θ`` is made.

Shared prompts: when every candidate of every example is the same prompt followed by one option
token (all of MeZO's classification tasks with SmolLM2's and Llama's tokenizers: " great" /
" terrible", "Yes" / "No" / "Maybe"), a batch holds each prompt once with the candidates' token ids
(:func:`zojax.train.data.TrainBatches` builds it) and the loss runs one forward per example
instead of one per candidate, with the LM head applied at the last position only. It is the same
objective: a candidate's mean option log-probability is then the log-probability of its one token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from zojax.models import Adapted, PerturbableModelLoss
from zojax.models.model import project
from zojax.tasks.scoring import NEG

PyTree = Any
Array = jax.Array
Batch = Mapping[str, Any]


def shifted_target_mask(target_mask: Array) -> Array:
    """``target_mask[..., 1:]``: the weights of ``token_logprobs``' outputs (targets ``t ≥ 1``)."""
    return jnp.asarray(target_mask, jnp.float32)[..., 1:]


def classification_from_logprobs(logprobs: Array, batch: Batch) -> Array:
    """Cross-entropy over candidates from token log-probabilities.

    .. math::

       s_{bc} = \\frac{\\sum_t m_{bct} \\log p(x_{bct})}{\\max(\\sum_t m_{bct}, 1)}, \\qquad
       L = -\\frac{1}{B} \\sum_b \\log \\operatorname{softmax}(s_{b\\cdot})_{y_b},

    with padded candidates' scores set to a large negative value.

    Args:
      logprobs: ``float32[B·C, T−1]``, ``log p(x_{t+1} | x_{≤t})``.
      batch: a classification batch (``target_mask [B, C, T]``, ``candidate_mask``, ``labels``).

    Returns:
      the scalar loss.
    """
    tm = shifted_target_mask(batch["target_mask"])
    b, c = tm.shape[:2]
    lp = logprobs.reshape(b, c, -1)
    scores = jnp.sum(lp * tm, -1) / jnp.maximum(jnp.sum(tm, -1), 1.0)
    return candidate_nll(scores, batch).mean()


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


def shared_candidate_scores(logits: Array, batch: Batch) -> Array:
    """``float32[B, C]``: each single-token candidate's log-probability after its prompt."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(batch["candidate_ids"], jnp.int32), axis=-1)


def last_token_logits(
    lm: Any,
    params: PyTree,
    input_ids: Array,
    attention_mask: Array,
    *,
    perturbation: Any = None,
) -> Array:
    """float32 ``[B, V]`` logits after the last (left-padded) position, head applied there only.

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted`.
      params: its (trainable) parameters.
      input_ids, attention_mask: ``int32[B, T]``, left-padded.
      perturbation: ``(direction, scale)`` to evaluate at ``params + scale · v`` on the fly.
    """
    h = lm.hidden_states(params, input_ids, attention_mask, perturbation=perturbation)[:, -1]
    if isinstance(lm, Adapted):
        return project(lm.model.config, lm.base, h)
    return project(lm.config, params, h, perturbation)


OBJECTIVES: dict[str, Callable[[Array, Batch], Array]] = {
    "classification": classification_from_logprobs,
    "lm": lm_from_logprobs,
}


def _flat(x: Any) -> Array:
    x = jnp.asarray(x, jnp.int32)
    return x.reshape(-1, x.shape[-1])


def task_loss(lm: Any, objective: str, batch: Batch) -> PerturbableModelLoss:
    """The objective of a task batch as a perturbable loss of ``lm``'s parameters.

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted` (anything with
        ``token_logprobs(params, ids, mask, *, perturbation)``).
      objective: ``"classification"`` or ``"lm"`` (``Task.objective``).
      batch: the batch (numpy or jax arrays; classification ids are ``[B, C, T]``, or ``[B, T]``
        with ``candidate_ids [B, C]`` for shared prompts).

    Returns:
      ``loss`` with ``loss(params)`` and ``loss.perturbed(params, v, s)`` (on-the-fly).

    Example:
      >>> loss = task_loss(model, "classification", batch)
      >>> loss(model.params), loss.perturbed(model.params, Direction.single(key), 1e-3)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    if "candidate_ids" in batch:  # shared prompts, single-token candidates
        fn = functools.partial(
            last_token_logits,
            lm,
            input_ids=jnp.asarray(batch["input_ids"], jnp.int32),
            attention_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
        )
        return PerturbableModelLoss(fn, functools.partial(shared_classification_from_logits, batch=batch))
    fn = functools.partial(
        lm.token_logprobs,
        input_ids=_flat(batch["input_ids"]),
        attention_mask=_flat(batch["attention_mask"]),
    )
    return PerturbableModelLoss(fn, functools.partial(OBJECTIVES[objective], batch=batch))
