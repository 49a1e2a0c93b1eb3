"""Direction quality of every estimator on the real model (the paper's Fig. 6 and lemmas, v2's descent).

Example (the full run; see ``--help`` and the README section "Direction quality on SmolLM2-135M")::

    python experiments/directions.py --out results/directions.json --plot docs/directions.png

On SmolLM2-135M (full parameters and LoRA), for real training minibatches (batch 16) of several
tasks, the true gradient ``∇L = jax.grad`` of the trainer's own objective
(:func:`zojax.train.loss.task_loss` on :class:`zojax.train.data.TrainBatches`) is compared with the
estimates ``ĝ`` of MeZO, n-SPSA (q = 2, 3), MeZO-GV (M = 2, 4, 8, α = 0.5) and MeZO-Greedy
(M = 2, 4, 8), ``--draws`` draws per minibatch.

How the work is shared (the cost is forward passes; everything else is cheap):

* **One candidate pool per minibatch.** ``--pool N`` candidates ``z_i`` (keys ``fold_in(unit_key,
  i)``) get a real forward ``l_i = L(θ + εz_i)`` each. A *draw* is a random ordered 8-subset of the
  pool; MeZO uses its first candidate, n-SPSA its first q, GV and Greedy with M candidates its first
  M (prefixes), ranked by the real ``l_i``. Each draw is exactly distributed as a fresh draw of every
  method; draws of one minibatch share candidates (so they are dependent), and every standard error
  below is taken across minibatches, which accounts for that. ``--pool 8·draws`` gives disjoint,
  independent draws (the plain design, 8 forwards per draw).
* **Everything linear is exact and free of forwards.** Each method's ``ĝ = Σ_i b_i z_i`` lies in the
  span of the pool, so ``⟨ĝ, ∇L⟩ = bᵀp``, ``⟨ĝ, ∇L_H⟩ = bᵀq`` and ``‖ĝ‖² = bᵀGb`` follow from
  ``p_i = ⟨∇L, z_i⟩``, ``q_i = ⟨∇L_H, z_i⟩`` (held-out gradient) and the Gram matrix ``G`` of the
  pool, computed once per minibatch by regenerating each ``z_i`` leaf by leaf (layer by layer)
  from its key. The two-point value along a direction ``v`` is taken as the directional derivative
  ``⟨∇L, v⟩`` ("linearised"); the real ``(L(θ+εv) − L(θ−εv)) / 2ε`` is measured on the probe draws
  and the discrepancy reported.
* **Probe draws with real forwards** (``--probe-draws`` per minibatch): each method's real
  two-point values (reusing the pool's ``L(θ+εz)`` where the direction is one candidate), and the
  real one-step loss change ``L(θ − ηĝ) − L(θ)`` on the same batch and on a held-out batch (16 dev
  examples) for every learning rate of the grid (``--lr-grid`` × the trainer's default rate).
  The expected loss change is ``−η E⟨ĝ, ∇L⟩ + R(η)``; the first term is exact over all draws, the
  curvature remainder ``R`` is measured on the probe draws and carried to all draws with a ratio
  estimator, ``R ≈ (Σ_probe R / Σ_probe ‖ĝ‖²) · mean_draws ‖ĝ‖²`` (the Rayleigh quotient along a
  step varies far less than the step itself). The raw probe means are reported next to it.

Reported per method (mean ± standard error over minibatches), each also per forward pass
(``F`` = 2, 2q, M + 2): ``cos(ĝ, ∇L)``; ``r1 = √(d−1)·‖ĝ∥‖/‖ĝ⊥‖`` next to the exact finite-k
prediction of :func:`zojax.diagnostics.predicted_ratio` for a linear loss; the effective learning-rate
multiplier ``E⟨ĝ, ∇L⟩/‖∇L‖²``; the perpendicular noise ``E‖ĝ⊥‖²/((d−1)‖∇L‖²)`` (MeZO = 1 on a
linear loss); ``SNR = mult²/noise`` (the descent at the best learning rate on a quadratic with
isotropic noise curvature is proportional to it; MeZO = 1); and the one-step loss changes at the
method's best learning rate of the grid (best on the held-out batch). Each method is also ranked by
the linearised losses ``L0 + ε⟨∇L, z_i⟩`` (what a linear loss with this gradient would rank), which
must reproduce the linear-loss predictions; the gap to the real ranking is the effect of curvature
on the ranking.

MeZO-GV with M = 2 and α = 0.5 against MeZO with (2·lr, √2·ε): (a) coupled, on the real model with
shared keys: the registered GV estimator's update and MeZO's formula along ``u = (z₁ − z₂)/√2`` (a
standard Gaussian direction) at ``√2·ε`` and twice the learning rate must be equal up to float
rounding; (b) a two-sample Kolmogorov–Smirnov test on independent draws (disjoint thirds of each
pool) of the normalised descent, step norm and held-out descent, with a negative control (MeZO
without the factor 2) that must be rejected.

Results are written after every (task, tuning, minibatch) to ``--out`` (atomically); a rerun with the
same settings resumes where it stopped. The summary is recomputed from the stored raw pool data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------- methods (numpy, no JAX)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One estimator setting: ``family`` in mezo / nspsa / mezo-gv / mezo-greedy, ``k`` = q or M."""

    family: str
    k: int

    @property
    def label(self) -> str:
        if self.family == "mezo":
            return "mezo"
        if self.family == "nspsa":
            return f"nspsa-q{self.k}"
        return f"{self.family}-m{self.k}"

    @property
    def forwards(self) -> int:
        """Forward passes per step (the registry's count)."""
        if self.family == "mezo":
            return 2
        if self.family == "nspsa":
            return 2 * self.k
        return self.k + 2

    @property
    def ranked(self) -> bool:
        return self.family in ("mezo-gv", "mezo-greedy")

    @property
    def diagnostics_name(self) -> tuple[str, int]:
        """``(method, k)`` of :mod:`zojax.diagnostics` (MeZO is n-SPSA with one query)."""
        return ("nspsa", 1) if self.family == "mezo" else (self.family, self.k)


SPECS = (
    Spec("mezo", 1),
    Spec("nspsa", 2),
    Spec("nspsa", 3),
    Spec("mezo-gv", 2),
    Spec("mezo-gv", 4),
    Spec("mezo-gv", 8),
    Spec("mezo-greedy", 2),
    Spec("mezo-greedy", 4),
    Spec("mezo-greedy", 8),
)
DRAW_SIZE = max(s.k for s in SPECS)  # candidates per draw: GV / Greedy M = 8 use all of them
ELITE_RATIO = 0.5


def gv_weights(values: np.ndarray, elite_ratio: float = ELITE_RATIO) -> np.ndarray:
    """MeZO-GV's ``mean_diff`` weights for candidate losses ``values`` (stable ranking, lowest first).

    Same as :func:`zojax.estimators.guiding_weights` (``weighting="mean_diff"``, not normalised).
    """
    m = len(values)
    top = int(elite_ratio * m)
    if not 1 <= top <= m - 1:
        raise ValueError(f"elite_ratio {elite_ratio} with M = {m} leaves a group empty")
    order = np.argsort(values, kind="stable")
    w = np.full(m, -1.0 / (m - top))
    w[order[:top]] = 1.0 / top
    return w


