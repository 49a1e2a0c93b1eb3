"""Bad input gives a ``ValueError`` naming the argument, for every registered method."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax

PARAMS = {"w": jnp.ones((3,)), "b": jnp.zeros(())}


def quad(p: Any) -> jax.Array:
    return jnp.sum(p["w"] ** 2) + p["b"] ** 2


@pytest.mark.parametrize("name", sorted(zojax.METHODS))
@pytest.mark.parametrize("eps", [0.0, -1e-3])
def test_nonpositive_eps(name: str, eps: float) -> None:
    with pytest.raises(ValueError, match=r"^eps:"):
        zojax.METHODS[name].transform(eps=eps)
    with pytest.raises(ValueError, match=r"^eps:"):
        zojax.METHODS[name].optimizer(1e-2, eps=eps)


@pytest.mark.parametrize("name", sorted(zojax.METHODS))
def test_bad_distribution(name: str) -> None:
    with pytest.raises(ValueError, match=r"^distribution:.*gaussian"):
        zojax.METHODS[name].transform(distribution="uniform")


@pytest.mark.parametrize("m", [0, 1])
def test_guided_needs_two_candidates(m: int) -> None:
    with pytest.raises(ValueError, match=r"^num_candidates:.*M >= 2"):
        zojax.guided(num_candidates=m)
    with pytest.raises(ValueError, match=r"^num_candidates:"):
        zojax.mezo_gv(1e-2, num_candidates=m)


@pytest.mark.parametrize(("m", "alpha"), [(4, 0.1), (4, 0.0), (4, 1.0), (3, 0.2), (2, 0.4)])
def test_elite_ratio_leaving_a_group_empty(m: int, alpha: float) -> None:
    with pytest.raises(ValueError, match=r"^elite_ratio:"):
        zojax.guided(num_candidates=m, elite_ratio=alpha)


def test_other_option_errors() -> None:
    with pytest.raises(ValueError, match=r"^weighting:"):
        zojax.guided(weighting="softmax")
    with pytest.raises(ValueError, match=r"^num_queries:"):
        zojax.nspsa(num_queries=0)
    with pytest.raises(ValueError, match=r"^num_candidates:"):
        zojax.greedy(num_candidates=0)
    with pytest.raises(ValueError, match=r"^method:.*mezo-gv"):
        zojax.registry.get("mezo-gb")
    with pytest.raises(ValueError, match=r"^key:"):
        zojax.mezo(1e-2, key=jnp.zeros((3,), jnp.float32))


@pytest.mark.parametrize("name", sorted(zojax.METHODS))
def test_update_argument_errors(name: str) -> None:
    tx = zojax.METHODS[name].optimizer(1e-2)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"^value_fn:"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match=r"^params:"):
        tx.update(PARAMS, state, None, value_fn=quad)
    with pytest.raises(ValueError, match=r"^value_fn: the loss must be a scalar"):
        tx.update(PARAMS, state, PARAMS, value_fn=lambda p: p["w"] ** 2)
    with pytest.raises(ValueError, match=r"^updates: must have the structure of params"):
        tx.update({"w": PARAMS["w"]}, state, PARAMS, value_fn=quad)
    with pytest.raises(ValueError, match=r"^updates: leaf shape"):
        tx.update({"w": jnp.ones((4,)), "b": PARAMS["b"]}, state, PARAMS, value_fn=quad)


# Integer options must be integers and flags booleans when the transformation is built (before,
# num_candidates=2.5 reached update() and failed there with a TypeError).
INTEGER_OPTIONS = [
    (name, option)
    for name in sorted(zojax.METHODS)
    for option in zojax.METHODS[name].options
    if option in ("num_candidates", "num_queries")
]
FLAG_OPTIONS = [
    (name, option)
    for name in sorted(zojax.METHODS)
    for option in zojax.METHODS[name].options
    if option in ("one_sided", "normalize", "reuse_best_loss")
]


def test_every_count_and_flag_option_is_covered() -> None:
    names = {o for m in zojax.METHODS.values() for o in m.options}
    # the subspace family's options are checked in tests/test_subspace.py::test_invalid_options_raise
    assert names == {o for _, o in INTEGER_OPTIONS + FLAG_OPTIONS} | {
        "distribution",
        "elite_ratio",
        "weighting",
        "perturbation",
        "rank",
        "refresh_every",
    }


@pytest.mark.parametrize(("name", "option"), INTEGER_OPTIONS)
@pytest.mark.parametrize("value", [2.5, 4.0, True, "4", None, jnp.asarray(4.0)], ids=repr)
def test_non_integer_count_is_rejected_at_construction(name: str, option: str, value: Any) -> None:
    method = zojax.METHODS[name]
    err = rf"^{option}: expected an integer, got "
    with pytest.raises(ValueError, match=err):
        method.transform(**{option: value})
    with pytest.raises(ValueError, match=err):
        method.optimizer(1e-2, **{option: value})
    with pytest.raises(ValueError, match=err):
        method.estimate(quad, PARAMS, zojax.perturb.key_data(0), **{option: value})


@pytest.mark.parametrize(("name", "option"), INTEGER_OPTIONS)
def test_numpy_and_array_integer_counts_are_accepted(name: str, option: str) -> None:
    for value in (np.int64(3), jnp.asarray(3)):
        tx = zojax.METHODS[name].transform(**{option: value})
        assert int(zojax.zo_state(tx.init(PARAMS)).count) == 0


@pytest.mark.parametrize(("name", "option"), FLAG_OPTIONS)
@pytest.mark.parametrize("value", [1, "yes", None, 0.0], ids=repr)
def test_non_boolean_flag_is_rejected_at_construction(name: str, option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{option}: expected True or False"):
        zojax.METHODS[name].transform(**{option: value})
    with pytest.raises(ValueError, match=rf"^{option}: expected True or False"):
        zojax.METHODS[name].optimizer(1e-2, **{option: value})


@pytest.mark.parametrize("alpha", ["0.5", None, True])
def test_non_numeric_elite_ratio(alpha: Any) -> None:
    with pytest.raises(ValueError, match=r"^elite_ratio:"):
        zojax.guided(num_candidates=4, elite_ratio=alpha)
