"""The registry of zeroth-order methods: one entry per estimator, iterated by the tests and the CLI.

A method's names in one place: its ``--method`` name, its transformation and optax alias in
:mod:`zojax.transforms`, and its :class:`~zojax.specs.Spec` (estimator function, forward count,
checks). Like :mod:`zojax.specs`, this module imports no JAX: the transformations are imported
when first used, so ``zojax methods`` answers without loading it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from zojax import specs

if TYPE_CHECKING:
    import optax

    from zojax.estimators import Estimate


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered zeroth-order method.

    Attributes:
      name: the CLI name (``--method``).
      spec: the estimator's :class:`~zojax.specs.Spec` (function, forward count, checks).
      transform_name: the :mod:`zojax.transforms` function of :attr:`transform`.
      optimizer_name: the :mod:`zojax.transforms` function of :attr:`optimizer`.
      unbiased: whether ``E[ĝ] = ∇L`` holds on quadratics (for any ``ε``).
      options: the method-specific option names the CLI may pass (besides ``eps`` and ``key``).
      description: one line for ``--help``.
    """

    name: str
    spec: specs.Spec
    transform_name: str
    optimizer_name: str
    unbiased: bool
    options: tuple[str, ...]
    description: str

    @property
    def transform(self) -> Callable[..., optax.GradientTransformationExtraArgs]:
        """Builds the estimator-only transformation from options (``eps``, ...)."""
        from zojax import transforms

        return getattr(transforms, self.transform_name)

    @property
    def optimizer(self) -> Callable[..., optax.GradientTransformationExtraArgs]:
        """Builds the estimator followed by SGD from ``learning_rate`` and options."""
        from zojax import alias

        return getattr(alias, self.optimizer_name)

    @property
    def estimate(self) -> Callable[..., Estimate]:
        """The pure estimator function (``spec.estimate``)."""
        return self.spec.estimate

    @property
    def forwards_per_step(self) -> Callable[..., int]:
        """Forward passes per step for the given options (``spec.num_forwards``)."""
        return self.spec.num_forwards


PERTURBATION_OPTIONS: tuple[str, ...] = ("perturbation", "rank", "refresh_every")
"""The perturbation family's options, accepted by every method: ``perturbation="subspace"`` with
``rank`` and ``refresh_every`` makes MeZO SubZero, MeZO-GV SubZero-GV, MeZO-Greedy SubZero-Greedy."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="mezo",
            spec=specs.SPSA,
            transform_name="spsa",
            optimizer_name="mezo",
            unbiased=True,
            options=("one_sided", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO: two-point SPSA along one Gaussian direction (2 forwards/step)",
        ),
        Method(
            name="nspsa",
            spec=specs.NSPSA,
            transform_name="nspsa",
            optimizer_name="mezo_nspsa",
            unbiased=True,
            options=("num_queries", "distribution", *PERTURBATION_OPTIONS),
            description="n-SPSA: SPSA averaged over q directions (2q forwards/step)",
        ),
        Method(
            name="mezo-gv",
            spec=specs.GUIDED,
            transform_name="guided",
            optimizer_name="mezo_gv",
            unbiased=False,
            options=("num_candidates", "elite_ratio", "weighting", "normalize", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO-GV: SPSA along mean(low-loss) - mean(high-loss) of M candidates (M+2 forwards/step)",
        ),
        Method(
            name="mezo-greedy",
            spec=specs.GREEDY,
            transform_name="greedy",
            optimizer_name="mezo_greedy",
            unbiased=False,
            options=("num_candidates", "reuse_best_loss", "distribution", *PERTURBATION_OPTIONS),
            description="MeZO-Greedy: SPSA along the best of M candidates (M+2 forwards/step, M+1 reusing its loss)",
        ),
        Method(
            name="mezo-centred",
            spec=specs.CENTRED,
            transform_name="centred",
            optimizer_name="mezo_centred",
            unbiased=True,
            options=("num_candidates", "distribution", *PERTURBATION_OPTIONS),
            description="centred losses (beyond the paper): sum (L_i - mean L) z_i of M candidates (M forwards/step)",
        ),
    )
}


def get(name: str) -> Method:
    """The registered method called ``name``; the error lists the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; choose from {sorted(METHODS)}") from None


def select_options(method: Method, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``method`` accepts (``eps`` and ``key`` always pass)."""
    allowed = set(method.options) | {"eps", "key"}
    return {k: v for k, v in options.items() if k in allowed and v is not None}
