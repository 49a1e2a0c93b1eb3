"""The paper's alignment lemmas, measured on the real estimators.

For a random unit gradient in ``d = 20 000`` dimensions, the measured ``‖V∥‖/‖V⊥‖`` of n-SPSA
(``k`` queries; ``k = 1`` is MeZO), MeZO-Greedy and MeZO-GV (``k`` candidates) must (a) agree with
the exact finite-``k`` prediction of :func:`zojax.diagnostics.predicted_ratio` within a confidence
bound derived from both standard errors, and (b) grow with ``k``. The lemmas' asymptotic formulas
are printed next to them (``pytest -s``); they are large-``k`` approximations, not asserted.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from zojax import diagnostics

D = 20_000
TRIALS = 512  # expected z of the smallest growth step (greedy k=2→4) ≈ 6.5
CELLS = [("nspsa", 1), ("nspsa", 4)] + [(m, k) for m in ("mezo-greedy", "mezo-gv") for k in (2, 4, 8)]
ALPHA = 1e-3  # family-wise over all cells and comparisons


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, int], tuple[np.ndarray, tuple[float, float]]]:
    out = {}
    print(f"\nd = {D}, {TRIALS} trials: measured ‖V∥‖/‖V⊥‖ · √(d−1) (± s.e.) vs exact and lemma")
    for m, k in CELLS:
        r = diagnostics.measured_ratios(m, k, D, num_trials=TRIALS, seed=k)
        pred = diagnostics.predicted_ratio(m, k, D, num_samples=100_000, seed=1000 + k)
        out[(m, k)] = (r, pred)
        s = math.sqrt(D - 1)
        print(
            f"{m:12s} k={k:2d}  measured {s * r.mean():.3f} ± {s * r.std(ddof=1) / math.sqrt(TRIALS):.3f}"
            f"  exact {s * pred[0]:.3f}  lemma {s * diagnostics.lemma_ratio(m, k, D):.3f}"
        )
    return out


def test_measured_alignment_matches_exact_prediction(table: dict) -> None:
    crit = stats.norm.ppf(1 - ALPHA / (2 * len(CELLS)))
    for (m, k), (r, (pred, pred_se)) in table.items():
        se = math.sqrt(r.var(ddof=1) / len(r) + pred_se**2)
        assert abs(r.mean() - pred) <= crit * se, (m, k, r.mean(), pred, se)


@pytest.mark.parametrize("method", ["nspsa", "mezo-greedy", "mezo-gv"])
def test_alignment_grows_with_k(table: dict, method: str) -> None:
    ks = sorted(k for m, k in table if m == method)
    crit = stats.norm.ppf(1 - ALPHA / len(CELLS))
    for lo, hi in itertools.pairwise(ks):
        a, b = table[(method, lo)][0], table[(method, hi)][0]
        diff_lcb = b.mean() - a.mean() - crit * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert diff_lcb > 0, (method, lo, hi)


def test_guiding_vector_beats_greedy_at_equal_candidates(table: dict) -> None:
    # Lemma 4 vs 3: averaging s = k/2 elites cancels orthogonal noise the single best keeps.
    crit = stats.norm.ppf(1 - ALPHA / len(CELLS))
    for k in (4, 8):
        a, b = table[("mezo-greedy", k)][0], table[("mezo-gv", k)][0]
        diff_lcb = b.mean() - a.mean() - crit * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert diff_lcb > 0, k


def test_prediction_rejects_a_wrong_model() -> None:
    # The exact prediction is sharp enough to tell greedy from a (wrong) "random candidate" model,
    # whose ratio would be that of plain MeZO.
    r = diagnostics.measured_ratios("mezo-greedy", 8, D, num_trials=TRIALS, seed=8)
    wrong, wrong_se = diagnostics.predicted_ratio("nspsa", 1, D, num_samples=100_000)
    se = math.sqrt(r.var(ddof=1) / len(r) + wrong_se**2)
    assert abs(r.mean() - wrong) > stats.norm.ppf(1 - ALPHA / 2) * se
