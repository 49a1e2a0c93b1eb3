"""The registry of zeroth-order methods: one entry per estimator, iterated by the tests and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax

from zojax import estimators, specs, transforms


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered zeroth-order method.

    Attributes:
      name: the CLI name (``--method``).
      transform: builds the estimator-only transformation from options (``eps``, ...).
      optimizer: builds the estimator followed by SGD from ``learning_rate`` and options.
      estimate: the pure estimator function (from :mod:`zojax.specs`).
      forwards_per_step: forward passes per step for the given options (from :mod:`zojax.specs`).
      unbiased: whether ``E[ĝ] = ∇L`` holds on quadratics (for any ``ε``).
      options: the method-specific option names the CLI may pass (besides ``eps`` and ``key``).
      description: one line for ``--help``.
    """

    name: str
    transform: Callable[..., optax.GradientTransformationExtraArgs]
    optimizer: Callable[..., optax.GradientTransformationExtraArgs]
    estimate: Callable[..., estimators.Estimate]
    forwards_per_step: Callable[..., int]
    unbiased: bool
    options: tuple[str, ...]
    description: str


PERTURBATION_OPTIONS: tuple[str, ...] = ("perturbation", "rank", "refresh_every")
"""The perturbation family's options, accepted by every method: ``perturbation="subspace"`` with
``rank`` and ``refresh_every`` makes MeZO SubZero, MeZO-GV SubZero-GV, MeZO-Greedy SubZero-Greedy."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="mezo",
            transform=transforms.spsa,
            optimizer=transforms.mezo,
            estimate=specs.SPSA.estimate,
            forwards_per_step=specs.SPSA.num_forwards,
            unbiased=True,
            options=("one_sided", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO: two-point SPSA along one Gaussian direction (2 forwards/step)",
        ),
        Method(
            name="nspsa",
            transform=transforms.nspsa,
            optimizer=transforms.mezo_nspsa,
            estimate=specs.NSPSA.estimate,
            forwards_per_step=specs.NSPSA.num_forwards,
            unbiased=True,
            options=("num_queries", "distribution", *PERTURBATION_OPTIONS),
            description="n-SPSA: SPSA averaged over q directions (2q forwards/step)",
        ),
        Method(
            name="mezo-gv",
            transform=transforms.guided,
            optimizer=transforms.mezo_gv,
            estimate=specs.GUIDED.estimate,
            forwards_per_step=specs.GUIDED.num_forwards,
            unbiased=False,
            options=("num_candidates", "elite_ratio", "weighting", "normalize", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO-GV: SPSA along mean(low-loss) - mean(high-loss) of M candidates (M+2 forwards/step)",
        ),
        Method(
            name="mezo-greedy",
            transform=transforms.greedy,
            optimizer=transforms.mezo_greedy,
            estimate=specs.GREEDY.estimate,
            forwards_per_step=specs.GREEDY.num_forwards,
            unbiased=False,
            options=("num_candidates", "reuse_best_loss", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO-Greedy: SPSA along the best of M candidates (M+2 forwards/step, M+1 reusing its loss)",
        ),
    )
}


def get(name: str) -> Method:
    """The registered method called ``name``; the error lists the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"method: unknown method {name!r}; choose from {sorted(METHODS)}"
        ) from None


def select_options(method: Method, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``method`` accepts (``eps`` and ``key`` always pass)."""
    allowed = set(method.options) | {"eps", "key"}
    return {k: v for k, v in options.items() if k in allowed and v is not None}
