r"""A run's pieces, assembled from its configuration: task splits, model, trainable/frozen split,
fixed-shape batches, optimizer, jitted step and evaluator."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zojax.models import Model
from zojax.tasks.encode import pad_id
from zojax.train.config import TrainConfig, is_zo
from zojax.train.data import TrainBatches
from zojax.train.evaluation import Evaluator
from zojax.train.loss import LossOf, training_loss
from zojax.train.metric_loss import F1Scorer
from zojax.train.models import build_model
from zojax.train.placement import Placement, parse_mesh
from zojax.train.step import StepFn, Tuned, build_optimizer, build_step, prepare_tuning

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run works with (everything but the parameters, which the loop owns and donates).

    Attributes:
      task: the task.
      splits: its MeZO splits (``train``, ``dev``, ``test``, ``train_pool``, ``meta``).
      tokenizer: the model's tokenizer.
      model_desc: ``repr`` of the model (for logs and the report).
      tuned: the tuning split with its initial ``params`` taken out (``None``).
      forwards_per_step: forward passes per training step.
      data: the training batches (``None`` for evaluation-only methods).
      tx: the optimizer (``None`` for evaluation-only methods).
      step_fn: the jitted step (``None`` for evaluation-only methods).
      evaluate: ``evaluate(params, split)``.
      placement: where the parameters and batches live (``--mesh``).
    """

    task: Any
    splits: Any
    tokenizer: Any
    model_desc: str
    tuned: Tuned
    forwards_per_step: int
    data: TrainBatches | None
    tx: optax.GradientTransformation | None
    step_fn: StepFn | None
    evaluate: Evaluator
    placement: Placement = dataclasses.field(default_factory=Placement)


def load_splits(config: TrainConfig) -> Any:
    """The task's MeZO splits for ``config``'s seed, sizes and data folder (:meth:`Task.splits`)."""
    from zojax.tasks import get_task

    d = config.data
    return get_task(d.task).splits(
        seed=config.run.seed, num_train=d.num_train, num_dev=d.num_dev, num_test=d.num_test, data_dir=d.data_dir
    )


def job_loss(config: TrainConfig, task: Any, data: TrainBatches) -> LossOf:
    """The run's training objective (``--objective``): the task's own loss, or minus its metric."""
    objective = config.optim.objective
    if objective != "f1":
        return training_loss(task.objective if objective == "task" else objective)
    scorer = F1Scorer(data.examples, data.tokenizer, config.eval.stop_rule)
    return training_loss("f1", scorer, config.data.max_new_tokens, pad_id(data.tokenizer))


def build_job(config: TrainConfig, model: Model | None = None, params: PyTree = None) -> tuple[Job, PyTree]:
    """The job of ``config`` (resolved) and its initial trainable parameters.

    Args:
      config: the run's configuration.
      model, params: an already loaded model and its parameters (else ``config.model.name`` is
        loaded).
    """
    from zojax.tasks import get_task

    c = config
    task = get_task(c.data.task)
    splits = load_splits(c)
    from zojax.train.preflight import check_train_split

    check_train_split(c, splits)  # before the model is loaded
    placement = Placement(parse_mesh(c.run.mesh))
    if (model is None) != (params is None):
        raise ValueError("build_job: pass both the model and its params, or neither")
    if model is None:
        # master weights: float32 parameters, bfloat16 compute (the model's dtype)
        # a Hugging Face checkpoint goes straight onto the mesh: each process reads only its slices
        shardings = placement.param_shardings if placement.mesh is not None else None
        dtype = "float32" if c.model.master_weights else c.model.dtype
        model, params = build_model(c.model.name, dtype, c.model.opt_bos, shardings)
    if c.model.master_weights:
        model = model.replace(dtype="bfloat16")
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("--model: the model has no tokenizer")
    model_desc = repr(model)
    tuned = prepare_tuning(model, params, c)
    del model, params
    frozen = tuned.frozen
    if c.model.master_weights and frozen is not None:  # only the trained weights need float32
        frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), frozen)
    tuned = dataclasses.replace(tuned, params=placement.params(tuned.params), frozen=placement.params(frozen))
    data = tx = step_fn = None
    if c.training:
        data = TrainBatches(
            task,
            splits.train.examples,
            tokenizer,
            c.optim.batch_size,
            c.run.seed,
            c.data.max_length,
            c.data.max_new_tokens,
            objective=c.optim.objective,
        )
        tx = build_optimizer(c)
        step_fn = build_step(tuned, job_loss(c, task, data), tx, is_zo(c.optim.method))
    params = tuned.params
    tuned = dataclasses.replace(tuned, params=None)  # the loop owns (donates) them
    evaluate = Evaluator(c, task, splits, tokenizer, tuned, placement)
    job = Job(task, splits, tokenizer, model_desc, tuned, c.forwards_per_step(), data, tx, step_fn, evaluate, placement)
    return job, params
