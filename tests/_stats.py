"""Confidence bounds for the statistical property tests (derived from sample variances)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_within_bound(samples: np.ndarray, target: np.ndarray, alpha: float = 1e-4) -> tuple[bool, np.ndarray]:
    """Two-sided z-test per coordinate with a Bonferroni correction over the coordinates.

    Args:
      samples: ``[N, d]`` independent draws of an estimator.
      target: ``[d]`` the value its mean should equal.
      alpha: family-wise false-rejection probability.

    Returns:
      (all coordinates accepted, the standardised deviations ``(mean - target) / (sd / sqrt(N))``).
    """
    n, d = samples.shape
    se = samples.std(axis=0, ddof=1) / np.sqrt(n)
    zscores = (samples.mean(axis=0) - target) / se
    crit = stats.norm.ppf(1 - alpha / (2 * d))
    return bool(np.all(np.abs(zscores) <= crit)), zscores


def lower_confidence_bound(samples: np.ndarray, alpha: float = 1e-4) -> float:
    """One-sided lower ``1 - alpha`` confidence bound of the mean of scalar samples."""
    n = samples.shape[0]
    return float(samples.mean() - stats.norm.ppf(1 - alpha) * samples.std(ddof=1) / np.sqrt(n))
