"""One shared harness run over every registered estimator (like optax's contrib ``_common_test.py``)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import zojax
from tests import _stats
from zojax import estimators, perturb
from zojax.perturb import Direction

# Method options used throughout the harness (small M keeps the suite fast).
TEST_OPTIONS: dict[str, dict[str, Any]] = {
    "mezo": {},
    "nspsa": {"num_queries": 3},
    "mezo-gv": {"num_candidates": 4},
    "mezo-greedy": {"num_candidates": 3},
    "mezo-centred": {"num_candidates": 4},
}
METHOD_NAMES = sorted(zojax.METHODS)


def test_every_registered_method_is_covered() -> None:
    assert sorted(TEST_OPTIONS) == METHOD_NAMES


@functools.cache  # shared problems and transformations reuse compiled steps
def quadratic_problem(dtype: Any = jnp.float32) -> tuple[dict, Any, np.ndarray]:
    """``f(θ) = ½ (θ−c)ᵀ A (θ−c)`` over a nested pytree with 7 coordinates, and its gradient at θ."""
    rng = np.random.default_rng(0)
    params = {
        "a": jnp.asarray(rng.normal(size=(3,)), dtype),
        "nested": {"w": jnp.asarray(rng.normal(size=(2, 2)), dtype)},
    }
    loss, grad = quadratic_loss(params, rng, shift=3.0)
    return params, loss, grad


def quadratic_loss(params: Any, rng: np.random.Generator, shift: float) -> tuple[Any, np.ndarray]:
    """A random SPD quadratic ``½ (θ−c)ᵀ A (θ−c)`` of ``params`` (``c ~ N(shift, 1)``) and its float64
    gradient at ``params``, flattened in ``ravel_pytree``'s order."""
    flat, _ = ravel_pytree(params)
    d = flat.shape[0]
    q = rng.normal(size=(d, d))
    a_mat = q @ q.T / d + np.eye(d)
    center = rng.normal(size=(d,)) + shift

    def loss(p: Any) -> jax.Array:
        x = ravel_pytree(p)[0].astype(jnp.float32) - center
        return 0.5 * x @ jnp.asarray(a_mat, jnp.float32) @ x

    return loss, a_mat @ (np.asarray(flat, np.float64) - center)


