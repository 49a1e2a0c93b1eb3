"""The noise contract of :mod:`zojax.perturb`: what a draw is, whatever the leaf's shape."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests import _stats
from zojax import perturb

PATH = (jax.tree_util.DictKey("w"),)


def _draw(shape: tuple[int, ...], distribution: str, seed: int = 0) -> np.ndarray:
    fn = jax.jit(lambda k: perturb.leaf_noise(k, PATH, shape, distribution))
    return np.asarray(fn(perturb.key_data(seed)))


# 40 and 72 leave a partly used last 32-bit word per row (Rademacher signs are packed 32 a word)
@pytest.mark.parametrize("shape", [(8192, 64), (8192, 40), (4096, 72)])
def test_packed_rademacher_signs_are_fair_and_pairwise_uncorrelated(shape: tuple[int, int]) -> None:
    """Rows as samples: E[z_j] = 0 and E[z_j z_k] = 0 (j ≠ k) for neighbours within a word, across
    a word boundary and across rows, each within its Bonferroni-corrected z-bound."""
    z = _draw(shape, "rademacher")
    assert set(np.unique(z).tolist()) == {-1.0, 1.0}
    n = shape[1]
    ok, zs = _stats.mean_within_bound(z, np.zeros(n))
    assert ok, f"column means: {np.round(zs, 2)}"
    pairs = [(j, j + 1) for j in range(n - 1)] + [(j, j + 32) for j in range(n - 32)]
    products = np.stack([z[:-1, j] * z[:-1, k] for j, k in pairs], axis=1)
    products = np.concatenate([products, z[:-1] * z[1:]], axis=1)  # row i against row i + 1
    ok, zs = _stats.mean_within_bound(products, np.zeros(products.shape[1]))
    assert ok, f"pair products: {np.round(zs, 2)}"


def test_packed_rademacher_differs_between_keys_layers_and_leaves() -> None:
    a, b = _draw((64, 64), "rademacher", 0), _draw((64, 64), "rademacher", 1)
    stacked = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("w"))
    layers = np.asarray(
        jax.jit(lambda k: perturb.leaf_noise(k, stacked, (2, 64, 64), "rademacher"))(
            perturb.key_data(0)
        )
    )
    for x, y in [(a, b), (a, layers[0]), (layers[0], layers[1])]:
        agree = float(np.mean(x == y))  # 0.5 expected, sd 1/128
        assert abs(agree - 0.5) < 5 / 128, agree


@pytest.mark.parametrize("distribution", perturb.DISTRIBUTIONS)
def test_scalar_and_vector_leaves(distribution: str) -> None:
    s = _draw((), distribution)
    v = _draw((5,), distribution)
    assert s.shape == () and v.shape == (5,)
    assert np.all(np.isfinite(v)) and np.isfinite(s)
