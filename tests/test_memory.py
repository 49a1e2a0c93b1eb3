"""Memory bounds of compiled steps (:func:`zojax.jit_step`), exact via ``compile().memory_analysis()``.

For a plain ``loss(params)`` the estimators may hold one perturbed copy of the parameters besides
the update tree that every optax transformation returns, whatever ``M`` is. Models perturb on the
fly inside their layer scan and need no memory beyond the forward's, also for MeZO-GV with
``M > UNROLL_MAX`` candidates (below, and ``test_models.py`` for M = 2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

import zojax
import zojax.models as zm
from zojax import perturb

PARAMS = {
    "embed": jax.ShapeDtypeStruct((512, 256), jnp.float32),
    "layers": {"w": jax.ShapeDtypeStruct((4, 256, 256), jnp.float32)},
    "bias": jax.ShapeDtypeStruct((256,), jnp.float32),
}
PARAM_BYTES = sum(x.size * 4 for x in jax.tree.leaves(PARAMS))


def loss(p: Any) -> jax.Array:
    return sum(jnp.sum(jnp.tanh(x)) for x in jax.tree.leaves(p))


def temp_bytes(name: str, **options: Any) -> int:
    tx = zojax.METHODS[name].optimizer(1e-3, **options)
    state = jax.eval_shape(tx.init, PARAMS)
    lowered = zojax.jit_step(tx, lambda: loss).lower(PARAMS, state)
    return lowered.compile().memory_analysis().temp_size_in_bytes


# several forwards per step where a method has a count; MeZO-GV over M in the next test
MEMORY_OPTIONS = {
    "nspsa": {"num_queries": 4},
    "mezo-greedy": {"num_candidates": 8},
    "mezo-centred": {"num_candidates": 8},
}


@pytest.mark.parametrize("name", [n for n in sorted(zojax.METHODS) if n != "mezo-gv"])
def test_plain_loss_step_holds_at_most_two_parameter_copies(name: str) -> None:
    assert temp_bytes(name, **MEMORY_OPTIONS.get(name, {})) <= 2 * PARAM_BYTES + 64 * 1024


def test_guided_step_memory_is_constant_in_num_candidates() -> None:
    temps = {m: temp_bytes("mezo-gv", num_candidates=m) for m in (2, 8, 16)}
    assert max(temps.values()) <= 2 * PARAM_BYTES + 64 * 1024, temps
    # Doubling M adds only O(M) scalars (losses, keys, sort scratch), no parameter-sized buffer.
    assert abs(temps[16] - temps[8]) <= 16 * 1024, temps


def test_many_key_direction_equals_the_sum_of_its_draws() -> None:
    """``Direction.leaf`` beyond ``UNROLL_MAX`` keys (one vmap, reduced) is ``Σ_i w_i z_i``."""
    k = 2 * perturb.UNROLL_MAX
    d = perturb.Direction(perturb.candidate_keys(perturb.key_data(3), k), jnp.linspace(1.0, -1.0, k, dtype=jnp.float32))
    stacked = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("w"))
    for path, shape, layer in [((jax.tree_util.DictKey("embed"),), (64, 8), None),
                               (stacked, (3, 16, 8), None), (stacked, (16, 8), 2)]:  # fmt: skip
        got = jax.jit(lambda d, p=path, s=shape, i=layer: d.leaf(p, s, i))(d)
        ref = sum(d.weights[i] * perturb.leaf_noise(d.keys[i], path, shape, layer=layer) for i in range(k))
        assert float(jnp.max(jnp.abs(got - ref))) <= 1e-5
        assert float(jnp.std(got)) > 0.5  # not degenerate


def _model_case() -> tuple[Any, Any, jax.Array, jax.Array]:
    cfg = zm.llama_config("tiny", vocab_size=4096, hidden_size=128, intermediate_size=256, num_layers=4)
    model, params = zm.init_model(cfg, 0)
    ids = jax.random.randint(jax.random.key(3), (4, 32), 0, cfg.vocab_size)
    return model, params, ids, jnp.ones_like(ids)


def _compiled_temp(jitted: Any, *args: Any) -> int:
    return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("num_candidates", [8, 16])
def test_guided_step_on_the_fly_beyond_unroll_max(num_candidates: int) -> None:
    """The bar for MeZO-GV with M > UNROLL_MAX on a model, parameters donated:
    ``(temp(step) − temp(forward)) / parameter bytes ≤ 0.10``.

    The largest leaf (the embedding) is 47% of the parameters, so materialising any full leaf of
    the update (or a [M, *leaf] stack of draws) would fail the bar.
    """
    assert num_candidates > perturb.UNROLL_MAX
    model, params, ids, mask = _model_case()
    params = jax.eval_shape(lambda p: p, params)  # shapes only: no constants closed over
    param_bytes = zm.param_bytes(params)
    largest = max(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    assert largest > 0.10 * param_bytes

    def fwd(p: Any) -> jax.Array:
        return zm.next_token_loss(model, ids, mask)(p)

    tx = zojax.mezo_gv(1e-3, num_candidates=num_candidates, weight_decay=1e-2)
    state = jax.eval_shape(tx.init, params)
    step = zojax.jit_step(tx, lambda: zm.next_token_loss(model, ids, mask))

    base = _compiled_temp(jax.jit(fwd, **zojax.jit_options(donate=False)), params)
    temp = _compiled_temp(step, params, state)
    excess = (temp - base) / param_bytes
    assert excess <= 0.10, (temp, base, param_bytes, excess)
