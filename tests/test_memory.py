"""Memory bounds of compiled steps, exact via ``compile().memory_analysis()``.

For a plain ``loss(params)`` the estimators may hold one perturbed copy of the parameters besides
the update tree that every optax transformation returns, whatever ``M`` is. (Models perturb on the
fly inside their layer scan and avoid the copy: see ``test_models.py``.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import zojax
from zojax.models import ZO_COMPILER_OPTIONS

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

    def step(p: Any, s: Any) -> tuple[Any, Any]:
        u, s = tx.update(p, s, p, value_fn=loss)
        return optax.apply_updates(p, u), s

    lowered = jax.jit(step, donate_argnums=0).lower(PARAMS, state)
    return (
        lowered.compile(compiler_options=ZO_COMPILER_OPTIONS).memory_analysis().temp_size_in_bytes
    )


@pytest.mark.parametrize(
    ("name", "options"),
    [("mezo", {}), ("nspsa", {"num_queries": 4}), ("mezo-greedy", {"num_candidates": 8})],
)
def test_plain_loss_step_holds_at_most_two_parameter_copies(name: str, options: dict) -> None:
    assert temp_bytes(name, **options) <= 2 * PARAM_BYTES + 64 * 1024


def test_guided_step_memory_is_constant_in_num_candidates() -> None:
    temps = {m: temp_bytes("mezo-gv", num_candidates=m) for m in (2, 8, 16)}
    assert max(temps.values()) <= 2 * PARAM_BYTES + 64 * 1024, temps
    # Doubling M adds only O(M) scalars (losses, keys, sort scratch), no parameter-sized buffer.
    assert abs(temps[16] - temps[8]) <= 16 * 1024, temps
