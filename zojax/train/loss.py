"""MeZO's training objectives on a task batch as :class:`zojax.models.PerturbableModelLoss` objects.

The objectives are those of :mod:`zojax.tasks.scoring` (:data:`~zojax.tasks.scoring.OBJECTIVES`;
classification: cross-entropy over candidates whose logits are the mean option-token
log-probabilities; ``lm``: teacher-forced cross-entropy on the gold answer tokens), fed the
model's memory-friendly ``token_logprobs`` (hidden states shifted before the head, chunked
log-softmax) instead of full ``[N, T, V]`` logits. The perturbed evaluation ``L(θ + s·v)`` passes
``perturbation=(v, s)`` to the model, which perturbs each layer inside its scan, so no perturbed
copy of ``θ`` is made.

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

from zojax.models import PerturbableModelLoss
from zojax.tasks.scoring import OBJECTIVES, SHARED_PROMPT_OBJECTIVES
from zojax.train.metric_loss import F1Scorer, f1_loss

PyTree = Any
Array = jax.Array
Batch = Mapping[str, Any]


def _flat(x: Any) -> Array:
    x = jnp.asarray(x, jnp.int32)
    return x.reshape(-1, x.shape[-1])


def task_loss(lm: Any, objective: str, batch: Batch, frozen: PyTree = None) -> PerturbableModelLoss:
    """The objective of a task batch as a perturbable loss of ``lm``'s parameters.

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted` (anything with
        ``token_logprobs(params, ids, mask, *, perturbation)``).
      objective: ``"classification"`` or ``"lm"`` (``Task.objective``), or ``"accuracy"`` (minus
        the accuracy of a candidate batch: :func:`zojax.tasks.scoring.negative_accuracy`).
      batch: the batch (numpy or jax arrays; classification ids are ``[B, C, T]``, or ``[B, T]``
        with ``candidate_ids [B, C]`` for shared prompts).
      frozen: an adapted model's frozen base parameters (``None`` for a full model).

    Returns:
      ``loss`` with ``loss(params)`` and ``loss.perturbed(params, v, s)`` (on-the-fly).

    Example:
      >>> loss = task_loss(model, "classification", batch)
      >>> loss(params), loss.perturbed(params, Direction.single(key), 1e-3)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    if "candidate_ids" in batch:  # shared prompts, single-token candidates
        if objective not in SHARED_PROMPT_OBJECTIVES:
            raise ValueError(f"objective: {objective!r} does not apply to a candidate batch")
        fn = functools.partial(
            lm.last_token_logits,
            input_ids=jnp.asarray(batch["input_ids"], jnp.int32),
            attention_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
            frozen=frozen,
        )
        return PerturbableModelLoss(fn, functools.partial(SHARED_PROMPT_OBJECTIVES[objective], batch=batch))
    fn = functools.partial(
        lm.token_logprobs,
        input_ids=_flat(batch["input_ids"]),
        attention_mask=_flat(batch["attention_mask"]),
        frozen=frozen,
    )
    return PerturbableModelLoss(fn, functools.partial(OBJECTIVES[objective], batch=batch))


LossOf = Callable[[Any, Batch, PyTree], PerturbableModelLoss]
"""``(lm, batch, frozen) -> loss``: the training objective of a batch as a perturbable loss of
``lm``'s (trainable) parameters, ``frozen`` its frozen base (``None`` for a full model)."""


def training_loss(objective: str, scorer: F1Scorer | None = None, num_new: int = 0, pad_id: int = 0) -> LossOf:
    """The trainer's objective: ``"classification"``/``"lm"``/``"accuracy"`` (:func:`task_loss`) or
    ``"f1"`` (:func:`zojax.train.metric_loss.f1_loss` with ``scorer``, ``num_new`` tokens, ``pad_id``).

    Example:
      >>> loss_of = training_loss(task.objective)
      >>> loss_of(model, batch, None)(params)
    """
    if objective == "f1":
        if scorer is None:
            raise ValueError("objective 'f1': needs the F1 scorer of the training examples")
        return functools.partial(_f1_loss_of, scorer=scorer, num_new=num_new, pad_id=pad_id)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted((*OBJECTIVES, 'f1'))}, got {objective!r}")
    return functools.partial(_task_loss_of, objective=objective)


def _task_loss_of(lm: Any, batch: Batch, frozen: PyTree, *, objective: str) -> PerturbableModelLoss:
    return task_loss(lm, objective, batch, frozen)


def _f1_loss_of(
    lm: Any, batch: Batch, frozen: PyTree, *, scorer: F1Scorer, num_new: int, pad_id: int
) -> PerturbableModelLoss:
    return f1_loss(lm, batch, scorer, num_new, pad_id, frozen)