def searches(spec: Spec, sel: np.ndarray, rank_values: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The search directions of one draw as ``(pool indices, weights)`` pairs, ``v = Σ w z_idx``.

    ``sel`` is the draw's ordered candidate subset (pool indices), ``rank_values`` the pool's candidate
    losses used for ranking. n-SPSA has ``q`` single-candidate directions; the others one.
    """
    if spec.family == "mezo":
        return [(sel[:1], np.ones(1))]
    if spec.family == "nspsa":
        return [(sel[j : j + 1], np.ones(1)) for j in range(spec.k)]
    idx = np.asarray(sel[: spec.k])
    if spec.family == "mezo-gv":
        return [(idx, gv_weights(rank_values[idx]))]
    if spec.family == "mezo-greedy":
        return [(idx[np.argmin(rank_values[idx]) : np.argmin(rank_values[idx]) + 1], np.ones(1))]
    raise ValueError(f"unknown family {spec.family!r}")


def coefficients(dirs: Sequence[tuple[np.ndarray, np.ndarray]], projected: Sequence[float], size: int) -> np.ndarray:
    """``b`` with ``ĝ = Σ_i b_i z_i`` over a pool of ``size``: ``ĝ = (1/n) Σ_d c_d v_d``."""
    b = np.zeros(size)
    for (idx, w), c in zip(dirs, projected, strict=True):
        np.add.at(b, idx, c * w / len(dirs))
    return b


def linear_projections(dirs: Sequence[tuple[np.ndarray, np.ndarray]], p: np.ndarray) -> list[float]:
    """The linearised two-point values ``⟨∇L, v⟩ = Σ w_i p_i`` of each search direction."""
    return [float(np.dot(w, p[idx])) for idx, w in dirs]


STATS = ("cos", "r1", "mult", "noise", "cos_heldout", "mult_heldout", "A", "A_heldout", "norm2")


def direction_stats(b: np.ndarray, pool: dict[str, Any]) -> dict[str, float]:
    """Alignment of ``ĝ = Σ b_i z_i`` with ``∇L`` (and ``∇L_H``) from the pool's ``p, q, G``.

    Keys: ``cos``; ``r1 = √(d−1)·|ĝ∥|/‖ĝ⊥‖``; ``mult = ⟨ĝ,∇L⟩/‖∇L‖²``; ``noise = ‖ĝ⊥‖²/((d−1)‖∇L‖²)``;
    the held-out ``cos_heldout``, ``mult_heldout = ⟨ĝ,∇L_H⟩/‖∇L_H‖²``; raw ``A = ⟨ĝ,∇L⟩``,
    ``A_heldout`` and ``norm2 = ‖ĝ‖²``.
    """
    d = pool["d"]
    gn2, hn2 = pool["grad_norm2"], pool["heldout_grad_norm2"]
    a = float(b @ pool["p"])
    ah = float(b @ pool["q"])
    n2 = float(b @ pool["gram"] @ b)
    perp2 = max(n2 - a * a / gn2, 0.0)
    return {
        "cos": a / math.sqrt(n2 * gn2),
        "r1": math.sqrt(d - 1) * abs(a) / math.sqrt(gn2) / math.sqrt(perp2) if perp2 > 0 else math.inf,
        "mult": a / gn2,
        "noise": perp2 / ((d - 1) * gn2),
        "cos_heldout": ah / math.sqrt(n2 * hn2),
        "mult_heldout": ah / hn2,
        "A": a,
        "A_heldout": ah,
        "norm2": n2,
    }


def draw_subsets(seed: int, unit: str, pool_size: int, draws: int) -> np.ndarray:
    """``int[draws, 8]``: each draw's ordered candidates, a random 8-subset of the pool."""
    if pool_size < DRAW_SIZE:
        raise ValueError(f"--pool: need at least {DRAW_SIZE} candidates, got {pool_size}")
    rng = np.random.default_rng([seed, zlib.crc32(unit.encode()), 1])
    if pool_size >= DRAW_SIZE * draws:  # disjoint draws: independent
        return rng.permutation(pool_size)[: DRAW_SIZE * draws].reshape(draws, DRAW_SIZE)
    return np.stack([rng.permutation(pool_size)[:DRAW_SIZE] for _ in range(draws)])


def pool_arrays(rec: dict[str, Any]) -> dict[str, Any]:
    """The stored raw pool of a record as float64 numpy arrays."""
    pl = rec["pool"]
    return {
        "d": rec["d"],
        "grad_norm2": rec["grad_norm2"],
        "heldout_grad_norm2": rec["heldout_grad_norm2"],
        "losses": np.asarray(pl["losses"], np.float64),
        "p": np.asarray(pl["p"], np.float64),
        "q": np.asarray(pl["q"], np.float64),
        "gram": np.asarray(pl["gram"], np.float64),
    }


def analyse_pool(
    pool: dict[str, Any], subsets: np.ndarray, loss0: float, eps: float, specs: Sequence[Spec] = SPECS
) -> dict[str, Any]:
    """Per-method means over the draws, ranking by the real and by the linearised losses.

    Returns ``{label: {"real": {stat: mean}, "linear": {...}}}`` plus ``"_agreement"``: how often
    the real ranking picks the same top group (GV) / best candidate (Greedy) as the linear one.
    """
    n = len(pool["p"])
    linear_losses = loss0 + eps * pool["p"]
    out: dict[str, Any] = {}
    agree: dict[str, list[bool]] = {}
    for spec in specs:
        res = {}
        for ranking, values in (("real", pool["losses"]), ("linear", linear_losses)):
            rows = []
            for sel in subsets:
                dirs = searches(spec, sel, values)
                b = coefficients(dirs, linear_projections(dirs, pool["p"]), n)
                rows.append(direction_stats(b, pool))
            res[ranking] = {k: float(np.mean([r[k] for r in rows])) for k in STATS}
        out[spec.label] = res
        if spec.ranked:
            same = []
            for sel in subsets:
                (ia, wa), (ib, wb) = searches(spec, sel, pool["losses"])[0], searches(spec, sel, linear_losses)[0]
                same.append(bool(np.array_equal(ia, ib) and np.array_equal(wa, wb)))
            agree[spec.label] = same
    out["_agreement"] = {k: float(np.mean(v)) for k, v in agree.items()}
    return out


CENTRED_SIZES = (4, 8)  # candidates of the centred-loss estimator (beyond the paper)


def centred_coefficients(losses: np.ndarray, idx: np.ndarray, eps: float, size: int) -> np.ndarray:
    r"""``b`` of the centred-loss estimator over candidates ``idx`` (``M`` forwards, no ranking):

    .. math::

       \hat g = \frac{1}{(M-1)\,\varepsilon} \sum_{i=1}^{M} \big(L(θ+εz_i) - \bar L\big)\, z_i,
       \qquad \bar L = \frac{1}{M}\sum_j L(θ+εz_j).

    On a linear loss ``E ĝ = ∇L`` and the perpendicular noise is ``1/(M−1)`` of MeZO's, so its SNR
    per forward pass is ``2(M−1)/M`` times MeZO's (:func:`centred_prediction`): every candidate
    loss is used, by its value, where MeZO-GV keeps only the ranking and spends 2 more forwards.
    """
    m = len(idx)
    b = np.zeros(size)
    vals = losses[idx]
    b[idx] = (vals - vals.mean()) / ((m - 1) * eps)
    return b


def centred_prediction(m: int) -> dict[str, float]:
    """The centred-loss estimator on a linear loss (large ``d``): ``mult = 1``, ``noise = 1/(M−1)``,
    ``SNR = M − 1``."""
    return {"mult": 1.0, "noise": 1.0 / (m - 1), "snr": float(m - 1)}


def analyse_centred(pool: dict[str, Any], subsets: np.ndarray, eps: float) -> dict[str, dict[str, float]]:
    """Per-size means over the draws of :func:`direction_stats` (and ``snr``) of the centred-loss
    estimator, from the pool's real candidate losses (the first ``M`` candidates of each draw)."""
    n = len(pool["p"])
    out = {}
    for m in CENTRED_SIZES:
        rows = [direction_stats(centred_coefficients(pool["losses"], sel[:m], eps, n), pool) for sel in subsets]
        res = {k: float(np.mean([r[k] for r in rows])) for k in STATS}
        res["snr"] = res["mult"] ** 2 / res["noise"]
        out[f"centred-m{m}"] = res
    return out


# ---------------------------------------------------------------------- linear-loss predictions


@functools.cache
def linear_prediction(spec: Spec, d: int, num_samples: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Exact finite-k expectations on a linear loss ``L = gᵀθ`` (Monte Carlo over k scalars).

    With ``Y_i = ⟨z_i, g⟩/‖g‖ ~ N(0, 1)`` (ranked ascending, lowest loss first), every method gives
    ``ĝ/‖g‖ = Σ_i a_i z_i`` with ``a`` a function of the ``Y``; the parallel part is ``P = Σ a_i Y_i``
    and ``‖ĝ⊥‖²/‖g‖² = ‖a‖² χ²_{d−1}`` exactly (the model of :mod:`zojax.diagnostics`). Returns the
    means of ``cos``, ``r1``, ``mult = P``, ``noise = ‖a‖²``, and ``snr = mult²/noise``.
    """
    rng = np.random.default_rng(seed)
    k = spec.k
    y = np.sort(rng.standard_normal((num_samples, k)), axis=1)
    if spec.family in ("mezo", "nspsa"):
        y = rng.standard_normal((num_samples, k))  # unranked
        a = y / k
    elif spec.family == "mezo-gv":
        top = int(ELITE_RATIO * k)
        w = np.full(k, -1.0 / (k - top))
        w[:top] = 1.0 / top
        a = (y @ w)[:, None] * w[None, :]
    elif spec.family == "mezo-greedy":
        a = np.zeros_like(y)
        a[:, 0] = y[:, 0]
    else:
        raise ValueError(spec.family)
    par = np.sum(a * y, axis=1)
    a2 = np.sum(a * a, axis=1)
    chi2 = rng.chisquare(d - 1, size=num_samples)
    perp = np.sqrt(a2 * chi2)
    mult, noise = float(par.mean()), float(a2.mean())
    return {
        "cos": float(np.mean(par / np.sqrt(par**2 + perp**2))),
        "r1": float(np.mean(np.sqrt(d - 1) * np.abs(par) / perp)),
        "mult": mult,
        "noise": noise,
        "snr": mult**2 / noise,
    }


# ---------------------------------------------------------------------- statistics helpers


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (``nan`` for fewer than two values)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se


EQUIV_STATS = ("descent", "step_norm", "heldout_descent")


def equivalence_samples(pool: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Independent draws of MeZO and MeZO-GV (M = 2) from disjoint thirds of one pool.

    Per draw, for an update ``Δθ = lr·ĝ`` (GV) or ``2·lr·ĝ`` (MeZO at twice the rate), divided by
    ``lr``: ``descent = ⟨Δθ, ∇L⟩/‖∇L‖²``, ``step_norm = ‖Δθ‖/(‖∇L‖√d)`` and ``heldout_descent =
    ⟨Δθ, ∇L_H⟩/(‖∇L‖‖∇L_H‖)``. The GV ranking does not enter (``g(−v)(−v) = g(v)v``).
    Also ``mezo_1x``: MeZO at the same rate (the wrong pairing, a negative control).
    """
    n = len(pool["p"])
    m = n // 3
    out: dict[str, dict[str, list[float]]] = {
        k: {s: [] for s in EQUIV_STATS} for k in ("mezo-gv-m2", "mezo_2x", "mezo_1x")
    }
    gn, hn, d = math.sqrt(pool["grad_norm2"]), math.sqrt(pool["heldout_grad_norm2"]), pool["d"]

    def add(name: str, b: np.ndarray, factor: float) -> None:
        st = direction_stats(b, pool)
        out[name]["descent"].append(factor * st["A"] / gn**2)
        out[name]["step_norm"].append(factor * math.sqrt(st["norm2"]) / (gn * math.sqrt(d)))
        out[name]["heldout_descent"].append(factor * st["A_heldout"] / (gn * hn))

    spec_m, spec_gv = Spec("mezo", 1), Spec("mezo-gv", 2)
    for i in range(m):
        dirs = searches(spec_m, np.array([i]), pool["losses"])
        b = coefficients(dirs, linear_projections(dirs, pool["p"]), n)
        add("mezo_2x", b, 2.0)
        add("mezo_1x", b, 1.0)
        sel = np.array([m + 2 * i, m + 2 * i + 1])
        dirs = searches(spec_gv, sel, pool["losses"])
        add("mezo-gv-m2", coefficients(dirs, linear_projections(dirs, pool["p"]), n), 1.0)
    return out


def ks_tests(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, float]:
    """Two-sample Kolmogorov–Smirnov p-values per statistic, and their Bonferroni minimum."""
    from scipy import stats

    res = {s: float(stats.ks_2samp(a[s], b[s]).pvalue) for s in EQUIV_STATS}
    res["bonferroni_min_p"] = min(1.0, len(EQUIV_STATS) * min(res[s] for s in EQUIV_STATS))
    res["n"] = min(len(a[EQUIV_STATS[0]]), len(b[EQUIV_STATS[0]]))
    return res


# ---------------------------------------------------------------------- JAX side


def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def noise_rows(key: Any, path: Any, shape: Sequence[int], start: Any, num_rows: int) -> Any:
    """Rows ``[start, start + num_rows)`` of the Gaussian ``zojax.perturb.leaf_noise(key, path, shape)``
    of a non-stacked leaf, without drawing the rest.

    Follows the noise contract of :mod:`zojax.perturb` (leaf key ``fold_in(key, path_id(path))``,
    counter hash of the row-major element index, ``√2·erfinv`` transform); bitwise equal to slicing
    the full draw (``tests/test_directions.py`` checks it). Slicing ``leaf_noise`` inside ``jit`` does
    not fuse: XLA draws the whole leaf for every slice.
    """
    jax, jnp = _jax()
    from zojax import perturb

    shape = tuple(int(s) for s in shape)
    leaf_key = jax.lax.optimization_barrier(perturb.fold_in(key, perturb.path_id(path)))
    sub = (num_rows, *shape[1:])
    row = int(np.prod(shape[1:], dtype=np.int64))
    index = jnp.zeros(sub, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(sub))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, sub, axis) * jnp.uint32(stride % 2**32)
        stride *= sub[axis]
    index = index + jnp.asarray(start, jnp.uint32) * jnp.uint32(row)
    x = perturb.noise._mix32(index ^ leaf_key[0])
    x = perturb.noise._mix32(x ^ leaf_key[1])
    return perturb.noise._gaussian(perturb.noise._mix32(x ^ leaf_key[2]))


ROW_CHUNK_ELEMENTS = 1 << 21  # a non-stacked leaf is drawn in row chunks of at most this many elements


def row_chunk(rows: int, row_size: int) -> int:
    """The largest divisor of ``rows`` whose chunk has at most :data:`ROW_CHUNK_ELEMENTS` elements."""
    limit = max(1, ROW_CHUNK_ELEMENTS // max(row_size, 1))
    return max(c for c in range(1, min(rows, limit) + 1) if rows % c == 0)


def pool_stats(keys: Any, grad: Any, heldout_grad: Any) -> tuple[Any, Any, Any]:
    """``p_i = ⟨∇L, z_i⟩``, ``q_i = ⟨∇L_H, z_i⟩`` and the Gram matrix ``⟨z_i, z_j⟩`` of a pool.

    Regenerates the ``N`` candidates' Gaussian noise leaf by leaf: one layer slice of a stacked leaf,
    or one row chunk of another leaf, for all ``N`` keys at a time (``[N, chunk]`` floats), so no
    parameter-sized buffer is drawn. Jit it; ``grad``/``heldout_grad`` have the parameters' structure.
    """
    jax, jnp = _jax()
    from zojax import perturb

    n = keys.shape[0]
    carry = (jnp.zeros(n), jnp.zeros(n), jnp.zeros((n, n)))
    leaves = jax.tree_util.tree_flatten_with_path(grad)[0]
    held = jax.tree.leaves(heldout_grad)

    def acc(z: Any, a: Any, b: Any, c: tuple) -> tuple:
        z = z.reshape(n, -1)
        p, q, g = c
        return p + z @ a.reshape(-1).astype(jnp.float32), q + z @ b.reshape(-1).astype(jnp.float32), g + z @ z.T

    for (path, gl), hl in zip(leaves, held, strict=True):
        shape = tuple(gl.shape)
        if perturb.is_stacked(path):

            def body(layer: Any, c: tuple, path: Any = path, gl: Any = gl, hl: Any = hl) -> tuple:
                z = jax.vmap(lambda k: perturb.leaf_noise(k, path, gl.shape[1:], layer=layer))(keys)
                return acc(z, gl[layer], hl[layer], c)

            carry = jax.lax.fori_loop(0, shape[0], body, carry)
            continue
        rows = shape[0] if shape else 1
        row_size = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        chunk = row_chunk(rows, row_size)
        if len(shape) < 1 or chunk >= rows:
            z = jax.vmap(lambda k, path=path, shape=shape: perturb.leaf_noise(k, path, shape))(keys)
            carry = acc(z, gl, hl, carry)
            continue

        def body(i: Any, c: tuple, path: Any = path, gl: Any = gl, hl: Any = hl, chunk: int = chunk) -> tuple:
            start = i * chunk
            z = jax.vmap(lambda k: noise_rows(k, path, gl.shape, start, chunk))(keys)
            sl = lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk)
            return acc(z, sl(gl), sl(hl), c)

        carry = jax.lax.fori_loop(0, rows // chunk, body, carry)
    return carry


@dataclasses.dataclass
class Setting:
    """A model prepared for one tuning: the trainer's ``Tuned`` and its jitted functions."""

    tuning: str
    tuned: Any
    eps: float
    lr: float
    d: int
    fns: dict[str, Any] = dataclasses.field(default_factory=dict)


def build_setting(model: Any, params: Any, tuning: str, seed: int, eps: float | None, lr: float | None) -> Setting:
    """The trainer's parameterisation of ``model``'s ``params`` for ``tuning`` (its LoRA defaults), ε and
    base learning rate."""
    from zojax.models import num_params
    from zojax.train.config import DEFAULT_EPS, DEFAULT_ZO_LR, TrainConfig
    from zojax.train.loop import prepare_tuning

    cfg = TrainConfig()
    cfg.model.tuning = tuning
    cfg.run.seed = seed
    tuned = prepare_tuning(model, params, cfg)
    d = num_params(tuned.params)
    return Setting(tuning, tuned, eps or DEFAULT_EPS[tuning], lr or DEFAULT_ZO_LR[tuning], d)


def jitted(setting: Setting, objective: str) -> dict[str, Any]:
    """``value_and_grad``, ``at`` (on-the-fly ``L(θ + s·v)``), ``pair_at`` (the same on a stacked
    pair of batches, the noise drawn once), ``pool_stats``, ``dot`` and the registered GV estimator
    (M = 2). Each distinct number of keys in a direction (1, 2, 4, 8) is one compiled program."""
    if objective in setting.fns:
        return setting.fns[objective]
    jax, jnp = _jax()
    from zojax import perturb, registry
    from zojax.step import ZO_COMPILER_OPTIONS
    from zojax.train.loss import task_loss

    tuned = setting.tuned

    def loss(frozen: Any, batch: Any) -> Any:
        return task_loss(tuned.lm, objective, batch, frozen)

    def at(params: Any, frozen: Any, batch: Any, direction: Any, scale: Any) -> Any:
        return perturb.evaluate(loss(frozen, batch), params, direction, scale)

    def pair_at(params: Any, frozen: Any, batches: Any, direction: Any, scale: Any) -> Any:
        return jax.vmap(lambda b: at(params, frozen, b, direction, scale))(batches)

    def gv2(params: Any, frozen: Any, batch: Any, key: Any, eps: Any) -> Any:
        est = registry.get("mezo-gv").estimate(
            loss(frozen, batch), params, key, eps=eps, num_candidates=2, elite_ratio=0.5
        )
        return est.grad.keys, est.grad.weights, est.losses

    def dot(a: Any, b: Any) -> Any:
        return sum(
            jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    zo = {"compiler_options": ZO_COMPILER_OPTIONS}
    if "_shared" not in setting.fns:  # shapes independent of the task: compiled once per tuning
        setting.fns["_shared"] = {
            "pool_stats": jax.jit(pool_stats),
            "dot": jax.jit(dot),
            "keys": jax.jit(lambda key, n: jnp.stack([perturb.fold_in(key, i) for i in range(n)]), static_argnums=1),
        }
    fns = {
        **setting.fns["_shared"],
        "value_and_grad": jax.jit(lambda params, frozen, batch: jax.value_and_grad(loss(frozen, batch))(params)),
        "at": jax.jit(at, **zo),
        "pair_at": jax.jit(pair_at, **zo),
        "gv2": jax.jit(gv2, **zo),
    }
    setting.fns[objective] = fns
    return fns


_COMPILE_SECONDS = [0.0]  # tracing, lowering and compiling (or loading from the cache), summed


def _count_compile(event: str, duration: float, **_: Any) -> None:
    if event.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += duration


def track_compile_time() -> None:
    """Sums JAX's compile events into ``_COMPILE_SECONDS`` (each record's ``timing["compile"]``)."""
    jax, _ = _jax()
    if not getattr(track_compile_time, "done", False):
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        track_compile_time.done = True


def unit_name(task: str, tuning: str, batch: int) -> str:
    return f"{task}/{tuning}/{batch}"


def compute_unit(
    args: argparse.Namespace,
    setting: Setting,
    task: Any,
    train_batches: Any,
    heldout_batches: Any,
    batch_index: int,
    progress: Any = None,
) -> dict[str, Any]:
    """All forwards and exact products of one (task, tuning, minibatch); returns the JSON record."""
    jax, jnp = _jax()
    from zojax import perturb
    from zojax.perturb import Direction

    fns = jitted(setting, task.objective)
    tuned = setting.tuned
    params, frozen = tuned.params, tuned.frozen
    eps, lr = setting.eps, setting.lr
    name = unit_name(task.name, setting.tuning, batch_index)
    t_start = time.perf_counter()
    compile_start = _COMPILE_SECONDS[0]
    timing: dict[str, float] = {}
    counts = {"forwards": 0, "gradients": 0}

    def phase(label: str) -> None:
        if progress is not None:
            progress.set_postfix_str(f"{name}: {label}", refresh=True)

    def tick(label: str, t0: float) -> None:
        timing[label] = timing.get(label, 0.0) + time.perf_counter() - t0

    batch = {k: jnp.asarray(v) for k, v in train_batches.batch(batch_index).items()}
    held = {k: jnp.asarray(v) for k, v in heldout_batches.batch(batch_index).items()}
    both = {k: jnp.stack([batch[k], held[k]]) for k in batch}

    phase("gradients")
    t0 = time.perf_counter()
    loss0, grad = jax.block_until_ready(fns["value_and_grad"](params, frozen, batch))
    loss0_h, grad_h = jax.block_until_ready(fns["value_and_grad"](params, frozen, held))
    gn2 = float(fns["dot"](grad, grad))
    hn2 = float(fns["dot"](grad_h, grad_h))
    ggh = float(fns["dot"](grad, grad_h))
    counts["gradients"] += 2
    tick("gradients", t0)

    unit_key = perturb.fold_in(perturb.key_data(args.seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    keys = fns["keys"](unit_key, args.pool)
    scale = lambda s: jnp.float32(s)

    phase(f"pool: {args.pool} forwards")
    t0 = time.perf_counter()
    losses = []
    for i in range(args.pool):
        losses.append(float(fns["at"](params, frozen, batch, Direction.single(keys[i]), scale(eps))))
        counts["forwards"] += 1
    tick("pool_forwards", t0)

    phase("pool: exact products")
    t0 = time.perf_counter()
    p, q, gram = jax.block_until_ready(fns["pool_stats"](keys, grad, grad_h))
    del grad, grad_h
    tick("pool_products", t0)
    p, q, gram = (np.asarray(x, np.float64) for x in (p, q, gram))
    rec: dict[str, Any] = {
        "unit": name,
        "task": task.name,
        "tuning": setting.tuning,
        "batch": batch_index,
        "d": setting.d,
        "eps": eps,
        "lr": lr,
        "loss0": float(loss0),
        "loss0_heldout": float(loss0_h),
        "grad_norm2": gn2,
        "heldout_grad_norm2": hn2,
        "grad_dot_heldout": ggh,
        "seq_len": int(batch["input_ids"].shape[-1]),
        "pool": {
            "losses": losses,
            "p": p.tolist(),
            "q": q.tolist(),
            "gram": gram.tolist(),
        },
    }
    pool = pool_arrays(rec)
    subsets = draw_subsets(args.seed, name, args.pool, args.draws)

    # ------------------------------------------------------------ probe draws: real forwards
    lrs = [lr * m for m in lr_multipliers(args, setting.tuning)]
    probes = []
    t0 = time.perf_counter()
    for r in range(args.probe_draws):
        sel = subsets[r]
        row: dict[str, Any] = {"draw": r}
        for spec in args.specs:
            phase(f"probe {r + 1}/{args.probe_draws}: {spec.label}")
            dirs = searches(spec, sel, pool["losses"])
            c_lin = linear_projections(dirs, pool["p"])
            c_real = []
            for idx, w in dirs:
                direction = Direction(keys[np.asarray(idx)], jnp.asarray(w, jnp.float32))
                if len(idx) == 1 and w[0] == 1.0:  # one candidate: L(θ+εz) is the pool's forward
                    plus = losses[int(idx[0])]
                else:
                    plus = float(fns["at"](params, frozen, batch, direction, scale(eps)))
                    counts["forwards"] += 1
                minus = float(fns["at"](params, frozen, batch, direction, scale(-eps)))
                counts["forwards"] += 1
                c_real.append((plus - minus) / (2 * eps))
            b = coefficients(dirs, c_real, args.pool)
            used = [int(i) for i in np.flatnonzero(b)]
            if not used:  # a zero estimate (equal losses): no step
                used = [int(sel[0])]
            if len(used) == 3:  # one more key with weight 0: a 4-key program serves n-SPSA q = 3 and GV M = 4
                used.append(next(i for i in range(args.pool) if i not in used))
            step_dir = Direction(keys[np.asarray(used)], jnp.asarray(b[used], jnp.float32))
            st = direction_stats(b, pool)
            same, heldout = [], []
            for eta in lrs:
                vals = np.asarray(fns["pair_at"](params, frozen, both, step_dir, scale(-eta)), np.float64)
                counts["forwards"] += 2
                same.append(float(vals[0]) - float(loss0))
                heldout.append(float(vals[1]) - float(loss0_h))
            row[spec.label] = {
                "c_linear": c_lin,
                "c_real": c_real,
                "A": st["A"],
                "A_heldout": st["A_heldout"],
                "norm2": st["norm2"],
                "dloss": same,
                "dloss_heldout": heldout,
            }
        probes.append(row)
    tick("probe", t0)
    rec["lrs"] = lrs
    rec["probes"] = probes

    # ------------------------------------------------------------ GV (M = 2) vs MeZO, coupled
    if batch_index == 0 and args.equiv_draws > 0 and task.name == args.tasks_list[0]:
        t0 = time.perf_counter()
        phase("GV M=2 vs MeZO (shared keys)")
        rows = []
        for e in range(args.equiv_draws):
            key = perturb.fold_in(unit_key, 1_000_000 + e)
            gkeys, gweights, glosses = fns["gv2"](params, frozen, batch, key, scale(eps))
            u = Direction(gkeys, jnp.asarray([1 / math.sqrt(2), -1 / math.sqrt(2)], jnp.float32))
            pair = np.asarray(
                [float(fns["at"](params, frozen, batch, u, scale(s * math.sqrt(2) * eps))) for s in (1.0, -1.0)]
            )
            counts["forwards"] += 6
            g_u = (pair[0] - pair[1]) / (2 * math.sqrt(2) * eps)
            gv_update = lr * np.asarray(gweights, np.float64)  # coefficients on (z1, z2)
            mezo_update = 2 * lr * g_u * np.array([1 / math.sqrt(2), -1 / math.sqrt(2)])
            rows.append(
                {
                    "gv_update": gv_update.tolist(),
                    "mezo_update": mezo_update.tolist(),
                    "gv_pair_losses": np.asarray(glosses, np.float64)[2:].tolist(),
                    "mezo_pair_losses": pair.tolist(),
                    "max_rel_diff": float(np.max(np.abs(gv_update - mezo_update)) / np.max(np.abs(mezo_update))),
                }
            )
        rec["equivalence_coupled"] = rows
        tick("equivalence", t0)
    rec["timing"] = {**timing, "compile": _COMPILE_SECONDS[0] - compile_start, "total": time.perf_counter() - t_start}
    rec["counts"] = counts
    return rec


# ---------------------------------------------------------------------- summary


def loss_change_model(rec: dict[str, Any], analysis: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Per-lr expected one-step loss changes of one minibatch: exact first order + probed remainder.

    Also ``kappa_step``: the same-batch curvature along the probed steps, ``2R(η)/(η²‖ĝ‖²)`` per lr
    (``R = ΔL + η⟨ĝ, ∇L⟩``), and ``kappa_random``: a random direction's ``zᵀHz/‖z‖²`` from the pool's
    candidates. Their ratio is 1 when the method's steps see the curvature of random directions (the
    isotropic case), below 1 when its selection prefers flat directions.
    """
    probes = [p[label] for p in rec.get("probes", []) if label in p]
    if not probes:
        return None
    lrs = np.asarray(rec["lrs"])
    real = analysis[label]["real"]
    n2 = np.asarray([p["norm2"] for p in probes])
    out = {}
    for key, a_key, a_mean in (("dloss", "A", real["A"]), ("dloss_heldout", "A_heldout", real["A_heldout"])):
        measured = np.asarray([p[key] for p in probes])  # [S, G]
        a = np.asarray([p[a_key] for p in probes])[:, None]
        remainder = measured + lrs[None, :] * a  # ΔL + η⟨ĝ, ∇L⟩
        ratio = remainder.sum(0) / n2.sum()
        out[key] = (-lrs * a_mean + ratio * real["norm2"]).tolist()
        out[key + "_probe"] = measured.mean(0).tolist()
        if key == "dloss":
            pool = rec["pool"]
            eps, loss0 = rec["eps"], rec["loss0"]
            z_hz = 2 * (np.asarray(pool["losses"]) - loss0 - eps * np.asarray(pool["p"])) / eps**2
            random_dir = float(np.mean(z_hz / np.diag(np.asarray(pool["gram"]))))
            out["kappa_step"] = (2 * ratio / lrs**2).tolist()
            out["kappa_random"] = random_dir
    return out


def summarise(records: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Means ± standard errors over minibatches, per tuning (all tasks) and per (tuning, task)."""
    from zojax import diagnostics

    per_unit = []
    for rec in records:
        pool = pool_arrays(rec)
        subsets = draw_subsets(args.seed, rec["unit"], len(pool["p"]), args.draws)
        ana = analyse_pool(pool, subsets, rec["loss0"], rec["eps"], args.specs)
        lc = {s.label: loss_change_model(rec, ana, s.label) for s in args.specs}
        curv = 2 * (pool["losses"] - rec["loss0"] - rec["eps"] * pool["p"]) / rec["eps"] ** 2  # ≈ zᵀHz
        lin = rec["eps"] * pool["p"]
        spearman = float(np.corrcoef(np.argsort(np.argsort(pool["losses"])), np.argsort(np.argsort(lin)))[0, 1])
        c_ratio = {}
        for s in args.specs:
            cl = [c for pr in rec.get("probes", []) for c in pr[s.label]["c_linear"]]
            cr = [c for pr in rec.get("probes", []) for c in pr[s.label]["c_real"]]
            c_ratio[s.label] = (cl, cr)
        per_unit.append(
            {
                "rec": rec,
                "analysis": ana,
                "loss_change": lc,
                "curvature": float(np.mean(curv)),
                "curvature_sd": float(np.std(curv, ddof=1)),
                "rank_corr": spearman,
                "linear_share": float(np.var(lin) / np.var(pool["losses"] - rec["loss0"])),
                "c": c_ratio,
                "equiv": equivalence_samples(pool),
                "centred": analyse_centred(pool, subsets, rec["eps"]),
            }
        )
    summary: dict[str, Any] = {"tunings": {}}
    tunings = sorted({u["rec"]["tuning"] for u in per_unit}, key=lambda t: ("full", "lora", "prefix").index(t))
    for tuning in tunings:
        units = [u for u in per_unit if u["rec"]["tuning"] == tuning]
        tasks = sorted({u["rec"]["task"] for u in units})
        summary["tunings"][tuning] = {
            "all": _group_summary(units, diagnostics, args.specs),
            "tasks": {
                t: _group_summary([u for u in units if u["rec"]["task"] == t], diagnostics, args.specs) for t in tasks
            },
        }
    return summary


def _group_summary(units: Sequence[dict[str, Any]], diagnostics: Any, specs: Sequence[Spec]) -> dict[str, Any]:
    from scipy import stats

    d = units[0]["rec"]["d"]
    lrs = units[0]["rec"]["lrs"]
    g: dict[str, Any] = {
        "units": len(units),
        "tasks": sorted({u["rec"]["task"] for u in units}),
        "d": d,
        "eps": units[0]["rec"]["eps"],
        "lr": units[0]["rec"]["lr"],
        "lrs": lrs,
        "grad_norm": mean_se([math.sqrt(u["rec"]["grad_norm2"]) for u in units]),
        "cos_grad_heldout": mean_se(
            [
                u["rec"]["grad_dot_heldout"] / math.sqrt(u["rec"]["grad_norm2"] * u["rec"]["heldout_grad_norm2"])
                for u in units
            ]
        ),
        "candidate_curvature": mean_se([u["curvature"] for u in units]),
        "candidate_curvature_sd": mean_se([u["curvature_sd"] for u in units]),
        "candidate_rank_corr": mean_se([u["rank_corr"] for u in units]),
        "candidate_linear_share": mean_se([u["linear_share"] for u in units]),
        "seconds_per_minibatch": mean_se([u["rec"]["timing"]["total"] for u in units]),
        "seconds_per_minibatch_without_compile": mean_se(
            [u["rec"]["timing"]["total"] - u["rec"]["timing"].get("compile", 0.0) for u in units]
        ),
        "methods": {},
    }
    for spec in specs:
        lab = spec.label
        m: dict[str, Any] = {"forwards": spec.forwards}
        for ranking in ("real", "linear"):
            m[ranking] = {k: mean_se([u["analysis"][lab][ranking][k] for u in units]) for k in STATS}
            snr = [u["analysis"][lab][ranking]["mult"] ** 2 / u["analysis"][lab][ranking]["noise"] for u in units]
            m[ranking]["snr"] = mean_se(snr)
        pred = dict(linear_prediction(spec, d))
        dn, dk = spec.diagnostics_name
        exact, exact_se = diagnostics.predicted_ratio(dn, dk, d)
        pred["r1_diagnostics"] = (math.sqrt(d - 1) * exact, math.sqrt(d - 1) * exact_se)
        m["linear_prediction"] = pred
        if spec.ranked:
            m["ranking_agreement"] = mean_se([u["analysis"]["_agreement"][lab] for u in units])
        cl = [c for u in units for c in u["c"][lab][0]]
        cr = [c for u in units for c in u["c"][lab][1]]
        if cl:
            cl_, cr_ = np.asarray(cl), np.asarray(cr)
            m["two_point_real_vs_linear"] = {
                "n": len(cl),
                "median_rel_diff": float(np.median(np.abs(cr_ - cl_) / np.maximum(np.abs(cl_), 1e-30))),
                "sq_ratio": float(np.sum(cr_**2) / np.sum(cl_**2)),
                "corr": float(np.corrcoef(cl_, cr_)[0, 1]) if len(cl) > 1 else math.nan,
            }
        lc = [u["loss_change"][lab] for u in units if u["loss_change"][lab] is not None]
        if lc:
            curves = {}
            for key in ("dloss", "dloss_heldout", "dloss_probe", "dloss_heldout_probe", "kappa_step"):
                arr = np.asarray([x[key] for x in lc])  # [units, G]
                curves[key] = [mean_se(arr[:, j]) for j in range(arr.shape[1])]
            best = int(np.argmin([c[0] for c in curves["dloss_heldout"]]))
            best_same = int(np.argmin([c[0] for c in curves["dloss"]]))
            m["loss_change"] = {
                "curves": curves,
                "best_lr_heldout": lrs[best],
                "best_lr_heldout_index": best,
                "best_lr_same": lrs[best_same],
                "at_best": {k: curves[k][best] for k in curves},
                "kappa_random": mean_se([x["kappa_random"] for x in lc]),
                "same_at_best_same": curves["dloss"][best_same],
                "best_at_edge": best in (0, len(lrs) - 1),
            }
        g["methods"][lab] = m
    g["centred"] = {
        f"centred-m{m}": {
            "forwards": m,
            "real": {k: mean_se([u["centred"][f"centred-m{m}"][k] for u in units]) for k in (*STATS, "snr")},
            "linear_prediction": centred_prediction(m),
        }
        for m in CENTRED_SIZES
    }
    # GV (M = 2) vs MeZO (2 lr, √2 ε): two-sample tests on independent draws
    samples: dict[str, dict[str, list[float]]] = {}
    for u in units:
        for k, v in u["equiv"].items():
            for s, xs in v.items():
                samples.setdefault(k, {}).setdefault(s, []).extend(xs)
    coupled = [r for u in units for r in u["rec"].get("equivalence_coupled", [])]
    means = {}
    for s in EQUIV_STATS:
        a, b = np.asarray(samples["mezo-gv-m2"][s]), np.asarray(samples["mezo_2x"][s])
        z = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        means[s] = {
            "gv": float(a.mean()),
            "mezo_2x": float(b.mean()),
            "z": float(z),
            "p": float(2 * stats.norm.sf(abs(z))),
        }
    g["equivalence"] = {
        "ks_gv_vs_mezo_2lr": ks_tests(samples["mezo-gv-m2"], samples["mezo_2x"]),
        "ks_gv_vs_mezo_1lr": ks_tests(samples["mezo-gv-m2"], samples["mezo_1x"]),
        "means": means,
        "coupled_max_rel_diff": max((r["max_rel_diff"] for r in coupled), default=None),
        "coupled_draws": len(coupled),
    }
    return g


# ---------------------------------------------------------------------- printing and plotting


def curvature_ratio(lc: dict[str, Any]) -> float:
    """Mean curvature along a method's steps (the grid's middle lr) over a random direction's;
    ``nan`` unless the random direction's curvature is positive by two standard errors."""
    rand, se = lc["kappa_random"]
    if not (np.isfinite(se) and rand > 2 * se):
        return math.nan
    curve = lc["curves"]["kappa_step"]
    return curve[len(curve) // 2][0] / rand


def _ms(ms: tuple[float, float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean±se`` compactly (``g`` format)."""
    m, se = ms
    if not np.isfinite(m):
        return "—"
    if not np.isfinite(se):
        return f"{m * scale:.{digits}g}"
    return f"{m * scale:.{digits}g}±{se * scale:.2g}"


def report(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    """The tables printed at the end (and after every resumed invocation)."""

    def w(line: str = "") -> None:
        print(line, file=out)

    for tuning, block in summary["tunings"].items():
        g = block["all"]
        w(
            f"== {tuning} (d = {g['d']:,}): {','.join(g['tasks'])}, {g['units']} minibatches; eps {g['eps']:g}, "
            f"base lr {g['lr']:g}; mean±s.e. over minibatches"
        )
        w(f"|∇L| {_ms(g['grad_norm'])}, cos(∇L, ∇L_heldout) {_ms(g['cos_grad_heldout'])}")
        w(
            f"candidates: z'Hz ≈ 2(L(θ+εz) − L − ε<∇L,z>)/ε² = {_ms(g['candidate_curvature'])} (sd within a pool "
            f"{_ms(g['candidate_curvature_sd'])}); rank corr(real, linear) {_ms(g['candidate_rank_corr'])}; "
            f"gradient share of candidate-loss variance {_ms(g['candidate_linear_share'])}"
        )
        w(
            f"{'method':15s} {'F':>2s} {'cos x1e4':>12s} {'r1':>11s} {'r1 lin-rank':>11s} {'r1 pred':>7s} "
            f"{'mult':>11s} {'pred':>4s} {'noise':>11s} {'pred':>4s} {'SNR/F':>5s} {'pred':>5s} {'agree':>5s}"
        )
        for lab, m in g["methods"].items():
            r, lin, pr = m["real"], m["linear"], m["linear_prediction"]
            snr_f = r["snr"][0] / m["forwards"] / 0.5  # MeZO: SNR 1 per 2 forwards
            pred_f = pr["snr"] / m["forwards"] / 0.5
            agree = f"{m['ranking_agreement'][0]:.2f}" if "ranking_agreement" in m else ""
            w(
                f"{lab:15s} {m['forwards']:2d} {_ms(r['cos'], 1e4):>12s} {_ms(r['r1']):>11s} {_ms(lin['r1']):>11s} "
                f"{pr['r1_diagnostics'][0]:7.3f} {_ms(r['mult']):>11s} {pr['mult']:4.2f} {_ms(r['noise']):>11s} "
                f"{pr['noise']:4.2f} {snr_f:5.2f} {pred_f:5.2f} {agree:>5s}"
            )
        for lab, c in g.get("centred", {}).items():
            r, pr, f = c["real"], c["linear_prediction"], c["forwards"]
            w(
                f"{lab:15s} {f:2d} {_ms(r['cos'], 1e4):>12s} {_ms(r['r1']):>11s} {'':>11s} {'':>7s} "
                f"{_ms(r['mult']):>11s} {pr['mult']:4.2f} {_ms(r['noise']):>11s} {pr['noise']:4.2f} "
                f"{r['snr'][0] / f / 0.5:5.2f} {pr['snr'] / f / 0.5:5.2f}   (beyond the paper: centred losses)"
            )
        lrs = g["lrs"]
        w(
            f"one-step loss change x1e3 at the best lr of the grid ({', '.join(f'{x:g}' for x in lrs)}) for the "
            "held-out batch (* = at the grid's edge); probe = raw means of the probe draws; curv/rand = curvature "
            "along the steps (middle lr) over a random direction's (— where the latter is not > 0 by 2 s.e.); "
            "c real/lin = Σc_real²/Σc_lin²"
        )
        w(
            f"{'method':15s} {'F':>2s} {'best lr':>8s} {'dL same':>11s} {'dL held':>11s} {'/F same':>7s} "
            f"{'/F held':>7s} {'probe same':>11s} {'probe held':>11s} {'curv/rand':>9s} {'c real/lin':>10s}"
        )
        for lab, m in g["methods"].items():
            lc = m.get("loss_change")
            if not lc:
                continue
            at, f = lc["at_best"], m["forwards"]
            tp = m.get("two_point_real_vs_linear", {})
            edge = "*" if lc["best_at_edge"] else " "
            kr = curvature_ratio(lc)
            w(
                f"{lab:15s} {f:2d} {lc['best_lr_heldout']:7.1e}{edge} {_ms(at['dloss'], 1e3):>11s} "
                f"{_ms(at['dloss_heldout'], 1e3):>11s} {at['dloss'][0] * 1e3 / f:7.3f} "
                f"{at['dloss_heldout'][0] * 1e3 / f:7.3f} {_ms(at['dloss_probe'], 1e3):>11s} "
                f"{_ms(at['dloss_heldout_probe'], 1e3):>11s} {kr:9.2f} {tp.get('sq_ratio', math.nan):10.4f}"
            )
        e = g["equivalence"]
        ks2, ks1 = e["ks_gv_vs_mezo_2lr"], e["ks_gv_vs_mezo_1lr"]
        coupled = e["coupled_max_rel_diff"]
        w(
            "MeZO-GV (M=2) vs MeZO at (2 lr, sqrt2 eps): shared keys, max relative difference of the updates "
            + (f"{coupled:.1e} over {e['coupled_draws']} draws" if coupled is not None else "(not run)")
        )
        w(
            f"  KS, {ks2['n']} independent draws each: p = "
            + ", ".join(f"{s} {ks2[s]:.3f}" for s in EQUIV_STATS)
            + f" (Bonferroni min {ks2['bonferroni_min_p']:.3f}); MeZO at 1x lr (must differ): min p "
            f"{ks1['bonferroni_min_p']:.2g}"
        )
        for task, tb in block["tasks"].items():
            labs = [lab for lab in ("mezo", "nspsa-q2", "mezo-gv-m4", "mezo-greedy-m4") if lab in tb["methods"]]
            row = ", ".join(f"{lab} {_ms(tb['methods'][lab]['real']['cos'], 1e4)}" for lab in labs)
            w(f"  {task} ({tb['units']} minibatches, {_ms(tb['seconds_per_minibatch'])} s each): cos x1e4 {row}")
        w()


def plot(summary: dict[str, Any], path: str) -> None:
    """Two rows per tuning: direction quality per forward, and held-out loss change per forward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tunings = list(summary["tunings"])
    fig, axes = plt.subplots(len(tunings), 3, figsize=(15, 4.2 * len(tunings)), squeeze=False)
    for row, tuning in enumerate(tunings):
        g = summary["tunings"][tuning]["all"]
        labels = list(g["methods"])
        x = np.arange(len(labels))
        ms = [g["methods"][lab] for lab in labels]
        ax = axes[row, 0]
        for off, ranking, color in ((-0.2, "real", "C0"), (0.2, "linear", "C1")):
            ax.bar(
                x + off,
                [m[ranking]["r1"][0] for m in ms],
                0.4,
                yerr=[2 * m[ranking]["r1"][1] for m in ms],
                color=color,
                capsize=2,
                label=f"measured, {ranking} ranking",
            )
        ax.plot(
            x,
            [m["linear_prediction"]["r1_diagnostics"][0] for m in ms],
            "k_",
            ms=18,
            mew=2,
            label="exact (linear loss)",
        )
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_ylabel(r"$\sqrt{d-1}\,\|\hat g_\parallel\|/\|\hat g_\perp\|$")
        ax.set_title(f"{tuning}: alignment per step (±2 s.e.)")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        snr0 = 0.5
        vals = [m["real"]["snr"][0] / m["forwards"] / snr0 for m in ms]
        errs = [2 * m["real"]["snr"][1] / m["forwards"] / snr0 for m in ms]
        ax.bar(x, vals, 0.6, yerr=errs, capsize=2, color="C2", label="measured")
        ax.plot(
            x,
            [m["linear_prediction"]["snr"] / m["forwards"] / 0.5 for m in ms],
            "k_",
            ms=18,
            mew=2,
            label="linear loss",
        )
        centred = g.get("centred", {})
        if centred:  # beyond the paper: the centred-loss estimate, after the paper's methods
            cx = len(labels) + np.arange(len(centred))
            cs = list(centred.values())
            ax.bar(
                cx,
                [c["real"]["snr"][0] / c["forwards"] / snr0 for c in cs],
                0.6,
                yerr=[2 * c["real"]["snr"][1] / c["forwards"] / snr0 for c in cs],
                capsize=2,
                color="C9",
                label="measured, centred losses (beyond the paper)",
            )
            ax.plot(cx, [c["linear_prediction"]["snr"] / c["forwards"] / snr0 for c in cs], "k_", ms=18, mew=2)
            x, labels = np.concatenate([x, cx]), [*labels, *centred]
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_ylabel("SNR = mult²/noise per forward (MeZO = 1)")
        ax.set_title(f"{tuning}: direction information per forward pass")
        ax.legend(fontsize=7)
        ax = axes[row, 2]
        have = [(lab, m) for lab, m in g["methods"].items() if "loss_change" in m]
        if have:
            xx = np.arange(len(have))
            for off, key, color, name in (
                (-0.2, "dloss", "C3", "same batch"),
                (0.2, "dloss_heldout", "C4", "held-out batch"),
            ):
                v = [m["loss_change"]["at_best"][key][0] * 1e3 / m["forwards"] for _, m in have]
                e = [2 * m["loss_change"]["at_best"][key][1] * 1e3 / m["forwards"] for _, m in have]
                ax.bar(xx + off, v, 0.4, yerr=e, capsize=2, color=color, label=name)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xticks(xx, [lab for lab, _ in have], rotation=45, ha="right")
            ax.set_ylabel("one-step ΔL per forward ×1e3")
            ax.set_title(f"{tuning}: loss change at the best lr (held-out)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- driver

RESULT_KEYS = (
    "model", "seed", "pool", "draws", "probe_draws", "lr_grid", "methods", "batch_size", "eps", "lr",
    "num_train", "equiv_draws", "max_length",
)  # fmt: skip
DEFAULT_LR_GRID = "full:3,8,20;lora:32,128,512;prefix:1,4,16"


def lr_multipliers(args: argparse.Namespace, tuning: str) -> list[float]:
    """The learning-rate grid of ``tuning`` as multiples of the trainer's default rate.

    ``--lr-grid`` is ``"1,4,16"`` (every tuning) or ``"full:2,8,32;lora:4,16,64"``.
    """
    spec = str(args.lr_grid)
    if ":" not in spec:
        return [float(x) for x in spec.split(",")]
    table = dict(part.split(":", 1) for part in spec.split(";") if part)
    if tuning not in table:
        raise SystemExit(f"--lr-grid {spec!r} has no grid for tuning {tuning!r}")
    return [float(x) for x in table[tuning].split(",")]


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a stored record depends on (a resume must match them)."""
    return {k: getattr(args, k) for k in RESULT_KEYS}


def load_existing(path: str, config: dict[str, Any], fresh: bool) -> list[dict[str, Any]]:
    if fresh or not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    if data.get("config") != config:
        raise SystemExit(
            f"{path} was written with other settings ({data.get('config')}); pass --fresh to overwrite "
            f"or a different --out"
        )
    return list(data.get("records", []))


def save(path: str, config: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"config": config, "summary": summary, "records": records}, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a zojax model name or random:tiny")
    ap.add_argument("--tasks", default="sst2,copa,wic")
    ap.add_argument("--tunings", default="full,lora")
    ap.add_argument("--batches", type=int, default=8, help="minibatches per (task, tuning)")
    ap.add_argument("--draws", type=int, default=64, help="draws per minibatch")
    ap.add_argument("--pool", type=int, default=16, help="candidates with a real forward per minibatch (>= 8)")
    ap.add_argument(
        "--probe-draws", type=int, default=1, help="draws per minibatch with real two-point and step forwards"
    )
    ap.add_argument(
        "--lr-grid",
        default=DEFAULT_LR_GRID,
        help="learning rates as multiples of the trainer's default ZO rate of each tuning "
        f"(3e-5 full, 1e-4 LoRA): '1,4,16' or per tuning (default {DEFAULT_LR_GRID!r})",
    )
    ap.add_argument("--methods", default=",".join(s.label for s in SPECS), help="subset of the methods")
    ap.add_argument("--eps", type=float, default=None, help="ε (default: the trainer's for the tuning)")
    ap.add_argument(
        "--lr", type=float, default=None, help="base learning rate (default: the trainer's ZO rate for the tuning)"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-train", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--equiv-draws", type=int, default=2, help="shared-key GV(M=2)/MeZO draws on each first minibatch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="results/directions.json")
    ap.add_argument("--plot", default=None, help="PNG path (e.g. docs/directions.png)")
    ap.add_argument("--fresh", action="store_true", help="ignore (overwrite) an existing --out")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after computing this many minibatches")
    ap.add_argument("--compile-cache", default=None, help="persistent XLA cache folder ('none' = off)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    labels = {s.label: s for s in SPECS}
    try:
        args.specs = tuple(labels[m] for m in args.methods.split(",") if m)
    except KeyError as e:
        ap.error(f"--methods: unknown {e}; choose from {','.join(labels)}")
    args.tasks_list = [t for t in args.tasks.split(",") if t]
    args.tunings_list = [t for t in args.tunings.split(",") if t]
    if args.pool < DRAW_SIZE:
        ap.error(f"--pool must be >= {DRAW_SIZE}")
    for t in args.tunings_list:
        lr_multipliers(args, t)
    if args.probe_draws > args.draws:
        ap.error("--probe-draws must be <= --draws")
    return args


def heldout_batches(task: Any, splits: Any, tokenizer: Any, args: argparse.Namespace, train: Any) -> Any:
    """Batches of the dev split with the training batches' shapes (both padded to the longer)."""
    from zojax.train.data import TrainBatches

    held = TrainBatches(task, splits.dev.examples, tokenizer, args.batch_size, args.seed, args.max_length)
    if held.shared_prompt != train.shared_prompt:
        held.shared_prompt = train.shared_prompt = False
        held.seq_len = TrainBatches(
            task, splits.dev.examples, tokenizer, args.batch_size, args.seed, args.max_length, share_prompts=False
        ).seq_len
        train.seq_len = TrainBatches(
            task, train.examples, tokenizer, args.batch_size, args.seed, args.max_length, share_prompts=False
        ).seq_len
    seq = max(held.seq_len, train.seq_len)
    held.seq_len = train.seq_len = seq
    if train.num_candidates is not None:
        held.num_candidates = train.num_candidates = max(held.num_candidates, train.num_candidates)
    return held


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zojax.train.cache import enable_compile_cache

    enable_compile_cache(args.compile_cache)
    track_compile_time()
    from tqdm import tqdm

    from zojax.tasks import get_task
    from zojax.train.data import TrainBatches
    from zojax.train.loop import build_model

    config = run_config(args)
    records = load_existing(args.out, config, args.fresh)
    done = {r["unit"] for r in records}
    units = [(task, tuning, b) for tuning in args.tunings_list for task in args.tasks_list for b in range(args.batches)]
    todo = [u for u in units if unit_name(*u) not in done]
    print(
        f"[directions] {len(units)} minibatches ({len(done & {unit_name(*u) for u in units})} stored in {args.out}); "
        f"pool {args.pool}, {args.draws} draws, {args.probe_draws} probe draw(s), lr grid {args.lr_grid}",
        flush=True,
    )
    if todo:
        t0 = time.perf_counter()
        model, params = build_model(args.model)
        print(f"[directions] {model!r} loaded in {time.perf_counter() - t0:.1f}s", flush=True)
        settings = {t: build_setting(model, params, t, args.seed, args.eps, args.lr) for t in args.tunings_list}
        data: dict[str, Any] = {}
        bar = tqdm(total=len(todo), disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        for computed, (task_name, tuning, b) in enumerate(todo, start=1):
            if task_name not in data:
                task = get_task(task_name)
                splits = task.splits(seed=args.seed, num_train=args.num_train, data_dir=args.data_dir)
                train = TrainBatches(
                    task, splits.train.examples, model.tokenizer, args.batch_size, args.seed, args.max_length
                )
                held = heldout_batches(task, splits, model.tokenizer, args, train)
                data[task_name] = (task, train, held)
            task, train, held = data[task_name]
            rec = compute_unit(args, settings[tuning], task, train, held, b, progress=bar)
            records.append(rec)
            save(args.out, config, records, None)
            bar.update(1)
            bar.write(
                f"[directions] {rec['unit']}: {rec['timing']['total']:.0f}s "
                f"({rec['counts']['forwards']} forwards, {rec['counts']['gradients']} gradients; "
                + ", ".join(f"{k} {v:.0f}s" for k, v in rec["timing"].items() if k != "total")
                + ")"
            )
            if args.stop_after is not None and computed >= args.stop_after:
                break
        bar.close()
    order = {unit_name(*u): i for i, u in enumerate(units)}
    selected = sorted([r for r in records if r["unit"] in order], key=lambda r: order[r["unit"]])
    if not selected:
        return 0
    summary = summarise(selected, args)
    save(args.out, config, records, summary)
    report(summary)
    print(f"wrote {args.out}")
    if args.plot:
        plot(summary, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
