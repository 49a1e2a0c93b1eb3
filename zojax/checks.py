r"""The option checks of the estimators and transformations: each raises an :class:`~zojax.specs.OptionError`
naming the option (``"<option>: <reason>"``), so the CLI can report the flag instead.

Checks run when a transformation is built and again, on concrete values, when an estimator is called;
under ``jax.jit`` a traced value is accepted where a concrete one cannot be inspected. The elite count
of MeZO-GV, :math:`\lfloor \alpha M \rfloor`, is computed here (:func:`num_elite`), robustly to
floating point.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax import perturb
from zojax.specs import WEIGHTINGS, OptionError

PyTree = Any


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_eps(eps: Any) -> None:
    if _is_concrete(eps) and not float(eps) > 0:
        raise OptionError("eps", f"the perturbation scale must be > 0, got {eps}")


def check_distribution(distribution: str) -> None:
    if distribution not in perturb.DISTRIBUTIONS:
        raise OptionError("distribution", f"expected one of {perturb.DISTRIBUTIONS}, got {distribution!r}")


def check_subspace(subspace: Any) -> None:
    if subspace is not None and not isinstance(subspace, perturb.Subspace):
        raise OptionError("subspace", f"expected None or a zojax.perturb.Subspace, got {type(subspace).__name__}")


def check_perturbation(perturbation: Any, rank: Any = None, refresh_every: Any = None) -> tuple[int, int] | None:
    """Validates the perturbation family's options; returns ``(rank, refresh_every)`` or ``None``.

    ``perturbation="iid"`` (the default: i.i.d. noise of ``distribution``) takes neither option;
    ``perturbation="subspace"`` (SubZero) needs ``rank >= 1`` and ``refresh_every >= 1`` (steps
    between subspace refreshes).
    """
    if perturbation not in perturb.PERTURBATIONS:
        raise OptionError("perturbation", f"expected one of {perturb.PERTURBATIONS}, got {perturbation!r}")
    if perturbation == "iid":
        for name, value in (("rank", rank), ("refresh_every", refresh_every)):
            if value is not None:
                raise OptionError(
                    name, f"only used with perturbation='subspace' (got {name}={value!r} with perturbation='iid')"
                )
        return None
    for name, value in (("rank", rank), ("refresh_every", refresh_every)):
        if value is None:
            raise OptionError(name, f"perturbation='subspace' needs {name} (an integer >= 1)")
    r = check_integer("rank", rank)
    k = check_integer("refresh_every", refresh_every)
    if r < 1:
        raise OptionError("rank", f"expected r >= 1, got {r}")
    if k < 1:
        raise OptionError("refresh_every", f"expected k >= 1 steps, got {k}")
    return r, k


def check_integer(name: str, value: Any) -> int:
    """``value`` as a Python ``int``; a ``ValueError`` naming the option otherwise.

    Integers (Python or NumPy) only: ``2.5``, ``4.0``, ``True`` and arrays are rejected when the
    transformation is built, not when ``update`` first traces (the count fixes array shapes).
    """
    index = None
    if not isinstance(value, (bool, np.bool_, jax.core.Tracer)):
        with contextlib.suppress(TypeError):
            index = operator.index(value)
    if index is None:
        hint = (
            " (under optax.inject_hyperparams, list it in static_args)"
            if isinstance(value, (jax.Array, np.ndarray))
            else ""
        )
        raise OptionError(name, f"expected an integer, got {value!r} of type {type(value).__name__}{hint}")
    return index


def check_num_queries(num_queries: Any) -> int:
    q = check_integer("num_queries", num_queries)
    if q < 1:
        raise OptionError("num_queries", f"expected q >= 1, got {q}")
    return q


def check_num_candidates(num_candidates: Any, minimum: int, what: str = "guided directions") -> int:
    m = check_integer("num_candidates", num_candidates)
    if m < minimum:
        if minimum == 2:
            raise OptionError("num_candidates", f"{what} need M >= 2 candidates, got {m}")
        raise OptionError("num_candidates", f"expected M >= {minimum}, got {m}")
    return m


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a Python ``bool``; a ``ValueError`` naming the option otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError(name, f"expected True or False, got {value!r}")
    return bool(value)


def check_params(params: PyTree) -> None:
    """The non-float rule (:mod:`zojax.perturb`): every leaf must be real floating-point."""
    perturb.check_float_leaves(params)


def num_elite(num_candidates: int, elite_ratio: float) -> int:
    """``⌊α·M⌋``, the size of the low-loss group; raises if a group would be empty.

    The floor is robust to floating point: ``α`` is a binary approximation of the value the user
    meant (``0.29`` is stored as ``0.28999999999999998…``, so ``int(0.29 * 100) == 28``). A float
    ``α`` is within half an ulp (relative ``eps/2`` of its dtype) of the intended value and the
    product ``α·M`` adds at most half an ulp of float64, so when ``α·M`` is meant to be the integer
    ``k`` the computed product lies within ``eps·k`` of ``k``. A product within ``4·eps`` (relative,
    ``eps`` of ``α``'s own dtype: ``2.2e-16`` for a Python float, ``1.2e-7`` for float32) of an
    integer counts as that integer; anything farther is floored. Exact rational arithmetic on
    ``α`` would not do: ``Fraction(0.29)`` is the stored binary value, still below ``29/100``. So
    ``α = 0.29, M = 100`` gives 29 and ``α = k/M`` gives ``k``; a misread needs an ``α`` that is
    not an intended multiple of ``1/M`` yet within ``4·eps`` of one (more than ~14 significant
    digits for a Python float).
    """
    m = check_num_candidates(num_candidates, 2)
    if isinstance(elite_ratio, (bool, np.bool_, jax.core.Tracer)):
        raise OptionError(
            "elite_ratio",
            f"expected a concrete number 0 < alpha < 1, got {elite_ratio!r} "
            f"(under optax.inject_hyperparams, list it in static_args)",
        )
    try:
        if not isinstance(elite_ratio, (numbers.Real, np.ndarray, jax.Array)):
            raise TypeError
        alpha = float(elite_ratio)
    except (TypeError, ValueError):
        raise OptionError("elite_ratio", f"expected a number 0 < alpha < 1, got {elite_ratio!r}") from None
    if not 0.0 < alpha < 1.0:
        raise OptionError("elite_ratio", f"expected 0 < alpha < 1, got {elite_ratio}")
    dtype = getattr(elite_ratio, "dtype", np.float64)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = np.float64
    ulp = float(jnp.finfo(dtype).eps)
    product = alpha * m
    nearest = round(product)
    top = nearest if abs(product - nearest) <= 4 * ulp * product else math.floor(product)
    if not 1 <= top <= m - 1:
        raise OptionError(
            "elite_ratio",
            f"alpha={elite_ratio} with num_candidates={m} puts floor(alpha*M)={top} candidates in the "
            "low-loss group; both groups need at least one (choose 1/M <= alpha < 1)",
        )
    return top


def check_guided_options(num_candidates: Any, elite_ratio: Any, weighting: str, normalize: Any) -> int:
    """Validates MeZO-GV's options; returns ``M`` as an ``int``."""
    if weighting not in WEIGHTINGS:
        raise OptionError("weighting", f"expected one of {WEIGHTINGS}, got {weighting!r}")
    check_flag("normalize", normalize)
    if weighting == "mean_diff":
        num_elite(num_candidates, elite_ratio)
    return check_num_candidates(num_candidates, 2)
