"""Sharding invariance on 8 forced host devices (see ``conftest.py``).

The perturbation is a function of (key, leaf path, layer) only, so a draw under any
``NamedSharding`` equals the single-device draw bitwise, and a sharded ZO step equals the
single-device step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import zojax
from zojax import perturb
from zojax.perturb import Direction

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")


def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def params_and_specs() -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    params = {
        "embed": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
        "layers": {"w": jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)},
        "head": {
            "kernel": jnp.asarray(0.3 * rng.normal(size=(16, 4)), jnp.float32),
            "bias": jnp.zeros((4,)),
        },
    }
    specs = {
        "embed": P("model", None),  # vocab-parallel
        "layers": {"w": P(None, "data", "model")},  # FSDP x tensor
        "head": {"kernel": P(None, "model"), "bias": P()},
    }
    return params, specs


def shard(tree: Any, specs: Any, m: Mesh) -> Any:
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(m, s)), tree, specs)


@pytest.mark.parametrize("distribution", perturb.DISTRIBUTIONS)
def test_draws_are_bitwise_equal_under_any_sharding(distribution: str) -> None:
    params, specs = params_and_specs()
    m = mesh()
    direction = Direction(jnp.stack([perturb.key_data(3), perturb.key_data(4)]), jnp.array([0.5, -1.5]), distribution)
    out_sh = jax.tree.map(lambda s: NamedSharding(m, s), specs)
    single = jax.jit(lambda p: perturb.perturb(p, direction, 1e-3))(params)
    sharded_params = shard(params, specs, m)
    sharded = jax.jit(lambda p: perturb.perturb(p, direction, 1e-3), out_shardings=out_sh)(sharded_params)
    for path, a, b in zip(
        jax.tree_util.tree_leaves_with_path(single),
        jax.tree.leaves(single),
        jax.tree.leaves(sharded),
        strict=True,
    ):
        assert len(b.sharding.device_set) > 1 or b.shape == (4,), path[0]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path[0]))
    # The per-layer draw a model makes inside its scan equals the slice of the full draw.
    key = perturb.key_data(3)
    path = next(
        k for k, _ in jax.tree_util.tree_leaves_with_path(params) if jax.tree_util.keystr(k) == "['layers']['w']"
    )
    full = jax.jit(lambda k: perturb.leaf_noise(k, path, (3, 16, 8), distribution))(key)
    layer1 = jax.jit(lambda k: perturb.leaf_noise(k, path, (16, 8), distribution, layer=1))(key)
    np.testing.assert_array_equal(np.asarray(full[1]), np.asarray(layer1))


@pytest.mark.parametrize("name", ["mezo", "mezo-gv"])
def test_sharded_step_equals_single_device_step(name: str) -> None:
    params, specs = params_and_specs()
    m = mesh()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(0, 32, size=(16, 6)), jnp.int32)
    y = jnp.asarray(rng.integers(0, 4, size=(16,)), jnp.int32)

    def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        h = p["embed"][x].mean(1)
        for layer in range(3):
            h = h + 0.1 * jnp.tanh(h @ p["layers"]["w"][layer]) @ p["layers"]["w"][layer].T
        logits = h @ p["head"]["kernel"] + p["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    options = {"mezo": {}, "mezo-gv": {"num_candidates": 4}}[name]
    tx = zojax.METHODS[name].optimizer(learning_rate=1e-3, eps=1e-2, **options)

    def step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        u, s = tx.update(p, s, p, value_fn=lambda q: loss(q, x, y))
        return optax.apply_updates(p, u), s

    def run(p: Any, x: jax.Array, y: jax.Array, jitted: Any) -> tuple[Any, list[float]]:
        s = tx.init(p)
        losses = []
        for _ in range(3):
            p, s = jitted(p, s, x, y)
            losses.append(float(zojax.zo_state(s).loss))
        return p, losses

    p1, l1 = run(params, x, y, jax.jit(step))
    p_sh = shard(params, specs, m)
    x_sh = jax.device_put(x, NamedSharding(m, P("data", None)))
    y_sh = jax.device_put(y, NamedSharding(m, P("data")))
    out_sh = jax.tree.map(lambda s: NamedSharding(m, s), specs)
    p8, l8 = run(p_sh, x_sh, y_sh, jax.jit(step, out_shardings=(out_sh, None)))
    assert l1[0] < 2.0 and l1[-1] < 1.05 * l1[0], l1  # a sane problem: no blow-up to amplify errors
    assert p8["layers"]["w"].sharding.spec == P(None, "data", "model")
    # Sharded reductions add in another order (float32 rounding ~1e-7 on a loss of ~1); the ZO
    # difference quotient amplifies it by 1/(2ε) into ĝ, and lr·ĝ·z into the parameters.
    np.testing.assert_allclose(l1, l8, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
