r"""A jitted zeroth-order step: the estimator's update, applied, with donation and exact memory.

:func:`jit_step` compiles

.. math::

   (u_t, s_{t+1}) = \mathrm{tx.update}(\theta_t, s_t, \theta_t,\ \mathtt{value\_fn}=L),\qquad
   \theta_{t+1} = \theta_t + u_t,

with the parameters :math:`\theta_t` and the optimizer state :math:`s_t` donated (updated in place)
and :data:`ZO_COMPILER_OPTIONS`, which keep a step that perturbs a model on the fly
(:class:`~zojax.perturb.PerturbableLoss`) within the memory of its forward pass. :func:`jit_options`
gives the same ``jax.jit`` arguments to a step written by hand (the trainer's
:func:`zojax.train.step.build_step`, which also returns first-order and precision statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from zojax.perturb import PerturbableLoss
from zojax.transforms import zo_state

PyTree = Any

ZO_COMPILER_OPTIONS: dict[str, str] = {
    # loop-invariant code motion would hoist the noise of loop-invariant leaves out of the layer
    # and vocabulary loops and keep it alive
    "xla_disable_hlo_passes": "while-loop-invariant-code-motion",
    # XLA:CPU library (YNNPACK) fusions: only single dots (LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT = 4).
    # The default also hands reductions and a dot's elementwise producers to the library, which
    # then needs its inputs in memory: a direction of K > UNROLL_MAX keys, summed as a reduce over
    # its K draws (zojax.perturb.Direction.leaf), would materialise [K, *leaf] noise instead of
    # fusing it into the perturbed layer and the in-place update. Ignored by other backends.
    "xla_cpu_experimental_ynn_fusion_type": "4",
}
"""XLA options for jitted zeroth-order steps that perturb on the fly (pass to ``.compile(...)`` or
``jax.jit(..., compiler_options=...)``; :func:`jit_step` and :func:`jit_options` do). Both are
re-checked by ``tests/test_memory.py`` and ``experiments/bench_memory.py``
(``docs/jax_workarounds.md``)."""


def jit_options(*, donate: bool = True, zeroth_order: bool = True) -> dict[str, Any]:
    """The ``jax.jit`` keyword arguments of a step ``(params, opt_state, ...)``.

    Args:
      donate: donate ``params`` and ``opt_state`` (arguments 0 and 1).
      zeroth_order: compile with :data:`ZO_COMPILER_OPTIONS` (``False``: XLA's defaults, for a
        first-order step).

    Returns:
      ``{"donate_argnums": ..., "compiler_options": ...}``, for ``jax.jit(step, **jit_options())``.
    """
    return {
        "donate_argnums": (0, 1) if donate else (),
        "compiler_options": dict(ZO_COMPILER_OPTIONS) if zeroth_order else None,
    }


def step_stats(opt_state: PyTree) -> dict[str, jax.Array]:
    """``loss``, ``projected_grad`` and ``nonfinite`` (skipped steps so far) of ``opt_state``'s
    :class:`~zojax.ZOState` (raises if it has none)."""
    s = zo_state(opt_state)
    return {"loss": s.loss, "projected_grad": s.projected_grad, "nonfinite": s.nonfinite_count}


StepFn = Callable[..., tuple[PyTree, PyTree, dict[str, jax.Array]]]


def jit_step(
    tx: optax.GradientTransformationExtraArgs,
    make_loss: Callable[..., Callable[[PyTree], jax.Array] | PerturbableLoss],
    *,
    donate: bool = True,
    **jit_kwargs: Any,
) -> StepFn:
    r"""One jitted zeroth-order step of ``tx`` on the loss that ``make_loss`` builds.

    .. math::

       u_t, s_{t+1} = \mathrm{tx.update}(\theta_t, s_t, \theta_t,\ \mathtt{value\_fn}=L),
       \qquad \theta_{t+1} = \theta_t + u_t,
       \qquad L = \mathtt{make\_loss}(*\mathtt{loss\_args})

    The step is ``jax.jit`` with ``params`` and ``opt_state`` donated and
    :data:`ZO_COMPILER_OPTIONS` (:func:`jit_options`), so that a model loss that perturbs on the
    fly needs no memory beyond its forward pass. It must be called at the top level (XLA compiler
    options cannot be given to a ``jit`` inside another).

    Args:
      tx: an optimizer holding a zojax estimator (``zojax.mezo(...)``, or
        ``optax.chain(zojax.spsa(...), optax.adam(...))``); anything else raises at trace time.
      make_loss: ``make_loss(*loss_args)`` returns the loss of the parameters, a function
        ``params -> scalar`` or a :class:`~zojax.perturb.PerturbableLoss` (for a model,
        ``functools.partial(zojax.models.next_token_loss, model)``, called with ``ids, mask``).
      donate: donate ``params`` and ``opt_state``; their buffers are invalid after the call.
      **jit_kwargs: further ``jax.jit`` arguments (``in_shardings``, ``out_shardings`` for the
        three outputs, ...).

    Returns:
      ``step(params, opt_state, *loss_args) -> (params, opt_state, stats)``, where ``stats`` holds
      the step's ``loss`` (the estimator's, e.g. ``(L(θ+εz) + L(θ−εz)) / 2``), ``projected_grad``
      and ``nonfinite`` (skipped non-finite steps so far), as :func:`step_stats`.

    Example:
      >>> import jax.numpy as jnp, zojax
      >>> tx = zojax.mezo(learning_rate=1e-2)
      >>> make_loss = lambda x: lambda p: jnp.sum((p["w"] - x) ** 2)  # batch -> L(params)
      >>> step = zojax.jit_step(tx, make_loss)
      >>> params = {"w": jnp.zeros(4)}
      >>> params, state, stats = step(params, tx.init(params), jnp.ones(4))
      >>> int(zojax.zo_state(state).num_forwards)  # L(θ+εz) and L(θ−εz)
      2
    """
    options = jit_options(donate=donate) | jit_kwargs

    def step(params: PyTree, opt_state: PyTree, *loss_args: Any) -> tuple[PyTree, PyTree, dict[str, jax.Array]]:
        zo_state(opt_state)  # a zojax estimator must be part of tx (a clear error at trace time)
        updates, opt_state = tx.update(params, opt_state, params, value_fn=make_loss(*loss_args))
        return optax.apply_updates(params, updates), opt_state, step_stats(opt_state)

    return jax.jit(step, **options)
