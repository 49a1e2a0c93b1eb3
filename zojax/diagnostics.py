r"""Direction-alignment diagnostics: how well an estimate ``V`` lines up with the true gradient ``g``.

The paper's quality measures for a unit gradient ``g`` in ``d`` dimensions:

.. math::

   r_1 = \frac{\|V_\parallel\|}{\|V_\perp\|}, \qquad r_2 = \frac{\|V_\parallel\|}{\|g\|},
   \qquad V_\parallel = (V^\top g)\, g .

On a linear loss ``L(θ) = gᵀθ`` every registered estimator has the form ``V = c·(Σ_i w_i Y_i) ·
Σ_i w_i z_i`` with ``Y_i = z_iᵀ g ~ N(0, 1)`` and weights ``w`` set by the method from the ranking of
the ``Y_i``. The orthogonal parts ``z_{i⊥}`` are independent of the ``Y_i``, so ``‖Σ w_i z_{i⊥}‖ =
‖w‖ χ_{d−1}`` exactly, which gives the *exact* finite-``k`` distribution of ``r_1``

.. math::

   r_1 = \frac{|\sum_i w_i Y_i|}{\|w\|\, \chi_{d-1}},

sampled here by Monte Carlo over ``k`` scalars per draw (:func:`predicted_ratio`). The paper's
lemmas give its large-``k`` asymptotics (:func:`lemma_ratio`): ``√(k/(d−1))`` for ``k``-query ZO,
``√(2 log k/(d−1))`` for greedy and ``2√(s log k/(d−1))`` for the guiding vector.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

ALIGNMENT_METHODS = ("nspsa", "mezo-greedy", "mezo-gv")


def alignment_ratios(estimate: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(‖V∥‖/‖V⊥‖, ‖V∥‖/‖g‖)`` for flat vectors ``V`` (``estimate``) and ``g`` (``grad``).

    Example:
      >>> alignment_ratios(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]))
      (Array(1., dtype=float32), Array(1., dtype=float32))
    """
    g_norm = jnp.linalg.norm(grad)
    unit = grad / g_norm
    par = jnp.vdot(estimate, unit)
    perp = jnp.linalg.norm(estimate - par * unit)
    return jnp.abs(par) / perp, jnp.abs(par) / g_norm


def _weights(method: str, y_sorted: np.ndarray, elite_ratio: float) -> np.ndarray:
    """Per-draw weights ``w`` on the ``Y`` sorted ascending (lowest loss first)."""
    n, k = y_sorted.shape
    if method == "nspsa":
        return y_sorted / k  # V = (1/k) Σ Y_i z_i
    if method == "mezo-greedy":
        w = np.zeros((n, k))
        w[:, 0] = 1.0
        return w
    if method == "mezo-gv":
        s = int(elite_ratio * k)
        w = np.full((n, k), -1.0 / (k - s))
        w[:, :s] = 1.0 / s
        return w
    raise ValueError(f"method: expected one of {ALIGNMENT_METHODS}, got {method!r}")


def predicted_ratio(
    method: str,
    k: int,
    d: int,
    *,
    elite_ratio: float = 0.5,
    num_samples: int = 200_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Monte Carlo mean and standard error of the exact ``r_1`` of ``method`` with ``k`` draws.

    Args:
      method: ``"nspsa"`` (``k`` queries; ``k = 1`` is MeZO), ``"mezo-greedy"`` or ``"mezo-gv"``.
      k: queries or candidates.
      d: dimension.
      elite_ratio: GV's ``α`` (low-loss group ``s = ⌊αk⌋``).
      num_samples: Monte Carlo draws (``k`` normals and one ``χ_{d−1}`` each).
      seed: numpy seed.

    Returns:
      ``(mean, standard error)`` of ``r_1``.
    """
    rng = np.random.default_rng(seed)
    y = np.sort(rng.standard_normal((num_samples, k)), axis=1)
    w = _weights(method, y, elite_ratio)
    chi = np.sqrt(rng.chisquare(d - 1, size=num_samples))
    r = np.abs(np.sum(w * y, axis=1)) / (np.linalg.norm(w, axis=1) * chi)
    return float(r.mean()), float(r.std(ddof=1) / math.sqrt(num_samples))


def lemma_ratio(method: str, k: int, d: int, *, elite_ratio: float = 0.5) -> float:
    """The paper's asymptotic ``r_1`` (Lemmas 2–4; ``log`` is natural; undefined ``log 1`` → 0)."""
    if method == "nspsa":
        return math.sqrt(k / (d - 1))
    if method == "mezo-greedy":
        return math.sqrt(2 * math.log(k) / (d - 1))
    if method == "mezo-gv":
        s = int(elite_ratio * k)
        return 2 * math.sqrt(s * math.log(k) / (d - 1))
    raise ValueError(f"method: expected one of {ALIGNMENT_METHODS}, got {method!r}")


def measured_ratios(
    method: str,
    k: int,
    d: int,
    *,
    num_trials: int = 256,
    elite_ratio: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """``r_1`` of ``num_trials`` real estimates of a random unit gradient on ``L(θ) = gᵀθ``.

    Runs the registered estimator itself (keys regenerated, directions materialised only to measure
    them) at ``θ = 0`` over a two-leaf pytree of ``d`` coordinates.

    Args:
      method: ``"nspsa"``, ``"mezo-greedy"`` or ``"mezo-gv"``; ``k`` is its queries/candidates.
      k: queries (n-SPSA) or candidates (greedy, GV).
      d: dimension (even, >= 4).
      num_trials: independent estimates (step keys ``fold_in(seed, i)``).
      elite_ratio: GV's ``α``.
      seed: key of the trials; also draws ``g``.

    Returns:
      ``float64[num_trials]`` measured ratios.
    """
    from jax.flatten_util import ravel_pytree

    from zojax import perturb, registry

    options = {
        "nspsa": {"num_queries": k},
        "mezo-greedy": {"num_candidates": k},
        "mezo-gv": {"num_candidates": k, "elite_ratio": elite_ratio},
    }
    if method not in options:
        raise ValueError(f"method: expected one of {ALIGNMENT_METHODS}, got {method!r}")
    estimate = registry.get(method).estimate
    params = {"matrix": jnp.zeros((2, d // 4)), "vector": jnp.zeros((d - 2 * (d // 4),))}
    g = jax.random.normal(jax.random.key(seed), (d,))
    g = g / jnp.linalg.norm(g)
    _, unravel = ravel_pytree(params)
    g_tree = unravel(g)

    def loss(p: object) -> jax.Array:
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(g_tree), strict=True))

    base = perturb.key_data(seed)

    def one(i: jax.Array) -> jax.Array:
        est = estimate(loss, params, perturb.fold_in(base, i), eps=1e-3, **options[method])
        v = ravel_pytree(perturb.direction_tree(est.grad, params))[0]
        return alignment_ratios(v, g)[0]

    ids = jnp.arange(num_trials, dtype=jnp.uint32)
    return np.asarray(jax.jit(lambda: jax.lax.map(one, ids))(), np.float64)
