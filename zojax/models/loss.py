"""Losses of model outputs as :class:`zojax.perturb.PerturbableLoss` objects.

:class:`PerturbableModelLoss` binds a model function ``fn(params, *, perturbation=None)`` (a model's
``logits``/``token_logprobs`` with the batch bound, or an adapter's) and a reduction of its output
to a scalar. The estimators call ``loss(params)`` for plain evaluations and
``loss.perturbed(params, v, s)`` for ``L(θ + s·v)``, which the model evaluates with on-the-fly
perturbation inside its layer scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax.perturb import Direction, Perturbation

PyTree = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PerturbableModelLoss:
    """``L(θ) = loss_of_output(fn(θ))`` with an on-the-fly perturbed evaluation.

    Attributes:
      fn: ``fn(params, *, perturbation=None) -> output``
        (e.g. ``functools.partial(model.logits, input_ids=ids, attention_mask=mask)``).
      loss_of_output: ``output -> scalar``.

    Example:
      >>> loss = PerturbableModelLoss(functools.partial(model.logits, input_ids=x, attention_mask=m),
      ...                             lambda logits: -jnp.mean(jax.nn.log_softmax(logits)[..., 0]))
      >>> loss.perturbed(params, Direction.single(key), 1e-3)   # L(θ + 1e-3·z), no copy of θ
    """

    fn: Callable[..., Any]
    loss_of_output: Callable[[Any], Array]

    def __call__(self, params: PyTree) -> Array:
        """``L(θ)``."""
        return self.loss_of_output(self.fn(params, perturbation=None))

    def perturbed(self, params: PyTree, direction: Direction, scale: Array) -> Array:
        """``L(θ + scale · v)`` with the perturbation applied inside the model."""
        return self.loss_of_output(self.fn(params, perturbation=Perturbation(direction, scale)))


def masked_mean_nll(logprobs: Array, weights: Array) -> Array:
    """``−Σ w_t log p_t / max(Σ w_t, 1)``."""
    w = weights.astype(jnp.float32)
    return -jnp.sum(logprobs * w) / jnp.maximum(jnp.sum(w), 1.0)


def next_token_loss(
    model: Any,
    input_ids: Array,
    attention_mask: Array,
    loss_mask: Array | None = None,
    *,
    frozen: PyTree = None,
    vocab_chunk: int = 8192,
) -> PerturbableModelLoss:
    r"""The causal-LM loss: mean next-token NLL over the masked targets.

    .. math::

       L(θ) = -\frac{\sum_{b,t} m_{b,t+1}\, \log p_θ(x_{b,t+1} \mid x_{b,\le t})}
                    {\sum_{b,t} m_{b,t+1}},

    with ``m = attention_mask ⊙ loss_mask`` (``loss_mask`` selects e.g. only answer tokens; targets
    are the tokens at ``t+1``). Computed with ``model.token_logprobs`` (hidden states shifted before
    the head, chunked log-softmax).

    Args:
      model: a :class:`~zojax.models.Model` or an adapter (anything with
        ``token_logprobs(params, ids, mask, *, perturbation, vocab_chunk)``).
      input_ids, attention_mask: ``int32[B, T]``.
      loss_mask: optional ``[B, T]`` weights on target positions.
      frozen: an adapted model's frozen base parameters.

    Example:
      >>> loss = next_token_loss(model, ids, mask)
      >>> loss(params), loss.perturbed(params, Direction.single(key), 1e-3)
    """
    weights = jnp.asarray(attention_mask)[:, 1:]
    if loss_mask is not None:
        weights = weights * jnp.asarray(loss_mask)[:, 1:]
    fn = functools.partial(
        model.token_logprobs,
        input_ids=input_ids,
        attention_mask=attention_mask,
        frozen=frozen,
        vocab_chunk=vocab_chunk,
    )
    return PerturbableModelLoss(fn, functools.partial(masked_mean_nll, weights=weights))
