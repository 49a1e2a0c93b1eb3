r"""One training step: the trainable/frozen split, the method's optimizer, the jitted update.

:func:`prepare_tuning` splits a model into the parameters a tuning scheme trains (all of them,
LoRA's or the prefix's) and the frozen rest; :func:`build_optimizer` is the registered estimator
plus SGD (zeroth order) or Adam(W) (``ft``); :func:`build_step` compiles one update

.. math::

   \theta_{t+1} = \theta_t + \mathrm{tx}(\hat g_t),\qquad
   \hat g_t = \frac{L(\theta_t + \epsilon z) - L(\theta_t - \epsilon z)}{2\epsilon}\,z
   \ \text{(MeZO; the registry's estimator in general) or}\ \nabla L(\theta_t)\ \text{(ft)},

with the parameters and optimizer state donated, zeroth-order steps perturbing the model on the fly
(:class:`~zojax.models.PerturbableModelLoss`), compiled as :func:`zojax.jit_step` compiles them
(:func:`zojax.jit_options`: donation and :data:`~zojax.ZO_COMPILER_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zojax import precision, registry
from zojax.alias import decay_mask
from zojax.models import Model
from zojax.step import jit_options, step_stats
from zojax.train.config import FO_METHOD, TrainConfig, is_zo
from zojax.train.loss import LossOf

PyTree = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A model prepared for a tuning scheme.

    Attributes:
      lm: the :class:`~zojax.models.Model` (full tuning) or :class:`~zojax.models.Adapted` (LoRA,
        prefix); like every model it holds no weights.
      params: the initial trainable parameters.
      frozen: the frozen base parameters (``None`` for full tuning), passed to ``lm``'s functions
        as ``frozen=``.
    """

    lm: Any
    params: PyTree
    frozen: PyTree


def prepare_tuning(model: Model, params: PyTree, config: TrainConfig) -> Tuned:
    """Splits ``model``'s ``params`` into trainable and frozen ones for ``config.model.tuning``."""
    m = config.model
    if m.tuning == "full":
        return Tuned(model, params, None)
    from zojax.models import lora, prefix

    if m.tuning == "lora":
        trainable, adapted = lora.init(
            model,
            params,
            config.run.seed,
            rank=m.lora_rank,
            alpha=m.lora_alpha,
            targets=tuple(m.lora_targets),
        )
    else:
        trainable, adapted = prefix.init(model, params, config.run.seed, num_virtual_tokens=m.num_virtual_tokens)
    return Tuned(adapted, trainable, params)


def build_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The method's optimizer: the registered estimator + SGD, or Adam(W) for ``ft``."""
    o = config.optim
    if is_zo(o.method):
        tx = registry.get(o.method).optimizer(
            o.lr, weight_decay=o.weight_decay, key=config.run.seed, **config.method_options()
        )
    elif o.method == FO_METHOD:
        decayed = optax.adamw(o.lr, weight_decay=o.weight_decay, mask=decay_mask)
        tx = decayed if o.weight_decay else optax.adam(o.lr)
    else:
        raise ValueError(f"--method: {o.method} does not train")
    if o.update_rounding == "stochastic":
        tx = optax.chain(tx, precision.stochastic_rounding(config.run.seed))
    return tx


StepFn = Callable[[PyTree, PyTree, PyTree, Mapping[str, Any]], tuple[PyTree, PyTree, dict]]


def build_step(tuned: Tuned, loss_of: LossOf, tx: optax.GradientTransformation, zeroth_order: bool) -> StepFn:
    """One jitted step ``(params, opt_state, frozen, batch) -> (params, opt_state, stats)``.

    ``loss_of(lm, batch, frozen)`` gives the batch's perturbable loss (:func:`zojax.train.loss.training_loss`).
    Zeroth-order: ``tx.update(params, state, params, value_fn=loss)`` with that loss, as in
    :func:`zojax.jit_step` (which this extends with the first-order branch and the ``changed``
    statistic). First order: ``jax.value_and_grad`` of the same loss, then ``tx``.
    ``params`` and ``opt_state`` are donated (:func:`zojax.jit_options`).

    Returns:
      the jitted step; ``stats`` holds ``loss`` (ZO: ``(L(θ+εv) + L(θ−εv)) / 2``) and
      ``projected_grad`` (ZO) or ``grad_norm`` (first order), plus ``nonfinite`` (ZO: skipped steps
      so far) and, for low-precision parameters, ``changed`` (the fraction of weights whose stored
      value changed).
    """

    def step(
        params: PyTree, opt_state: PyTree, frozen: PyTree, batch: Mapping[str, Any]
    ) -> tuple[PyTree, PyTree, dict[str, Array]]:
        loss = loss_of(tuned.lm, batch, frozen)
        if zeroth_order:
            updates, opt_state = tx.update(params, opt_state, params, value_fn=loss)
            stats = step_stats(opt_state)
        else:
            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            stats = {"loss": value, "grad_norm": optax.tree.norm(grads)}
        new_params = optax.apply_updates(params, updates)
        if any(jnp.dtype(x.dtype) != jnp.dtype(jnp.float32) for x in jax.tree.leaves(params)):
            stats["changed"] = precision.changed_fraction(params, new_params)
        return new_params, opt_state, stats

    return jax.jit(step, **jit_options(zeroth_order=zeroth_order))
