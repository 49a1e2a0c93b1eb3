"""``zojax.jit_step``: the jitted step is the hand-written one, donates, and takes the batch traced."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax


def make_loss(x: jax.Array, y: jax.Array) -> Any:
    return lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def problem(seed: int = 0) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(seed), (16, 8))
    y = x @ jnp.arange(8.0)
    return {"w": jnp.zeros(8), "b": jnp.zeros(())}, x, y


def test_jit_step_equals_the_hand_written_step_bitwise() -> None:
    params, x, y = problem()
    tx = optax.chain(zojax.guided(eps=1e-3, num_candidates=3), optax.adam(1e-2))

    def by_hand(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        updates, s = tx.update(p, s, p, value_fn=make_loss(x, y))
        return optax.apply_updates(p, updates), s

    hand = jax.jit(by_hand, **zojax.jit_options())
    step = zojax.jit_step(tx, make_loss)
    p1, s1 = jax.tree.map(jnp.copy, params), tx.init(params)
    p2, s2 = jax.tree.map(jnp.copy, params), tx.init(params)
    for _ in range(3):
        p1, s1 = hand(p1, s1, x, y)
        p2, s2, stats = step(p2, s2, x, y)
        zs = zojax.zo_state(s2)
        assert stats == {"loss": zs.loss, "projected_grad": zs.projected_grad, "nonfinite": zs.nonfinite_count}
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_donates_params_and_state_and_a_fresh_init_still_works() -> None:
    params, x, y = problem()
    tx = zojax.mezo(1e-2)
    step = zojax.jit_step(tx, make_loss)
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    step(p, s, x, y)
    assert all(leaf.is_deleted() for leaf in [*jax.tree.leaves(p), zojax.zo_state(s).key])
    # the state's key is a fresh buffer, not the transform's own: init again after a donation
    step(jax.tree.map(jnp.copy, params), tx.init(params), x, y)
    kept = zojax.jit_step(tx, make_loss, donate=False)
    p = jax.tree.map(jnp.copy, params)
    kept(p, tx.init(p), x, y)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(p))


def test_the_batch_is_traced_one_compile_for_every_batch() -> None:
    params, x, y = problem()
    tx = zojax.mezo(1e-2)
    step = zojax.jit_step(tx, make_loss)
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    for seed in range(3):
        _, x, y = problem(seed)
        p, s, _ = step(p, s, x, y)
    assert step._cache_size() == 1


def test_an_optimizer_without_a_zojax_estimator_is_rejected() -> None:
    params, x, y = problem()
    tx = optax.sgd(1e-2)
    with pytest.raises(ValueError, match="no ZOState"):
        zojax.jit_step(tx, make_loss)(params, tx.init(params), x, y)


def test_jit_options() -> None:
    assert zojax.jit_options() == {"donate_argnums": (0, 1), "compiler_options": zojax.ZO_COMPILER_OPTIONS}
    assert zojax.jit_options(donate=False, zeroth_order=False) == {"donate_argnums": (), "compiler_options": None}
    import zojax.models as zm

    assert zm.ZO_COMPILER_OPTIONS is zojax.ZO_COMPILER_OPTIONS  # the old import path still works
