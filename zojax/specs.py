r"""One spec per zeroth-order estimator: its function, its forward count and its option checks.

The transformations (:mod:`zojax.transforms`) and the registry (:mod:`zojax.registry`, which the
CLI and the tests read) take all three from here, so a method's cost and checks are written once.
Forward passes per step:

.. math::

   \text{SPSA: } 2, \qquad \text{n-SPSA: } 2q, \qquad \text{guided (MeZO-GV): } M + 2, \qquad
   \text{greedy: } M + 2 \ (M + 1 \text{ when the best candidate's loss is reused}), \qquad
   \text{centred: } M.

The values the string options take live here too (:data:`DISTRIBUTIONS`, :data:`PERTURBATIONS`,
:data:`WEIGHTINGS`, :data:`STOP_RULES`; :mod:`zojax.perturb` and :mod:`zojax.estimators` re-export them). This module
imports no JAX (the estimators are imported when first used), so ``zojax methods`` and
``zojax finetune --help`` list the methods, their costs and these choices without loading JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zojax.estimators import Estimate

DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "rademacher")
"""Perturbation noise: i.i.d. Gaussian (MeZO) or Rademacher ``±1``."""
PERTURBATIONS: tuple[str, ...] = ("iid", "subspace")
"""The perturbation family: i.i.d. noise, or SubZero's low-rank subspace noise on matrix leaves."""
WEIGHTINGS: tuple[str, ...] = ("mean_diff", "rank")
"""MeZO-GV's candidate weighting: the paper's mean difference, or centred ranks."""
ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic")
"""How an update is rounded into low-precision weights (:mod:`zojax.precision`)."""
STOP_RULES: tuple[str, ...] = ("text", "mezo")
"""When greedy generation stops: at a decoded stop string (``text``), or MeZO's exact stop token ids."""
TRAINING_OBJECTIVES: tuple[str, ...] = ("task", "accuracy", "f1")
"""What the trainer minimises: the task's loss, or minus its metric (zeroth-order methods only)."""


class OptionError(ValueError):
    """A bad estimator option. ``str(e)`` is ``"<option>: <reason>"``; a caller that knows the option
    by another name (the CLI's ``--num-candidates``) rebuilds the message from the two attributes.

    Attributes:
      option: the keyword argument's name (``num_candidates``).
      reason: what is wrong and, where it helps, what to pass instead.
    """

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable despite two arguments
        return type(self), (self.option, self.reason)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A zeroth-order estimator.

    Attributes:
      estimator: the name of the pure estimator function in :mod:`zojax.estimators`
        (:attr:`estimate` is that function).
      num_forwards: ``num_forwards(**options)``, forward passes per call (options default as in
        :attr:`estimate`; unknown options are ignored).
      validate: ``validate(**options)`` raises :class:`OptionError` naming a bad option and returns the
        options with ``eps`` and ``distribution``, normalised (integers as ``int``, flags as ``bool``).
    """

    estimator: str
    num_forwards: Callable[..., int]
    validate: Callable[..., dict[str, Any]]

    @property
    def estimate(self) -> Callable[..., Estimate]:
        """The pure estimator ``estimate(value_fn, params, key, **options)``."""
        from zojax import estimators

        return getattr(estimators, self.estimator)


def _common(eps: Any, distribution: str) -> dict[str, Any]:
    from zojax import checks

    checks.check_eps(eps)
    checks.check_distribution(distribution)
    return {"eps": eps, "distribution": distribution}


def _validate_spsa(eps: Any = 1e-3, one_sided: Any = False, distribution: str = "gaussian") -> dict[str, Any]:
    from zojax import checks

    return {**_common(eps, distribution), "one_sided": checks.check_flag("one_sided", one_sided)}


def _validate_nspsa(eps: Any = 1e-3, num_queries: Any = 2, distribution: str = "gaussian") -> dict[str, Any]:
    from zojax import checks

    return {**_common(eps, distribution), "num_queries": checks.check_num_queries(num_queries)}


def _validate_guided(
    eps: Any = 1e-3,
    num_candidates: Any = 4,
    elite_ratio: Any = 0.5,
    weighting: str = "mean_diff",
    normalize: Any = False,
    distribution: str = "gaussian",
) -> dict[str, Any]:
    from zojax import checks

    common = _common(eps, distribution)
    m = checks.check_guided_options(num_candidates, elite_ratio, weighting, normalize)
    return {**common, "num_candidates": m, "elite_ratio": elite_ratio, "weighting": weighting, "normalize": normalize}


def _validate_greedy(
    eps: Any = 1e-3, num_candidates: Any = 4, reuse_best_loss: Any = False, distribution: str = "gaussian"
) -> dict[str, Any]:
    from zojax import checks

    common = _common(eps, distribution)
    m = checks.check_num_candidates(num_candidates, 1)
    return {**common, "num_candidates": m, "reuse_best_loss": checks.check_flag("reuse_best_loss", reuse_best_loss)}


def _validate_centred(eps: Any = 1e-3, num_candidates: Any = 4, distribution: str = "gaussian") -> dict[str, Any]:
    from zojax import checks

    m = checks.check_num_candidates(num_candidates, 2, "centred estimates")
    return {**_common(eps, distribution), "num_candidates": m}


SPSA = Spec("estimate_spsa", lambda **_: 2, _validate_spsa)
NSPSA = Spec("estimate_nspsa", lambda num_queries=2, **_: 2 * num_queries, _validate_nspsa)
GUIDED = Spec("estimate_guided", lambda num_candidates=4, **_: num_candidates + 2, _validate_guided)
GREEDY = Spec(
    "estimate_greedy",
    lambda num_candidates=4, reuse_best_loss=False, **_: num_candidates + (1 if reuse_best_loss else 2),
    _validate_greedy,
)
CENTRED = Spec("estimate_centred", lambda num_candidates=4, **_: num_candidates, _validate_centred)
