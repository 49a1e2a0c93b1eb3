r"""Training on the metric itself: SQuAD/DROP F1 of greedy generations as a zeroth-order loss.

MeZO's non-differentiable objective (its ``--non_diff``): the loss of a batch is minus the mean
F1 of the model's greedy answers, ``L(θ) = −(1/B) Σ_b F1(decode(greedy_θ(prompt_b)), answers_b)``,
so ``L(θ ± εz)`` is measured by generating with the perturbed parameters. Accuracy, the
classification counterpart, needs no generation and lives in :mod:`zojax.tasks.scoring`
(:func:`~zojax.tasks.scoring.negative_accuracy`).

The generation runs inside the jitted step as ``max_new_tokens`` fixed decode steps, each a full
forward of the prompt and the tokens so far (:func:`greedy_tokens`): no KV cache, so the
perturbation stays on the fly inside every forward and the step keeps its inference memory, at
the price of ``max_new_tokens`` forwards per loss evaluation (keep ``--max-new-tokens`` small).
The F1 itself (SQuAD normalisation, max over gold answers, the stop rule) is computed on the host
by :class:`F1Scorer` through ``jax.pure_callback``, exactly as evaluation computes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models import PerturbableModelLoss
from zojax.models.generation import stop_token_ids
from zojax.tasks.base import Example
from zojax.tasks.metrics import clean_generation, f1_score

PyTree = Any
Array = jax.Array


def greedy_tokens(
    lm: Any,
    params: PyTree,
    input_ids: Array,
    attention_mask: Array,
    num_new: int,
    pad_id: int,
    *,
    frozen: PyTree = None,
    perturbation: Any = None,
) -> Array:
    r"""``num_new`` greedy tokens after each left-padded prompt, jittable and perturbable.

    .. math::

       x_{T+k} = \arg\max_v \operatorname{logits}_\theta(x_{<T+k})_v, \quad k = 0 \dots N-1

    Each step is one forward of the whole ``[B, T + N]`` buffer (later slots are not yet seen:
    attention is causal), so ``perturbation`` applies inside every forward with no parameter copy.

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted`.
      params: its (trainable) parameters.
      input_ids, attention_mask: ``int32[B, T]`` prompts, left-padded.
      num_new: ``N``, tokens to generate (no early stop: the caller cuts at a stop token).
      pad_id: the id the not-yet-generated slots hold.
      frozen: an adapted model's frozen base parameters.
      perturbation: ``(direction, scale)`` to generate with ``params + scale · v``.

    Returns:
      ``int32[B, N]``.
    """
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.asarray(attention_mask, jnp.int32)
    b, t = ids.shape
    buf = jnp.concatenate([ids, jnp.full((b, num_new), pad_id, jnp.int32)], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones((b, num_new), jnp.int32)], axis=1)

    def step(k: Array, buf: Array) -> Array:
        h = lm.hidden_states(params, buf, full_mask, frozen=frozen, perturbation=perturbation)
        last = jax.lax.dynamic_index_in_dim(h, t - 1 + k, axis=1, keepdims=False)
        logits = lm.head_logits(params, last, frozen=frozen, perturbation=perturbation)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.lax.dynamic_update_index_in_dim(buf, token, t + k, axis=1)

    buf = jax.lax.fori_loop(0, num_new, step, buf)
    return buf[:, t:]


class F1Scorer:
    """Host-side F1 of generated token ids against training examples' answers.

    Attributes:
      answers: the gold answers of each training example (indexed by ``example_index``).
      tokenizer: decodes the tokens.
      stop_ids: ids that end a generation (EOS, and the newline token under the ``mezo`` rule).
      stop_rule: ``"text"`` (cut at the first newline of the text) or ``"mezo"`` (see
        :func:`zojax.tasks.metrics.clean_generation`).
    """

    def __init__(self, examples: Sequence[Example], tokenizer: Any, stop_rule: str = "text") -> None:
        self.answers = [tuple(ex.answers) for ex in examples]
        self.tokenizer = tokenizer
        self.stop_rule = stop_rule
        eos = getattr(tokenizer, "eos_id", None)
        stops = {int(eos)} if eos is not None else set()
        if stop_rule == "mezo":
            stops |= set(stop_token_ids(tokenizer, ["\n"]))
        self.stop_ids = stops

    def text(self, tokens: Sequence[int]) -> str:
        """The cleaned answer of one generation (cut at the first stop id, then by the rule)."""
        out: list[int] = []
        for tok in tokens:
            if int(tok) in self.stop_ids:
                break
            out.append(int(tok))
        return clean_generation(self.tokenizer.decode(out), "\n", self.stop_rule)

    def __call__(self, tokens: np.ndarray, example_index: np.ndarray) -> np.ndarray:
        """``float32[B]``: the F1 of each row's generation against its example's answers."""
        tokens, example_index = np.asarray(tokens), np.asarray(example_index)
        return np.asarray(
            [f1_score(self.text(row), self.answers[int(i)]) for row, i in zip(tokens, example_index, strict=True)],
            np.float32,
        )

    def negative_f1(self, tokens: Array, batch: Mapping[str, Any]) -> Array:
        """``−mean_b F1_b`` of generated ``tokens [B, N]`` (a ``jax.pure_callback``)."""
        index = jnp.asarray(batch["example_index"], jnp.int32)
        out = jax.ShapeDtypeStruct(index.shape, jnp.float32)
        f1 = jax.pure_callback(self, out, tokens, index, vmap_method="sequential")
        return -jnp.mean(f1)


def f1_loss(
    lm: Any, batch: Mapping[str, Any], scorer: F1Scorer, num_new: int, pad_id: int, frozen: PyTree = None
) -> PerturbableModelLoss:
    """Minus the mean F1 of ``lm``'s greedy answers to a prompt batch, as a perturbable loss.

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted`.
      batch: ``input_ids``/``attention_mask [B, T]`` (left-padded prompts) and ``example_index
        [B]`` (into ``scorer.answers``).
      scorer: the host-side F1.
      num_new: tokens generated per prompt (``--max-new-tokens``).
      pad_id: the tokenizer's pad id.
      frozen: an adapted model's frozen base parameters.

    Returns:
      ``loss`` with ``loss(params)`` and ``loss.perturbed(params, v, s)``.
    """
    fn = functools.partial(
        greedy_tokens,
        lm,
        input_ids=jnp.asarray(batch["input_ids"], jnp.int32),
        attention_mask=jnp.asarray(batch["attention_mask"], jnp.int32),
        num_new=num_new,
        pad_id=pad_id,
        frozen=frozen,
    )
    return PerturbableModelLoss(fn, functools.partial(scorer.negative_f1, batch=batch))


__all__ = ["F1Scorer", "f1_loss", "greedy_tokens"]
