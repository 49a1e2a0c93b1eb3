"""The noise contract of :mod:`zojax.perturb`: what a draw is, whatever the leaf's shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

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
        jax.jit(lambda k: perturb.leaf_noise(k, stacked, (2, 64, 64), "rademacher"))(perturb.key_data(0))
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


def test_gaussian_noise_is_standard_normal() -> None:
    """~10⁶ draws of one leaf: E[z] = 0, E[z²] = 1, E[z⁴] = 3 within Bonferroni z-bounds, and a
    Kolmogorov–Smirnov test against N(0, 1) at level 1e-4."""
    z = _draw((1024, 1024), "gaussian").astype(np.float64)
    moments = np.stack([z, z**2 - 1.0, z**4 - 3.0], axis=-1).reshape(-1, 3)
    ok, zs = _stats.mean_within_bound(moments, np.zeros(3))
    assert ok, f"moments: {np.round(zs, 2)}"
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4


def test_gaussian_noise_is_uncorrelated_across_neighbours_keys_layers_and_leaves() -> None:
    """E[z_a z_b] = 0 for neighbouring elements (same row, next row), for the same element under
    another key, another layer of a stacked leaf and another leaf, each within its Bonferroni
    z-bound (the sample is the products over ~2.6·10⁵ elements)."""
    shape = (512, 512)
    a, b = _draw(shape, "gaussian", 0), _draw(shape, "gaussian", 1)
    stacked = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("w"))
    layers = np.asarray(jax.jit(lambda k: perturb.leaf_noise(k, stacked, (2, *shape)))(perturb.key_data(0)))
    other = np.asarray(
        jax.jit(lambda k: perturb.leaf_noise(k, (jax.tree_util.DictKey("v"),), shape))(perturb.key_data(0))
    )
    products = np.stack(
        [
            (a[:, :-1] * a[:, 1:])[:-1].ravel(),
            (a[:-1] * a[1:])[:, :-1].ravel(),
            (a * b)[:-1, :-1].ravel(),
            (layers[0] * layers[1])[:-1, :-1].ravel(),
            (a * other)[:-1, :-1].ravel(),
        ],
        axis=1,
    ).astype(np.float64)
    ok, zs = _stats.mean_within_bound(products, np.zeros(products.shape[1]))
    assert ok, f"products: {np.round(zs, 2)}"


def test_counter_bits_are_fair_and_independent_of_the_next_counter() -> None:
    """Every bit of ``counter_bits`` is 1 with probability 1/2, and bit j of word i is uncorrelated
    with bit k of word i + 1 for all 32 × 32 pairs (Bonferroni z-bounds over 2¹⁸ counters): the
    hash scatters consecutive counters."""
    words = np.asarray(jax.jit(lambda k: perturb.counter_bits(k, (1 << 18,)))(perturb.key_data(3)))
    bits = ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float64) - 0.5
    ok, zs = _stats.mean_within_bound(bits, np.zeros(32))
    assert ok, f"bit means: {np.round(zs, 2)}"
    pairs = (bits[:-1, :, None] * bits[1:, None, :]).reshape(bits.shape[0] - 1, -1)
    ok, zs = _stats.mean_within_bound(pairs, np.zeros(pairs.shape[1]))
    assert ok, f"largest |z| of a bit pair: {np.abs(zs).max():.2f}"


def test_counter_bits_refuse_more_than_2_to_the_32_elements() -> None:
    with pytest.raises(ValueError, match="2\\*\\*32"):
        jax.eval_shape(lambda k: perturb.counter_bits(k, (1 << 16, (1 << 16) + 1)), perturb.key_data(0))


# --- the non-float rule: every path that adds noise refuses non-float leaves, naming the path ----


def _tree_with(leaf: jax.Array) -> dict:
    return {"w": jnp.ones((2, 3)), "state": {"step": leaf}}


@pytest.mark.parametrize(
    "leaf",
    [jnp.array([5, 100], jnp.int32), jnp.array([True]), jnp.array([1j], jnp.complex64)],
    ids=["int32", "bool", "complex64"],
)
def test_every_noise_path_rejects_nonfloat_leaves(leaf: jax.Array) -> None:
    tree = _tree_with(leaf)
    d = perturb.Direction.single(perturb.key_data(0))
    many = perturb.Direction(
        perturb.candidate_keys(perturb.key_data(0), perturb.UNROLL_MAX + 1),
        jnp.ones((perturb.UNROLL_MAX + 1,), jnp.float32),
    )
    err = r"^params: leaf \['state'\]\['step'\] has dtype"
    for fn in (
        lambda: perturb.perturb(tree, d, 0.1),
        lambda: perturb.perturb(tree, many, 0.1),  # the fori_loop path
        lambda: perturb.scaled_direction_tree(d, tree, 1.0),  # the update
        lambda: perturb.direction_tree(d, tree),
        lambda: jax.jit(lambda t: perturb.perturb(t, d, 0.1))(tree),
    ):
        with pytest.raises(ValueError, match=err):
            fn()
    # on the fly: the subtree's prefix is part of the named path
    with pytest.raises(ValueError, match=r"^params: leaf \['layers'\]\['state'\]\['step'\]"):
        perturb.perturb_subtree(tree, ("layers",), d, 0.1, layer=0)
    # float leaves of any precision pass
    perturb.perturb({"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float16)}, d, 0.1)


def test_model_on_the_fly_perturbation_rejects_nonfloat_leaves() -> None:
    """The model path (``perturbation=(v, s)`` inside the layer scan and on the top-level entries)
    applies the same rule: an integer leaf among the layers or the final norm raises, naming it."""
    import zojax.models as zm

    model, good = zm.init_model(zm.llama_config("tiny"), 0)
    ids = jnp.ones((1, 4), jnp.int32)
    mask = jnp.ones((1, 4), jnp.int32)
    d = perturb.Direction.single(perturb.key_data(0))
    num_layers = model.config.num_layers
    bad_layers = {
        **good,
        "layers": {**good["layers"], "count": jnp.zeros((num_layers, 2), jnp.int32)},
    }
    bad_norm = {
        **good,
        "final_norm": {**good["final_norm"], "count": jnp.zeros((2,), jnp.int32)},
    }
    for params, path in ((bad_layers, r"\['layers'\]\['count'\]"), (bad_norm, r"\['final_norm'\]\['count'\]")):
        with pytest.raises(ValueError, match=rf"^params: leaf {path} has dtype int32"):
            jax.eval_shape(lambda p: model.logits(p, ids, mask, perturbation=(d, 0.1)), params)