def sample_grads(estimate_fn: Any, params: Any, loss: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` independent estimates ``ĝ`` (flattened), step key ``i = fold_in(key(seed), i)``."""
    base = perturb.key_data(seed)

    def one(i: jax.Array) -> jax.Array:
        est = estimate_fn(loss, params, perturb.fold_in(base, i))
        return ravel_pytree(perturb.direction_tree(est.grad, params))[0]

    return np.asarray(jax.jit(lambda: jax.lax.map(one, jnp.arange(n, dtype=jnp.uint32)))(), np.float64)


def estimate_fn_for(name: str, **overrides: Any) -> Any:
    method = zojax.METHODS[name]
    return functools.partial(method.estimate, **{"eps": 1e-2, **TEST_OPTIONS[name], **overrides})


# --- statistical properties -------------------------------------------------------------------------

UNBIASED_CASES = [
    (name, extra)
    for name in METHOD_NAMES
    if zojax.METHODS[name].unbiased
    for extra in ({}, {"distribution": "rademacher"})
] + [("mezo", {"one_sided": True})]


@pytest.mark.parametrize(("name", "extra"), UNBIASED_CASES)
def test_unbiased_on_quadratic(name: str, extra: dict) -> None:
    """E[ĝ] = ∇f: every coordinate of the sample mean within its Bonferroni-corrected z-bound."""
    params, loss, grad = quadratic_problem()
    samples = sample_grads(estimate_fn_for(name, **extra), params, loss, n=4000)
    ok, z = _stats.mean_within_bound(samples, grad)
    assert ok, f"{name} {extra}: standardised deviations {np.round(z, 2)}"


def _double_counted(value_fn: Any, params: Any, key: jax.Array) -> estimators.Estimate:
    est = estimators.estimate_spsa(value_fn, params, key, eps=1e-2)
    return est._replace(grad=est.grad.scaled(2.0))  # forgot the 2 in 2ε


def _mismatched_noise(value_fn: Any, params: Any, key: jax.Array) -> estimators.Estimate:
    est = estimators.estimate_spsa(value_fn, params, key, eps=1e-2)
    # The authors'-code quirk: the update regenerates different noise than was evaluated.
    other = Direction.single(perturb.fold_in(key, 12345), est.projected_grad)
    return est._replace(grad=other)


@pytest.mark.parametrize("wrong", [_double_counted, _mismatched_noise])
def test_unbiasedness_check_rejects_wrong_estimators(wrong: Any) -> None:
    params, loss, grad = quadratic_problem()
    samples = sample_grads(wrong, params, loss, n=4000)
    ok, _ = _stats.mean_within_bound(samples, grad)
    assert not ok


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if not zojax.METHODS[n].unbiased])
def test_biased_estimators_are_descent_directions(name: str) -> None:
    """E[⟨ĝ, ∇f⟩] > 0 (lower confidence bound), and larger than MeZO's per-step projection.

    Guided and greedy estimates are biased by design (ĝ ≈ v vᵀ ∇f with v favouring descent), so the
    property to check is that they are descent directions on average.
    """
    params, loss, grad = quadratic_problem()
    samples = sample_grads(estimate_fn_for(name), params, loss, n=2000)
    proj = samples @ grad
    assert _stats.lower_confidence_bound(proj) > 0


# --- references -------------------------------------------------------------------------------------


def _numpy_reference(kind: str, params: Any, loss: Any, key: jax.Array, eps: float, m: int, **kw: Any) -> np.ndarray:
    """The algorithm in numpy on materialised noise: candidates, ranking, v, two-point, ĝ (centred: the
    candidates' centred losses as the weights of ĝ)."""
    flat0, _ = ravel_pytree(params)
    theta = np.asarray(flat0, np.float64)
    zs = [
        np.asarray(
            ravel_pytree(perturb.direction_tree(Direction.single(perturb.fold_in(key, i)), params))[0],
            np.float64,
        )
        for i in range(m)
    ]
    _, unravel = ravel_pytree(params)

    def f(x: np.ndarray) -> float:
        return float(loss(unravel(jnp.asarray(x, jnp.float32))))

    cand = np.array([f(theta + eps * z) for z in zs])
    if kind == "centred":
        return sum((c - cand.mean()) * z for c, z in zip(cand, zs, strict=True)) / ((m - 1) * eps)
    order = np.argsort(cand, kind="stable")
    if kind == "guided":
        top = int(kw["elite_ratio"] * m)
        v = np.mean([zs[i] for i in order[:top]], axis=0) - np.mean([zs[i] for i in order[top:]], axis=0)
    else:
        v = zs[order[0]]
    g = (f(theta + eps * v) - f(theta - eps * v)) / (2 * eps)
    return g * v


REFERENCE_ESTIMATORS = {
    "guided": estimators.estimate_guided,
    "greedy": estimators.estimate_greedy,
    "centred": estimators.estimate_centred,
}
REFERENCE_CASES = (
    [("guided", m, {"elite_ratio": a}, 7) for m, a in [(2, 0.5), (4, 0.25), (4, 0.5), (8, 0.75), (5, 0.4)]]
    + [("greedy", m, {}, 11) for m in (1, 3, 6)]
    + [("centred", m, {}, 13) for m in (2, 4, 7)]
)


@pytest.mark.parametrize(("kind", "m", "kw", "seed"), REFERENCE_CASES)
def test_matches_numpy_reference(kind: str, m: int, kw: dict, seed: int) -> None:
    params, loss, _ = quadratic_problem()
    key = perturb.key_data(seed)
    est = REFERENCE_ESTIMATORS[kind](loss, params, key, eps=1e-2, num_candidates=m, **kw)
    got = np.asarray(ravel_pytree(perturb.direction_tree(est.grad, params))[0])
    ref = _numpy_reference(kind, params, loss, key, 1e-2, m, **kw)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    if kind == "centred":  # ĝ = s · search, with s the spread of the candidates' directional derivatives
        search = np.asarray(ravel_pytree(perturb.direction_tree(est.search, params))[0])
        np.testing.assert_allclose(float(est.projected_grad) * search, got, rtol=1e-5, atol=1e-6 * np.abs(got).max())


def test_centred_estimate_of_equal_losses_is_zero() -> None:
    """A flat loss: every candidate loss equal, so ĝ = 0 and the unit search direction is 0 (not NaN)."""
    params, _, _ = quadratic_problem()
    est = estimators.estimate_centred(lambda p: jnp.float32(1.0), params, perturb.key_data(0), num_candidates=4)
    assert float(est.projected_grad) == 0.0
    assert not np.any(np.asarray(est.grad.weights)) and not np.any(np.asarray(est.search.weights))


def test_greedy_reuse_best_loss_saves_one_forward() -> None:
    params, loss, _ = quadratic_problem()
    key = perturb.key_data(3)
    a = estimators.estimate_greedy(loss, params, key, eps=1e-2, num_candidates=4)
    b = estimators.estimate_greedy(loss, params, key, eps=1e-2, num_candidates=4, reuse_best_loss=True)
    assert a.losses.shape == (6,) and b.losses.shape == (5,)
    np.testing.assert_allclose(b.projected_grad, a.projected_grad, rtol=1e-3)
    assert zojax.METHODS["mezo-greedy"].forwards_per_step(num_candidates=4, reuse_best_loss=True) == 5


def test_guided_normalize_and_rank_weights() -> None:
    losses = jnp.array([3.0, 1.0, 2.0, 0.0])
    w = estimators.guiding_weights(losses, 0.5)
    np.testing.assert_allclose(w, [-0.5, 0.5, -0.5, 0.5])
    wn = estimators.guiding_weights(losses, 0.5, normalize=True)
    np.testing.assert_allclose(float(jnp.sum(wn**2)), 1.0, rtol=1e-6)
    wr = estimators.guiding_weights(losses, weighting="rank")
    # ranks: [3, 1, 2, 0] -> centred (1.5 - r) / 2
    np.testing.assert_allclose(wr, [-0.75, 0.25, -0.25, 0.75])


# --- optax API, determinism, dtypes ------------------------------------------------------------------


@functools.cache  # shared problems and transformations reuse compiled steps
def make_tx(name: str, learning_rate: float = 1e-2, **overrides: Any) -> optax.GradientTransformationExtraArgs:
    return zojax.METHODS[name].optimizer(learning_rate, **{"eps": 1e-2, **TEST_OPTIONS[name], **overrides})


@functools.cache
def jitted_step(tx: Any, loss: Any) -> Any:
    """One compiled step per (transformation, loss) pair: compiling dominates the suite's time."""

    @jax.jit
    def step(p: Any, s: Any) -> tuple[Any, Any]:
        updates, s = tx.update(p, s, p, value_fn=loss)
        return optax.apply_updates(p, updates), s

    return step


def run_steps(tx: Any, params: Any, loss: Any, steps: int) -> tuple[Any, Any]:
    state = tx.init(params)
    step = jitted_step(tx, loss)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_count_and_state(name: str) -> None:
    params, loss, _ = quadratic_problem()
    _, state = run_steps(make_tx(name), params, loss, 3)
    zs = zojax.zo_state(state)
    per_step = zojax.METHODS[name].forwards_per_step(**TEST_OPTIONS[name])
    assert int(zs.count) == 3
    assert int(zs.num_forwards) == 3 * per_step
    assert int(zs.nonfinite_count) == 0
    est = estimate_fn_for(name)(loss, params, perturb.key_data(0))
    assert est.losses.shape == (per_step,)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_deterministic_given_key(name: str) -> None:
    params, loss, _ = quadratic_problem()
    tx = make_tx(name, key=5)
    a, _ = run_steps(tx, params, loss, 3)
    b, _ = run_steps(tx, params, loss, 3)  # same compiled step, fresh state from the same key
    c, _ = run_steps(make_tx(name, key=6), params, loss, 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_scan_over_steps_matches_python_loop(name: str) -> None:
    params, loss, _ = quadratic_problem()
    tx = make_tx(name)
    looped, _ = run_steps(tx, params, loss, 4)

    def body(carry: Any, _: Any) -> tuple[Any, jax.Array]:
        p, s = carry
        updates, s = tx.update(p, s, p, value_fn=loss)
        return (optax.apply_updates(p, updates), s), zojax.zo_state(s).loss

    (scanned, _), losses = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=4))(params)
    assert losses.shape == (4,)
    for x, y in zip(jax.tree.leaves(looped), jax.tree.leaves(scanned), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_learning_rate_leaves_params_bitwise_unchanged(name: str, dtype: Any) -> None:
    params, loss, _ = quadratic_problem(dtype)
    new, _ = run_steps(make_tx(name, learning_rate=0.0), params, loss, 2)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(new), strict=True):
        assert x.dtype == y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bfloat16_params_keep_dtype_and_train(name: str) -> None:
    params, loss, _ = quadratic_problem(jnp.bfloat16)
    new, _ = run_steps(make_tx(name, learning_rate=0.05), params, loss, 30)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new))
    assert float(loss(new)) < float(loss(params))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_nonfinite_loss_gives_zero_update(name: str) -> None:
    params, _, _ = quadratic_problem()

    def bad_loss(p: Any) -> jax.Array:
        return jnp.sum(p["a"]) * jnp.nan

    tx = make_tx(name)
    state = tx.init(params)
    updates, state = jax.jit(lambda p, s: tx.update(p, s, p, value_fn=bad_loss))(params, state)
    new = optax.apply_updates(params, updates)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(zojax.zo_state(state).nonfinite_count) == 1
    assert int(zojax.zo_state(state).count) == 1


@functools.cache  # shared problems and transformations reuse compiled steps
def logistic_problem() -> tuple[dict, Any]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 10)).astype(np.float32)
    w_true = rng.normal(size=(10,)).astype(np.float32)
    y = (x @ w_true + 0.3 * rng.normal(size=(256,)) > 0).astype(np.float32)
    params = {"w": jnp.zeros((10,)), "bias": jnp.zeros(())}

    def loss(p: Any) -> jax.Array:
        logits = jnp.asarray(x) @ p["w"] + p["bias"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(y)))

    return params, loss


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_reduces_logistic_regression_loss(name: str) -> None:
    params, loss = logistic_problem()
    new, _ = run_steps(make_tx(name, learning_rate=0.05), params, loss, 200)
    before, after = float(loss(params)), float(loss(new))
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_composes_with_adam_sign_and_multisteps(name: str) -> None:
    params, loss = logistic_problem()
    est = zojax.METHODS[name].transform(**{"eps": 1e-2, **TEST_OPTIONS[name]})
    for tx in (
        optax.chain(est, optax.adam(0.02)),  # ZO-Adam
        optax.chain(est, optax.scale_by_sign(), optax.scale(-0.01)),  # ZO-Sign
    ):
        new, _ = run_steps(tx, params, loss, 100)
        assert float(loss(new)) < 0.9 * float(loss(params))
    # Gradient accumulation: MultiSteps goes *after* the estimator (an estimator inside MultiSteps
    # would only run every k-th step, on the accumulated updates it ignores). Two accumulated
    # estimates equal one SGD step on their mean.
    acc = optax.chain(est, optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2).gradient_transformation())
    state = acc.init(params)
    p = params
    acc_update = jax.jit(lambda p, s: acc.update(p, s, p, value_fn=loss))
    for _ in range(2):
        updates, state = acc_update(p, state)
        p = optax.apply_updates(p, updates)
    est_update = jax.jit(lambda s: est.update(params, s, params, value_fn=loss))
    g1, s1 = est_update(est.init(params))
    g2, _ = est_update(s1)
    expected = jax.tree.map(lambda x, a, b: x - 0.1 * (a + b) / 2, params, g1, g2)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_weight_decay_masks_biases_and_norms() -> None:
    params = {
        "layers": {
            "attn_norm": jnp.ones((2, 3)),
            "q": {"kernel": jnp.ones((2, 3, 3)), "bias": jnp.ones((2, 3))},
        },
        "embed": jnp.ones((5, 3)),
        "final_layernorm": {"scale": jnp.ones(3)},
        "ln_f": jnp.ones(3),
    }
    mask = zojax.decay_mask(params)
    assert mask["layers"]["q"]["kernel"] and mask["embed"]
    assert not mask["layers"]["attn_norm"] and not mask["layers"]["q"]["bias"]
    assert not mask["final_layernorm"]["scale"] and not mask["ln_f"]
    tx = zojax.mezo(learning_rate=0.1, weight_decay=0.5)
    state = tx.init(params)
    updates, _ = tx.update(params, state, params, value_fn=lambda p: jnp.zeros(()))
    # A zero loss gives ĝ = 0, so the update is the decay alone: -lr * wd * θ on decayed leaves only.
    np.testing.assert_allclose(updates["embed"], -0.05 * np.ones((5, 3)), rtol=1e-6)
    np.testing.assert_array_equal(updates["layers"]["q"]["bias"], np.zeros((2, 3)))


def test_inject_hyperparams() -> None:
    params, loss = logistic_problem()
    tx = optax.inject_hyperparams(zojax.mezo, static_args=("key",))(learning_rate=0.05, eps=1e-2)
    new, state = run_steps(tx, params, loss, 50)
    assert float(loss(new)) < float(loss(params))
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.05)


def test_state_roundtrips_through_orbax(tmp_path: Any) -> None:
    import orbax.checkpoint as ocp

    params, loss = logistic_problem()
    tx = make_tx("mezo-gv")
    _, state = run_steps(tx, params, loss, 3)
    path = tmp_path / "state"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(x, y)


# --- non-float leaves (the rule in zojax.perturb: a ValueError naming the leaf) ---------------------

NONFLOAT_LEAVES = {
    "int32": jnp.array([5, 100, -7, 1000], jnp.int32),
    "bool": jnp.array([True, False]),
    "complex64": jnp.array([1.0 + 2.0j], jnp.complex64),
}


def _with_nonfloat_leaf(kind: str) -> dict:
    params, _, _ = quadratic_problem()
    return {**params, "nested": {**params["nested"], "extra": NONFLOAT_LEAVES[kind]}}


def _loss_ignoring_extra(p: Any) -> jax.Array:
    _, loss, _ = quadratic_problem()
    return loss({"a": p["a"], "nested": {"w": p["nested"]["w"]}})


NONFLOAT_ERROR = r"^params: leaf \['nested'\]\['extra'\] has dtype (int32|bool|complex64); zojax"


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("kind", sorted(NONFLOAT_LEAVES))
def test_nonfloat_leaf_is_rejected_at_init_and_update(name: str, kind: str) -> None:
    """Every method, alone, with SGD and chained with Adam, refuses a non-float leaf (naming its
    path) at ``init``; the update and the pure estimator refuse it too. Before the rule, 3 MeZO
    steps turned [5, 100, -7, 1000] into [2, 99, -4, 1000]."""
    method = zojax.METHODS[name]
    bad = _with_nonfloat_leaf(kind)
    est = method.transform(**{"eps": 1e-2, **TEST_OPTIONS[name]})
    for tx in (est, make_tx(name), optax.chain(est, optax.adam(1e-2))):
        with pytest.raises(ValueError, match=NONFLOAT_ERROR):
            tx.init(bad)
    # a state built for the float parameters does not let the bad tree through update()
    state = est.init(quadratic_problem()[0])
    with pytest.raises(ValueError, match=NONFLOAT_ERROR):
        est.update(bad, state, bad, value_fn=_loss_ignoring_extra)
    with pytest.raises(ValueError, match=NONFLOAT_ERROR):
        jax.jit(lambda p, s: est.update(p, s, p, value_fn=_loss_ignoring_extra))(bad, state)
    with pytest.raises(ValueError, match=NONFLOAT_ERROR):
        estimate_fn_for(name)(_loss_ignoring_extra, bad, perturb.key_data(0))


# --- skip_nonfinite: a non-finite step leaves the whole chain untouched --------------------------


@functools.cache
def _skip_step(tx: Any) -> Any:
    _, loss, _ = quadratic_problem()

    @jax.jit
    def step(p: Any, s: Any, poisoned: jax.Array) -> tuple[Any, Any]:
        def value_fn(q: Any) -> jax.Array:
            return jnp.where(poisoned, jnp.nan, loss(q))

        updates, s = tx.update(p, s, p, value_fn=value_fn)
        return optax.apply_updates(p, updates), s

    return step


def _run_with_nan_at(tx: Any, steps: int, nan_step: int) -> list[tuple[Any, Any]]:
    """(params, state) after each of ``steps`` steps; the loss is NaN on step ``nan_step`` (1-based)."""
    params, _, _ = quadratic_problem()
    step = _skip_step(tx)
    out = [(params, tx.init(params))]
    for t in range(1, steps + 1):
        out.append(step(*out[-1], jnp.asarray(t == nan_step)))
    return out


def _without_zo_state(state: Any) -> list[Any]:
    return [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, zojax.ZOState))
        if not isinstance(x, zojax.ZOState)
    ]


def _assert_bitwise_equal(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.cache
def skip_chain(name: str) -> Any:
    est = zojax.METHODS[name].transform(**{"eps": 1e-2, **TEST_OPTIONS[name]})
    return zojax.skip_nonfinite(optax.chain(est, optax.adam(1e-2)))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_skip_nonfinite_keeps_params_and_optimizer_state_on_a_nan_step(name: str) -> None:
    """ZO-Adam wrapped in ``skip_nonfinite``: with the loss NaN on step 3, the parameters and the
    Adam state after step 3 are bitwise those after step 2; the estimator's counters advance; the
    next steps train again."""
    run = _run_with_nan_at(skip_chain(name), steps=5, nan_step=3)
    (p2, s2), (p3, s3), (p4, s4) = run[2], run[3], run[4]
    _assert_bitwise_equal(p3, p2)
    _assert_bitwise_equal(_without_zo_state(s3.inner_state), _without_zo_state(s2.inner_state))
    zs = zojax.zo_state(s3)
    assert (int(zs.count), int(zs.nonfinite_count), int(s3.skipped)) == (3, 1, 1)
    # training continues: step 4 moves the parameters and the Adam state
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(p4), jax.tree.leaves(p3), strict=True))
    adam = s4.inner_state[1][0]
    assert int(adam.count) == 3  # steps 1, 2 and 4
    assert int(run[5][1].skipped) == 1
    _, loss, _ = quadratic_problem()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run[5][0]))
    assert float(loss(run[5][0])) < float(loss(run[0][0]))


def test_without_skip_nonfinite_adam_moves_on_a_nan_step() -> None:
    """Why the wrapper exists: the estimator's zero update still moves Adam (momentum), and
    ``optax.apply_if_finite`` around or after the estimator does not help (it only sees finite
    updates: the params passed in, or the estimator's zero)."""
    est = zojax.METHODS["mezo"].transform(eps=1e-2)
    for tx in (
        optax.chain(est, optax.adam(1e-2)),
        optax.apply_if_finite(optax.chain(est, optax.adam(1e-2)), max_consecutive_errors=5),
        optax.chain(est, optax.apply_if_finite(optax.adam(1e-2), max_consecutive_errors=5)),
    ):
        run = _run_with_nan_at(tx, steps=3, nan_step=3)
        before, after = jax.tree.leaves(run[2][0]), jax.tree.leaves(run[3][0])
        assert any(not np.array_equal(x, y) for x, y in zip(after, before, strict=True))


def test_skip_nonfinite_needs_an_estimator_inside() -> None:
    params, _, _ = quadratic_problem()
    with pytest.raises(ValueError, match=r"^skip_nonfinite: .*wrap the whole chain"):
        zojax.skip_nonfinite(optax.adam(1e-2)).init(params)


# --- the elite count ⌊αM⌋ ------------------------------------------------------------------------


def test_num_elite_is_exact_for_decimal_and_rational_alpha() -> None:
    """⌊αM⌋ as meant, not as float rounding has it: int(0.29 * 100) == 28, but α = 0.29 with
    M = 100 is 29 candidates; every α = k/M (float64 and float32) gives exactly k, and so does
    every two-decimal α with M = 100 (0.29, 0.57 and 0.58 fall one short with int())."""
    assert estimators.num_elite(100, 0.29) == 29
    for m in range(2, 201):
        for k in range(1, m):
            assert estimators.num_elite(m, k / m) == k, (k, m)
            assert estimators.num_elite(m, np.float32(k / m)) == k, (k, m, "float32")
    for k in range(1, 100):
        assert estimators.num_elite(100, float(f"0.{k:02d}")) == k, k
    # values that are not multiples of 1/M are still floored
    assert estimators.num_elite(100, 0.289) == 28
    assert estimators.num_elite(100, 0.2899999) == 28
    assert estimators.num_elite(3, 0.66) == 1
    # the guided estimate's weights use the same count
    w = estimators.guiding_weights(jnp.arange(100, dtype=jnp.float32), 0.29)
    assert int(jnp.sum(w > 0)) == 29
