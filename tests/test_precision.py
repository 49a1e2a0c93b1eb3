"""Stochastic rounding into bfloat16 (zojax.precision): unbiased, reproducible, memory-free."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax import perturb, precision
from zojax.models import param_bytes

N = 1 << 14
Z = 5.0  # bounds are Z standard deviations of the statistic (two-sided p ≈ 6e-7 per check)


def _bits(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return perturb.counter_bits(perturb.key_data(seed), shape)


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bfloat16 values just below and above float32 ``x`` (truncation and one ulp up)."""
    word = x.astype(np.float32).view(np.uint32)
    low = (word & np.uint32(0xFFFF0000)).view(np.float32)
    high = ((word & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32)
    return np.where(x >= 0, low, high), np.where(x >= 0, high, low)


@pytest.mark.parametrize("value", [1.0 + 2.0**-9, -3.0 - 5 * 2.0**-10, 1e-3 * (1 + 1 / 3), -7.77e5])
def test_stochastic_round_is_unbiased_and_lands_on_a_neighbour(value: float) -> None:
    x = np.full((N,), value, np.float32)
    y = np.asarray(precision.stochastic_round(jnp.asarray(x), _bits(1, x.shape)).astype(jnp.float32))
    below, above = _neighbours(x)
    assert np.all((y == below) | (y == above))
    # Each draw is `below + B·(above − below)`, B ~ Bernoulli(f): the mean's sd is √(f(1−f)/N)·ulp.
    ulp = float(above[0] - below[0])
    f = (float(x[0]) - float(below[0])) / ulp
    assert 0 < f < 1
    sd = np.sqrt(f * (1 - f) / N) * abs(ulp)
    assert abs(float(np.mean(y.astype(np.float64))) - float(x[0])) < Z * sd


def test_stochastic_round_keeps_representable_and_nonfinite_values() -> None:
    x = jnp.asarray([1.0, -2.5, 0.0, 3.140625, np.inf, -np.inf, np.nan], jnp.float32)
    for seed in range(4):
        y = precision.stochastic_round(x, _bits(seed, x.shape)).astype(jnp.float32)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_stochastic_round_is_reproducible_under_a_key() -> None:
    x = jnp.linspace(-1, 1, N, dtype=jnp.float32) * 1.001
    a = precision.stochastic_round(x, _bits(3, x.shape))
    b = precision.stochastic_round(x, _bits(3, x.shape))
    c = precision.stochastic_round(x, _bits(4, x.shape))
    assert bool(jnp.all(a == b))
    assert not bool(jnp.all(a == c))


def _params() -> dict[str, jax.Array]:
    return {
        "w": jnp.ones((64, 256), jnp.bfloat16),
        "scale": jnp.full((256,), 0.5, jnp.bfloat16),
        "f32": jnp.ones((8,), jnp.float32),
    }


def test_transform_makes_apply_updates_exactly_the_stochastic_rounding() -> None:
    params = _params()
    updates = jax.tree.map(lambda p: jnp.full(p.shape, 3e-4, p.dtype), params)
    tx = precision.stochastic_rounding(key=7)
    state = tx.init(params)
    for t in range(2):
        out, new_state = tx.update(updates, state, params)
        new = optax.apply_updates(params, out)
        step_key = perturb.fold_in(perturb.fold_in(perturb.key_data(7), precision.ROUNDING_STREAM), t)
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            got = _at(new, path)
            u = _at(updates, path)
            if p.dtype == jnp.float32:  # float32 leaves pass through
                np.testing.assert_array_equal(np.asarray(got), np.asarray(p + u))
                continue
            bits = perturb.counter_bits(perturb.fold_in(step_key, perturb.path_id(path)), p.shape)
            want = precision.stochastic_round(p.astype(jnp.float32) + u.astype(jnp.float32), bits)
            assert got.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
        assert int(new_state.count) == t + 1
        state = new_state


def _at(tree: dict, path: tuple) -> jax.Array:
    return tree[path[0].key]


def test_updates_below_half_an_ulp_vanish_with_nearest_and_accumulate_with_stochastic() -> None:
    """1000 steps of u = −1e-4 on bfloat16 ones (ulp 2⁻⁷ above 1, 2⁻⁸ below): nearest never moves;
    SR's mean lands on 1 − 0.1. SR errors are martingale differences of variance ≤ ulp²/4 per step,
    so the mean over N elements after T steps has sd ≤ √(T/N)·2⁻⁷/2."""
    steps, lr = 1000, 1e-4
    params = {"w": jnp.ones((N,), jnp.bfloat16)}
    grads = {"w": jnp.ones((N,), jnp.bfloat16)}
    for rounding in precision.ROUNDINGS:
        parts = [optax.sgd(lr)] + ([precision.stochastic_rounding(0)] if rounding == "stochastic" else [])
        tx = optax.chain(*parts)

        @jax.jit
        def run(p: dict, tx: optax.GradientTransformation = tx) -> dict:
            def body(_: int, carry: tuple) -> tuple:
                p, s = carry
                u, s = tx.update(grads, s, p)
                return optax.apply_updates(p, u), s

            return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]

        w = np.asarray(run(params)["w"], np.float64)
        assert precision.below_half_ulp_fraction(params, {"w": -lr * grads["w"]}) == 1.0
        if rounding == "nearest":
            assert np.all(w == 1.0)
        else:
            sd = np.sqrt(steps / N) * 2.0**-7 / 2
            assert abs(w.mean() - (1 - steps * lr)) < Z * sd


def test_below_half_ulp_fraction_and_changed_fraction() -> None:
    p = {"a": jnp.ones((100,), jnp.bfloat16), "b": jnp.ones((300,), jnp.float32)}
    small = jax.tree.map(lambda x: jnp.full(x.shape, 1e-4, x.dtype), p)
    # bfloat16's half ulp at 1 is 2⁻⁸ ≈ 3.9e-3 > 1e-4; float32's is 6e-8 < 1e-4.
    assert float(precision.below_half_ulp_fraction(p, small)) == pytest.approx(0.25)
    new = optax.apply_updates(p, small)
    assert float(precision.changed_fraction(p, new)) == pytest.approx(0.75)


def test_stochastic_rounding_adds_no_parameter_sized_buffer() -> None:
    """The compiled MeZO step on bfloat16 parameters with SR needs less extra temporary memory than
    one bfloat16 copy of the parameters (the rounding bits are drawn inside the update's fusion)."""
    params = {"w": jnp.ones((1024, 1024), jnp.bfloat16), "b": jnp.ones((1024,), jnp.bfloat16)}
    size = param_bytes(params)

    def loss(p: dict) -> jax.Array:
        return jnp.sum(jnp.square(p["w"].astype(jnp.float32))) + jnp.sum(p["b"].astype(jnp.float32))

    temps = {}
    for rounding in precision.ROUNDINGS:
        tx = zojax.mezo(1e-4, 1e-3)
        if rounding == "stochastic":
            tx = optax.chain(tx, precision.stochastic_rounding(0))

        compiled = zojax.jit_step(tx, lambda: loss).lower(params, tx.init(params)).compile()
        temps[rounding] = compiled.memory_analysis().temp_size_in_bytes
    assert temps["stochastic"] - temps["nearest"] < size


def test_transform_requires_params() -> None:
    tx = precision.stochastic_rounding(0)
    p = _params()
    with pytest.raises(ValueError, match="params"):
        tx.update(p, tx.init(p))
