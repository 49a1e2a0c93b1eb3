r"""Model selection on dev: the training objective over a split, and the best-step rule.

MeZO selects the checkpoint with the lowest dev loss of its training objective (the Hugging Face
Trainer's default ``eval_loss``): for the classification tasks the cross-entropy over candidates,
for COPA, ReCoRD, SQuAD and DROP the teacher-forced LM loss on the gold answer. :class:`DevObjective`
computes it over a whole split as if the split were one batch,

.. math::

   L_\text{dev} = \frac{\sum_b w_b\,\ell_b}{\sum_b w_b},

with :math:`\ell_b` the per-example cross-entropy and :math:`w_b = 1` (classification), or
:math:`\ell_b` the summed token NLL and :math:`w_b` the number of answer tokens (``lm``), so the
value does not depend on the evaluation batch size. :class:`BestTracker` keeps the best step by
that loss (lower is better) or by the task metric (higher is better); ties go to the later step,
and the untrained step-0 parameters are never chosen unless asked (``select_initial``).
:class:`Evaluator` evaluates parameters on a split: the task metric, and these losses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models.rows import LOCAL, Rows, padded_rows
from zojax.tasks import Example, Task
from zojax.tasks.evaluate import ShouldStop, passes
from zojax.tasks.scoring import candidate_nll, shared_candidate_scores, shifted_target_mask, target_mean
from zojax.train.config import TrainConfig
from zojax.train.data import TrainBatches

PyTree = Any
Array = jax.Array


def objective_sums(
    lm: Any, objective: str, params: PyTree, batch: Mapping[str, Any], frozen: PyTree = None
) -> tuple[Array, Array]:
    r"""``(Σ_b w_b ℓ_b, Σ_b w_b)`` of a batch whose rows carry ``example_weight`` (0 for padding).

    Args:
      lm: a :class:`zojax.models.Model` or :class:`zojax.models.Adapted`.
      objective: ``"classification"`` or ``"lm"``.
      params: ``lm``'s (trainable) parameters.
      batch: a :class:`~zojax.train.data.TrainBatches` batch plus ``example_weight float32[B]``.
      frozen: an adapted model's frozen base parameters.

    Returns:
      the weighted sum of losses and the total weight (scalars).
    """
    w = jnp.asarray(batch["example_weight"], jnp.float32)
    ids, mask = jnp.asarray(batch["input_ids"], jnp.int32), jnp.asarray(batch["attention_mask"], jnp.int32)
    if "candidate_ids" in batch:
        logits = lm.last_token_logits(params, ids, mask, frozen=frozen)
        nll = candidate_nll(shared_candidate_scores(logits, batch), batch)
        return jnp.sum(w * nll), jnp.sum(w)
    flat_ids, flat_mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
    logprobs = lm.token_logprobs(params, flat_ids, flat_mask, frozen=frozen)
    tm = shifted_target_mask(batch["target_mask"])
    if objective == "classification":
        b, c = tm.shape[:2]
        nll = candidate_nll(target_mean(logprobs.reshape(b, c, -1), tm), batch)
        return jnp.sum(w * nll), jnp.sum(w)
    tm = tm * w[:, None]
    return -jnp.sum(logprobs * tm), jnp.sum(tm)


class DevObjective:
    """The training objective over a fixed split, in fixed-shape batches (one compile).

    Attributes:
      batches: the split's batches (the last one padded with zero-weight rows).
      n: the number of examples.
    """

    def __init__(
        self,
        task: Task,
        examples: Sequence[Example],
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int = 2048,
        max_new_tokens: int = 50,
        placement: Rows = LOCAL,
    ) -> None:
        """Encodes ``examples`` once.

        Args:
          task: the task (its ``objective`` is the loss).
          examples: the split (non-empty).
          tokenizer: the tokenizer.
          batch_size: rows per evaluation batch (rounded up to a multiple of ``placement.data_size``).
          max_length: cap on sequence length (left truncation keeping BOS), as in training.
          max_new_tokens: generation budget (as in training; ``lm`` sequences leave room for it).
          placement: where each batch's rows live (default: one device; a mesh splits them over
            ``data``).
        """
        self.objective = task.objective
        self.n = len(examples)
        self.placement = placement
        batch_size = padded_rows(batch_size, placement.data_size)
        enc = TrainBatches(task, examples, tokenizer, batch_size, 0, max_length, max_new_tokens)
        self.batches: list[dict[str, np.ndarray]] = []
        for start in range(0, self.n, batch_size):
            exs = list(examples[start : start + batch_size])
            real = len(exs)
            exs += [examples[0]] * (batch_size - real)
            b = enc.batch_of(exs)
            b["example_weight"] = (np.arange(batch_size) < real).astype(np.float32)
            self.batches.append(b)

    def __call__(self, sums_fn: Callable[[PyTree, PyTree, Mapping[str, Any]], tuple[Array, Array]],
                 params: PyTree, frozen: PyTree, should_stop: ShouldStop | None = None) -> float:  # fmt: skip
        """``L_dev`` with ``sums_fn(params, frozen, batch) -> (Σ w ℓ, Σ w)`` (jitted by the caller);
        raises :class:`~zojax.tasks.EvaluationStopped` when ``should_stop()`` is true before a batch."""
        total, weight = 0.0, 0.0
        for b in passes(self.batches, "dev loss", False, should_stop):
            s, n = jax.device_get(sums_fn(params, frozen, self.placement.batch(b)))
            total, weight = total + float(s), weight + float(n)
        return total / weight if weight > 0 else math.nan


def jitted_objective_sums(lm: Any, objective: str) -> Callable:
    """``jit((params, frozen, batch) -> objective_sums(lm, objective, params, batch, frozen))``."""

    def fn(params: PyTree, frozen: PyTree, batch: Mapping[str, Any]) -> tuple[Array, Array]:
        return objective_sums(lm, objective, params, batch, frozen)

    return jax.jit(fn)


@dataclasses.dataclass
class BestTracker:
    """The best dev step so far.

    Attributes:
      select_by: ``"loss"`` (MeZO's rule: lowest dev objective) or ``"metric"`` (highest metric).
      select_initial: whether the step-0 (untrained) parameters may be chosen.
      best: ``{"step", "value", "select_by", "metric", "metric_value"}`` or ``None``.
    """

    select_by: str = "loss"
    select_initial: bool = False
    best: dict[str, Any] | None = None

    def offer(self, step: int, value: float, metric: str, metric_value: float) -> bool:
        """Records ``step`` if it is the best so far (ties go to the later step); returns whether it is.

        Args:
          step: the training step the parameters come from.
          value: the selection value (dev objective for ``"loss"``, metric for ``"metric"``).
          metric: the task metric's name.
          metric_value: its value (kept for the report).
        """
        if step == 0 and not self.select_initial:
            return False
        if value is None or math.isnan(value):
            return False
        if self.best is not None:
            current = self.best["value"]
            worse = value > current if self.select_by == "loss" else value < current
            if worse:
                return False
        self.best = {
            "step": step,
            "value": value,
            "select_by": self.select_by,
            "metric": metric,
            "metric_value": metric_value,
        }
        return True


def _adapted_logits(adapted: Any, p: Mapping[str, PyTree], input_ids: Array, attention_mask: Array) -> Array:
    """``logits_fn`` of an adapter for evaluation: ``p = {"frozen", "trainable"}``."""
    return adapted.logits(p["trainable"], input_ids, attention_mask, frozen=p["frozen"])


class Evaluator:
    """Evaluates trainable parameters on the dev or test split of a run.

    Attributes:
      dev_objective: the training objective on dev, for ``lm`` tasks (classification tasks take
        it from the candidate scores the metric needs anyway), else ``None``.
    """

    def __init__(
        self, config: TrainConfig, task: Task, splits: Any, tokenizer: Any, tuned: Any, placement: Rows = LOCAL
    ) -> None:
        """Encodes the dev objective's batches once.

        Args:
          config: the run's (resolved) configuration.
          task: the task.
          splits: its splits (``train_pool``, ``dev``, ``test``).
          tokenizer: the tokenizer.
          tuned: the :class:`~zojax.train.step.Tuned` model (its ``lm`` and ``frozen``).
          placement: where evaluation's and generation's rows live (the run's
            :class:`~zojax.train.placement.Placement`: split over the mesh's ``data`` axis).
        """
        c = config
        self.config, self.task, self.splits, self.tokenizer, self.tuned = c, task, splits, tokenizer, tuned
        self.placement = placement
        self.dev_objective: DevObjective | None = None
        self._dev_sums: Callable | None = None
        if task.objective == "lm" and len(splits.dev) > 0:
            # the dev loss of the training objective (MeZO's selection rule) needs its own forwards
            self.dev_objective = DevObjective(
                task,
                splits.dev.examples,
                tokenizer,
                c.optim.batch_size,
                c.data.max_length,
                c.data.max_new_tokens,
                placement,
            )
            self._dev_sums = jitted_objective_sums(tuned.lm, task.objective)
        if c.model.tuning == "full":
            self._logits = tuned.lm.logits
        else:
            self._logits = functools.partial(_adapted_logits, tuned.lm)

    def __call__(self, params: PyTree, split: str, should_stop: ShouldStop | None = None) -> dict[str, Any]:
        """Evaluates ``params`` on ``split`` (``"dev"`` or ``"test"``).

        ``should_stop()``, when given, is asked before every forward pass; when it is true the
        evaluation stops there and raises :class:`~zojax.tasks.EvaluationStopped`.

        Returns:
          ``{metric, value, n, loss, eval_time}``: ``loss`` is the training objective on the split
          (candidate cross-entropy for classification; the LM loss on the gold answer for
          ``lm`` tasks, dev only), and ``choice_loss`` the candidate cross-entropy of
          multiple-choice tasks.
        """
        from zojax.tasks import evaluate

        c, tuned = self.config, self.tuned
        examples = getattr(self.splits, split).examples
        num_demos = c.eval.num_demos if c.optim.method == "icl" else 0
        full = c.model.tuning == "full"
        eval_params = params if full else {"frozen": tuned.frozen, "trainable": params}

        def generate_fn(prompts: list[list[int]]) -> list[list[int]]:
            return tuned.lm.generate_batch(
                params,
                prompts,
                frozen=tuned.frozen,
                max_new_tokens=c.data.max_new_tokens,
                stop_strings=("\n",),
                stop_rule=c.eval.stop_rule,
                placement=self.placement,
            )

        kw: dict[str, Any] = {
            "max_length": c.data.eval_max_length,
            "progress": c.run.progress,
            "token_budget": c.eval.token_budget,
            "placement": self.placement,
            "should_stop": should_stop,
        }
        if self.task.generation:
            kw.update(max_new_tokens=c.data.max_new_tokens, stop_rule=c.eval.stop_rule)
        else:
            kw.update(pad_to_multiple_of=8)
        t0 = time.perf_counter()
        res = evaluate(
            self.task,
            examples,
            self.tokenizer,
            logits_fn=self._logits,
            params=eval_params,
            generate_fn=generate_fn,
            num_demos=num_demos,
            demo_pool=self.splits.train_pool,
            **kw,
        )
        out: dict[str, Any] = {"metric": res.metric, "value": float(res.value), "n": res.n}
        if res.scores:
            ce = []
            for s, ex in zip(res.scores, examples, strict=True):
                s = np.asarray(s, np.float64)
                lse = s.max() + np.log(np.sum(np.exp(s - s.max())))
                ce.append(lse - s[ex.label])
            out["loss"] = float(np.mean(ce))
        if self.task.objective == "lm":
            if "loss" in out:
                out["choice_loss"] = out.pop("loss")
            if split == "dev" and self.dev_objective is not None:
                out["loss"] = self.dev_objective(self._dev_sums, params, tuned.frozen, should_stop)
        out["eval_time"] = time.perf_counter() - t0
        return out
