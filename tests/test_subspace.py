"""The subspace perturbation family (SubZero): every registered method with ``perturbation="subspace"``.

Uses the shared harness's helpers (:mod:`tests.test_estimators_common`) on a quadratic whose
parameters hold a stacked matrix leaf (``layers``), a plain matrix leaf and a vector leaf.

The unbiasedness property. For a matrix leaf ``W ∈ R^{m×n}`` the noise is ``z = c U Z Vᵀ`` with
``c = √(mn)/r``, ``U, V`` fixed orthonormal (the current subspace) and ``Z`` i.i.d. zero-mean unit
variance: ``vec z = c (V ⊗ U) vec Z``, so ``E[vec z vec zᵀ] = c² (V Vᵀ) ⊗ (U Uᵀ)``; noise of
different leaves and layers is independent and zero-mean. On a quadratic the two-point difference
is exactly ``zᵀ∇f`` (one-sided: plus ``ε zᵀAz/2``, whose product with ``z`` has zero mean for
symmetric ``Z``-distributions), hence for SPSA and n-SPSA

    E[ĝ_W] = c² P_U G P_V,   P_U = U Uᵀ, P_V = V Vᵀ, G = ∂f/∂W,

per layer for stacked leaves, and ``E[ĝ_b] = ∂f/∂b`` for vector leaves (i.i.d. noise). The
negative controls (the full gradient, and the projection without ``c²``) must be rejected.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
import zojax.models as zm
from tests import _stats
from tests.test_estimators_common import (
    METHOD_NAMES,
    TEST_OPTIONS,
    jitted_step,
    quadratic_loss,
    sample_grads,
)
from zojax import estimators, perturb
from zojax.perturb import Direction, Subspace

RANK, REFRESH = 2, 3
SUB = {"perturbation": "subspace", "rank": RANK, "refresh_every": REFRESH}
DK = jax.tree_util.DictKey


@functools.cache
def matrix_problem(dtype: Any = jnp.float32) -> tuple[dict, Any, dict]:
    """``f(θ) = ½ (θ−c)ᵀ A (θ−c)`` over {layers/w [2,5,4], e [6,3], b [4]}; returns its gradient tree."""
    rng = np.random.default_rng(0)
    params = {
        "layers": {"w": jnp.asarray(rng.normal(size=(2, 5, 4)), dtype)},
        "e": jnp.asarray(rng.normal(size=(6, 3)), dtype),
        "b": jnp.asarray(rng.normal(size=(4,)), dtype),
    }
    loss, grad = quadratic_loss(params, rng, shift=1.0)
    # the float64 gradient, leaf by leaf in ravel_pytree's order
    sizes = [x.size for x in jax.tree.leaves(params)]
    parts = np.split(grad, np.cumsum(sizes)[:-1])
    treedef = jax.tree.structure(params)
    grad_tree = jax.tree.unflatten(
        treedef, [p.reshape(x.shape) for p, x in zip(parts, jax.tree.leaves(params), strict=True)]
    )
    return params, loss, grad_tree


def projected_target(grad_tree: dict, sub: Subspace, scaled: bool = True) -> np.ndarray:
    """``c² P_U G P_V`` on matrix leaves (per layer), ``G`` on vector leaves, flattened like θ."""

    def one(path: tuple, g: np.ndarray) -> np.ndarray:
        def mat(gm: np.ndarray, layer: int | None) -> np.ndarray:
            m, n = gm.shape
            u, v = (np.asarray(x, np.float64) for x in perturb.subspace_basis(sub, path, m, n, layer))
            c2 = m * n / (u.shape[1] * v.shape[1]) if scaled else 1.0
            return c2 * (u @ u.T) @ gm @ (v @ v.T)

        if g.ndim == 1:
            return g
        if perturb.is_stacked(path):
            return np.stack([mat(g[i], i) for i in range(g.shape[0])])
        return mat(g, None)

    out = jax.tree_util.tree_map_with_path(one, grad_tree)
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)])


def subspace_estimate_fn(name: str, sub: Subspace, **overrides: Any) -> Any:
    method = zojax.METHODS[name]
    opts = {"eps": 1e-2, **TEST_OPTIONS[name], **overrides}
    return lambda f, p, k: method.estimate(f, p, k, subspace=sub, **opts)


FIXED = Subspace(perturb.subspace_key(perturb.key_data(3), 0, REFRESH), RANK)

# --- noise: shape, rank, scaling, layer slices ----------------------------------------------------


def test_noise_is_low_rank_scaled_and_layer_slices_are_bitwise():
    params, _, _ = matrix_problem()
    keys = perturb.candidate_keys(perturb.key_data(1), 3)
    d = Direction(keys, jnp.array([1.0, -0.5, 0.25]), "gaussian", FIXED)
    tree = jax.jit(lambda: perturb.direction_tree(d, params))()
    w, e, b = (np.asarray(tree[k] if k != "w" else tree["layers"]["w"]) for k in ("w", "e", "b"))
    assert [np.linalg.matrix_rank(w[i]) for i in range(2)] == [RANK, RANK]
    assert np.linalg.matrix_rank(e) == RANK
    assert b.shape == (4,) and np.all(b != 0)
    # one layer regenerated on its own (what a model does inside its layer scan) is bitwise the slice
    path = (DK("layers"), DK("w"))
    for i in range(2):
        layer = jax.jit(lambda i: d.leaf(path, (5, 4), layer=i))(jnp.uint32(i))
        np.testing.assert_array_equal(np.asarray(layer), w[i])
    # the basis is orthonormal and the scaling gives E||z||^2 = mn (SubZero's sqrt(mn)/r)
    u, v = perturb.subspace_basis(FIXED, (DK("e"),), 6, 3)
    np.testing.assert_allclose(np.asarray(u.T @ u), np.eye(RANK), atol=1e-5)
    np.testing.assert_allclose(np.asarray(v.T @ v), np.eye(RANK), atol=1e-5)
    sq = jax.jit(
        jax.vmap(lambda k: jnp.sum(Direction.single(k, 1.0, "gaussian", FIXED).leaf((DK("e"),), (6, 3)) ** 2))
    )(perturb.candidate_keys(perturb.key_data(2), 64))
    norms = np.asarray(sq)
    se = norms.std(ddof=1) / np.sqrt(norms.size)
    assert abs(norms.mean() - 18.0) < 5 * se


def test_matrix_shape_rule():
    assert perturb.matrix_shape((5,)) is None
    assert perturb.matrix_shape((1, 5)) is None  # squeezed, as SubZero
    assert perturb.matrix_shape(()) is None
    assert perturb.matrix_shape((5, 4)) == (5, 4)
    assert perturb.matrix_shape((5, 1, 4)) == (5, 4)
    assert perturb.matrix_shape((5, 3, 4)) == (5, 12)


def test_rank_is_clipped_per_side_as_subzero():
    """``(r_U, r_V) = (min(rank, m), min(rank, n))`` (SubZero's reduced QR); a side of dimension
    ``≤ rank`` takes ``I``, so a matrix within the rank on both sides draws plain i.i.d. noise."""
    assert perturb.subspace_ranks(2, 6, 3) == (2, 2)
    assert perturb.subspace_ranks(4, 6, 3) == (4, 3)
    u, v = perturb.subspace_basis(Subspace(FIXED.key, 4), (DK("e"),), 6, 3)
    assert u.shape == (6, 4) and np.array_equal(np.asarray(v), np.eye(3))
    np.testing.assert_allclose(np.asarray(u.T @ u), np.eye(4), atol=1e-5)
    keys = perturb.candidate_keys(perturb.key_data(1), 2)
    d = Direction(keys, jnp.array([1.0, -0.5]), "gaussian", Subspace(FIXED.key, 100))
    iid = Direction(keys, jnp.array([1.0, -0.5]), "gaussian")
    np.testing.assert_array_equal(np.asarray(d.leaf((DK("e"),), (6, 3))), np.asarray(iid.leaf((DK("e"),), (6, 3))))
    # one side within the rank: the noise has rank min(rank, m, n) and E||z||^2 = mn
    sub = Subspace(FIXED.key, 4)
    z = jax.vmap(lambda k: Direction.single(k, 1.0, "gaussian", sub).leaf((DK("e"),), (6, 3)))(
        perturb.candidate_keys(perturb.key_data(2), 256)
    )
    assert np.linalg.matrix_rank(np.asarray(z[0])) == 3
    norms = np.sum(np.asarray(z, np.float64) ** 2, axis=(1, 2))
    assert abs(norms.mean() - 18.0) < 5 * norms.std(ddof=1) / np.sqrt(norms.size)


def _whiles(f: Any, *args: Any) -> int:
    return jax.jit(f).lower(*args).as_text().count("stablehlo.while")


def test_one_batched_cholesky_per_consumer():
    """Each consumer of subspace noise (a layer of the perturbed forward, the embedding, the head, the
    update) orthonormalises the bases of all its matrices with one batched Cholesky (two ``while``
    loops), so the loop count does not grow with the number of matrices. Per matrix (four loops
    each), the LoRA tiny-model SubZero-GV step held 84 loops and compiled for minutes on the loaded
    2-core machine; the full model's forward held 36 more than with i.i.d. noise. Lowering only."""
    model, base, ids, mask = tiny()
    sub = Subspace(perturb.subspace_key(perturb.key_data(1), 0, 10), 8)
    d = Direction(perturb.candidate_keys(perturb.key_data(2), 2), jnp.array([1.0, -0.5]), "gaussian", sub)
    iid = Direction(d.keys, d.weights, "gaussian")
    update = lambda p, d: perturb.scaled_direction_tree(d, p, 0.5)
    full = lambda p, d: model.logits(p, ids, mask, perturbation=(d, 0.05))
    # 7 kernels in the layer scan, the embedding and the tied head: 3 consumers
    assert _whiles(full, base, d) - _whiles(full, base, iid) <= 8
    counts = []
    for targets in (("q",), ("q", "v", "down")):
        lora, fn = zm.lora.init(model, base, 1, rank=4, alpha=8, targets=targets)
        fwd = lambda p, d, fn=fn: fn.logits(p, ids, mask, frozen=base, perturbation=(d, 0.05))
        counts.append([_whiles(f, lora, x) for f in (fwd, update) for x in (d, iid)])
    assert counts[0] == counts[1], counts  # 2 or 6 LoRA matrices, the same loops
    assert counts[1][0] - counts[1][1] <= 4 and counts[1][2] - counts[1][3] <= 4, counts


# --- unbiasedness onto the current subspace -------------------------------------------------------

UNBIASED = [
    ("mezo", {}),
    ("mezo", {"distribution": "rademacher"}),
    ("mezo", {"one_sided": True}),
    ("nspsa", {}),
    ("mezo-centred", {}),
]


@pytest.mark.parametrize(("name", "extra"), UNBIASED)
def test_expectation_is_the_gradient_projected_onto_the_subspace(name: str, extra: dict) -> None:
    params, loss, grad_tree = matrix_problem()
    samples = sample_grads(subspace_estimate_fn(name, FIXED, **extra), params, loss, n=4000)
    ok, z = _stats.mean_within_bound(samples, projected_target(grad_tree, FIXED))
    assert ok, f"{name} {extra}: standardised deviations {np.round(z, 2)}"


def test_projection_check_rejects_wrong_targets() -> None:
    """Negative controls: the full gradient and the projection without c² = mn/r² are rejected."""
    params, loss, grad_tree = matrix_problem()
    samples = sample_grads(subspace_estimate_fn("mezo", FIXED), params, loss, n=4000)
    full = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad_tree)])
    assert not _stats.mean_within_bound(samples, full)[0]
    unscaled = projected_target(grad_tree, FIXED, scaled=False)
    assert not _stats.mean_within_bound(samples, unscaled)[0]
    other = Subspace(perturb.subspace_key(perturb.key_data(4), 0, REFRESH), RANK)
    assert not _stats.mean_within_bound(samples, projected_target(grad_tree, other))[0]


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if not zojax.METHODS[n].unbiased])
def test_biased_subspace_estimators_are_descent_directions(name: str) -> None:
    params, loss, grad_tree = matrix_problem()
    samples = sample_grads(subspace_estimate_fn(name, FIXED), params, loss, n=2000)
    proj = samples @ projected_target(grad_tree, FIXED)
    assert _stats.lower_confidence_bound(proj) > 0


# --- the transforms: forwards, determinism, lr = 0, refresh boundaries ---------------------------


@functools.cache
def make_tx(name: str, learning_rate: float = 1e-2, **overrides: Any) -> Any:
    return zojax.METHODS[name].optimizer(learning_rate, **{"eps": 1e-2, **TEST_OPTIONS[name], **SUB, **overrides})


def run(tx: Any, params: Any, loss: Any, steps: int, state: Any = None) -> tuple[Any, Any]:
    state = tx.init(params) if state is None else state
    step = jitted_step(tx, loss)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def assert_trees_equal(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_deterministic_counts_and_differs_from_iid(name: str) -> None:
    params, loss, _ = matrix_problem()
    a, sa = run(make_tx(name, key=5), params, loss, 3)
    b, _ = run(make_tx(name, key=5), params, loss, 3)
    c, _ = run(make_tx(name, key=6), params, loss, 3)
    assert_trees_equal(a, b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True))
    per_step = zojax.METHODS[name].forwards_per_step(**TEST_OPTIONS[name])
    zs = zojax.zo_state(sa)
    assert int(zs.count) == 3 and int(zs.num_forwards) == 3 * per_step
    assert set(zs._fields) == {"key", "count", "num_forwards", "nonfinite_count", "loss", "projected_grad"}
    iid = zojax.METHODS[name].optimizer(1e-2, **{"eps": 1e-2, **TEST_OPTIONS[name], "key": 5})
    d, _ = run(iid, params, loss, 3)
    assert not np.array_equal(np.asarray(a["e"]), np.asarray(d["e"]))
    # the update of a matrix leaf is rank <= r per step
    one, _ = run(make_tx(name, key=5), params, loss, 1)
    delta = np.asarray(one["e"], np.float64) - np.asarray(params["e"], np.float64)
    assert np.linalg.matrix_rank(delta, tol=1e-6 * np.abs(delta).max()) <= RANK


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_learning_rate_is_bitwise(name: str, dtype: Any) -> None:
    params, loss, _ = matrix_problem(dtype)
    new, _ = run(make_tx(name, learning_rate=0.0), params, loss, 2)
    assert_trees_equal(params, new)
    assert all(x.dtype == dtype for x in jax.tree.leaves(new))


@pytest.mark.parametrize("name", ["mezo", "mezo-gv"])
def test_resume_across_a_refresh_is_bitwise(name: str) -> None:
    """7 steps in one go equal 4 steps, a save/restore of (params, state) through numpy, then 3."""
    params, loss, _ = matrix_problem()
    tx = make_tx(name, key=9)
    full, full_state = run(tx, params, loss, 7)
    part, state = run(tx, params, loss, 4)  # crosses the refresh at step 3; resumes inside period 1
    saved = jax.tree.map(np.asarray, (part, state))
    part, state = jax.tree.map(jnp.asarray, saved)
    resumed, resumed_state = run(tx, part, loss, 3, state)  # crosses the refresh at step 6
    assert_trees_equal(full, resumed)
    assert_trees_equal(full_state, resumed_state)


def test_subspace_is_kept_within_a_period_and_refreshed_at_its_end():
    """Updates of steps 0..2 share one column space (rank r together); step 3's is new."""
    params, loss, _ = matrix_problem()
    base = perturb.key_data(0)
    est = functools.partial(estimators.estimate_spsa, eps=1e-2)

    def update(t: int) -> np.ndarray:
        sub = Subspace(perturb.subspace_key(base, t, REFRESH), RANK)
        g = est(loss, params, perturb.fold_in(base, t), subspace=sub).grad
        return np.asarray(perturb.direction_tree(g, params)["e"], np.float64)

    g = [update(t) for t in range(5)]

    def rank(*ms: np.ndarray) -> int:  # numerical rank of float32 products: relative tolerance
        m = np.concatenate(ms, axis=1)
        return int(np.linalg.matrix_rank(m, tol=1e-4 * np.linalg.norm(m, 2)))

    assert rank(g[0], g[1], g[2]) == RANK
    assert rank(g[2], g[3]) == 2 * RANK
    assert rank(g[3], g[4]) == RANK
    assert np.array_equal(
        perturb.subspace_key(base, 2, REFRESH), perturb.subspace_key(base, 0, REFRESH)
    ) and not np.array_equal(perturb.subspace_key(base, 3, REFRESH), perturb.subspace_key(base, 2, REFRESH))


# --- option validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"perturbation": "lowrank"}, "perturbation"),
        ({"perturbation": "subspace", "refresh_every": 10}, "rank"),
        ({"perturbation": "subspace", "rank": 4}, "refresh_every"),
        ({"perturbation": "subspace", "rank": 0, "refresh_every": 10}, "rank"),
        ({"perturbation": "subspace", "rank": 2.5, "refresh_every": 10}, "rank"),
        ({"perturbation": "subspace", "rank": 4, "refresh_every": 0}, "refresh_every"),
        ({"perturbation": "subspace", "rank": 4, "refresh_every": True}, "refresh_every"),
        ({"rank": 4}, "rank"),
        ({"refresh_every": 4}, "refresh_every"),
    ],
)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_invalid_options_raise(name: str, kw: dict, match: str) -> None:
    method = zojax.METHODS[name]
    with pytest.raises(ValueError, match=match):
        method.transform(**kw)
    with pytest.raises(ValueError, match=match):
        method.optimizer(1e-3, **kw)
    assert set(kw) <= set(method.options)


def test_estimator_rejects_a_non_subspace():
    params, loss, _ = matrix_problem()
    with pytest.raises(ValueError, match="subspace"):
        estimators.estimate_spsa(loss, params, perturb.key_data(0), subspace=(4, 10))


# --- the tiny model: full tuning and LoRA, on the fly ---------------------------------------------


@functools.cache
def tiny() -> tuple[Any, Any, Any, Any]:
    model, params = zm.init_model(zm.llama_config("tiny"), 0)
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, 256)
    return model, params, ids, jnp.ones_like(ids)


def assert_on_the_fly_equals_materialised(
    fn: Any, params: Any, ids: Any, mask: Any, d: Direction, frozen: Any = None
) -> None:
    """``fn.logits`` with ``perturbation=(d, 0.05)`` equals the logits at ``perturb(params, d, 0.05)``,
    and the noise moves them. One program for the three forwards: each compile of the tiny model's
    scan costs seconds on CI."""
    fly, ref, base = jax.jit(
        lambda p: (
            fn.logits(p, ids, mask, frozen=frozen, perturbation=(d, 0.05)),
            fn.logits(perturb.perturb(p, d, 0.05), ids, mask, frozen=frozen),
            fn.logits(p, ids, mask, frozen=frozen),
        )
    )(params)
    assert float(jnp.max(jnp.abs(ref - base))) > 1e-3
    np.testing.assert_allclose(fly, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_tiny_model_on_the_fly_and_training(mode: str) -> None:
    model, base, ids, mask = tiny()
    if mode == "full":
        params, fn, frozen = base, model, None
    else:
        params, fn = zm.lora.init(model, base, 1, rank=4, alpha=8, targets=("q", "v", "down"))
        params, frozen = jax.tree.map(lambda x: x + 0.05, params), base
    sub = Subspace(perturb.subspace_key(perturb.key_data(1), 0, 10), 8)
    d = Direction(perturb.candidate_keys(perturb.key_data(2), 2), jnp.array([1.0, -0.5]), "gaussian", sub)
    assert_on_the_fly_equals_materialised(fn, params, ids, mask, d, frozen)

    # training descends (lr 0 is bitwise for every method: test_zero_learning_rate_is_bitwise; the
    # trainer's SubZero-GV and LoRA runs are pinned bit for bit by tests/golden/subzero-*.json)
    loss = zm.next_token_loss(fn, ids, mask, frozen=frozen)
    tx = zojax.mezo_gv(1e-3, eps=1e-3, num_candidates=4, perturbation="subspace", rank=8, refresh_every=2)
    p, _ = run(tx, params, loss, 4)
    assert float(loss(p)) < float(loss(params))


@pytest.mark.parametrize("name", ["mezo-gv"])
def test_prefix_tuning_with_subspace_noise(name: str) -> None:
    """Prefix tuning's ``[L, P, Hkv, D]`` keys/values are stacked ``[P, Hkv·D]`` matrices: on the fly
    equals the materialised perturbation, lr 0 is bitwise, runs are deterministic and each step's
    update of one layer's prefix keys has rank ≤ r."""
    model, base, ids, mask = tiny()
    params, fn = zm.prefix.init(model, base, 1, num_virtual_tokens=4)
    sub = Subspace(perturb.subspace_key(perturb.key_data(1), 0, 10), RANK)
    d = Direction(perturb.candidate_keys(perturb.key_data(2), 2), jnp.array([1.0, -0.5]), "gaussian", sub)
    assert_on_the_fly_equals_materialised(fn, params, ids, mask, d, base)

    loss = zm.next_token_loss(fn, ids, mask, frozen=base)
    frozen, _ = run(make_tx(name, learning_rate=0.0), params, loss, 1)
    assert_trees_equal(params, frozen)
    a, _ = run(make_tx(name, learning_rate=1e-2, key=5), params, loss, 2)
    b, _ = run(make_tx(name, learning_rate=1e-2, key=5), params, loss, 2)
    assert_trees_equal(a, b)
    one, _ = run(make_tx(name, learning_rate=1e-2, key=5), params, loss, 1)
    for leaf in ("keys", "values"):
        delta = np.asarray(one["layers"][leaf][0], np.float64) - np.asarray(params["layers"][leaf][0], np.float64)
        delta = delta.reshape(delta.shape[0], -1)
        assert np.abs(delta).max() > 0
        assert np.linalg.matrix_rank(delta, tol=1e-5 * np.abs(delta).max()) <= RANK


def test_finetune_with_subspace_perturbations(tmp_path, capsys) -> None:
    """``zojax finetune --perturbation subspace`` trains (SubZero-GV on the tiny model) and says so;
    the options are checked and saved with the run."""
    import json

    from zojax.cli import config_from_args, finetune_main

    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(f"a {'good' if i % 2 else 'bad'} film {i}\t{i % 2}\n" for i in range(32))
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    out = tmp_path / "run"
    argv = ["--model", "random:tiny", "--data-dir", str(d.parent), "--num-train", "16", "--num-dev", "4",
            "--num-test", "4", "--method", "mezo-gv", "--num-candidates", "2", "--lr", "1e-3", "--batch-size", "4",
            "--steps", "3", "--perturbation", "subspace", "--rank", "2", "--refresh-every", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert finetune_main(argv) == 0
    printed = capsys.readouterr()
    assert "noise: SubZero's rank-2 subspaces" in printed.out + printed.err
    assert "a new subspace every 2 steps" in printed.out + printed.err
    saved = json.loads((out / "config.json").read_text())["config"]["optim"]
    assert (saved["perturbation"], saved["rank"], saved["refresh_every"]) == ("subspace", 2, 2)
    assert json.loads((out / "results.json").read_text())["status"] == "done"
    assert config_from_args(["--perturbation", "subspace"]).optim.rank == 32
    with pytest.raises(ValueError, match="--rank and --refresh-every: only with --perturbation subspace"):
        config_from_args(["--rank", "8"])


# --- the low-rank forward: embedding rows and the head without V×H noise -------------------------


def _direction(rank: int = 8) -> Direction:
    sub = Subspace(perturb.subspace_key(perturb.key_data(1), 0, 10), rank)
    return Direction(perturb.candidate_keys(perturb.key_data(2), 2), jnp.array([1.0, -0.5]), "gaussian", sub)


@pytest.mark.parametrize(("arch", "tie"), [("llama", True), ("llama", False), ("opt", True)])
def test_low_rank_embedding_and_head_equal_the_materialised_noise(arch: str, tie: bool) -> None:
    """``E[ids] + s A[ids] Bᵀ`` and ``h Wᵀ + (h Q) Pᵀ`` equal the forward at ``perturb(θ, v, s)``."""
    make = zm.llama_config if arch == "llama" else zm.opt_config
    model, params = zm.init_model(make("tiny", vocab_size=1024, tie_embeddings=tie), 0)
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, 1024)
    mask = jnp.ones_like(ids)
    d, s = _direction(), 0.05
    for fn in ("logits", "token_logprobs"):
        call = lambda p, pert=None, fn=fn: getattr(model, fn)(p, ids, mask, perturbation=pert)
        both = lambda p, call=call: (call(p, (d, s)), call(perturb.perturb(p, d, s)), call(p))
        fly, ref, base = jax.jit(both)(params)  # one compile for the three forwards
        assert float(jnp.max(jnp.abs(ref - base))) > 0.1  # the noise matters
        np.testing.assert_allclose(fly, ref, rtol=1e-5, atol=1e-5)


def test_low_rank_head_and_embedding_temp_bytes():
    """The perturbed forward's temp exceeds the plain forward's by far less than one ``V×H``
    float32 noise (before: the head's noise was built per vocabulary chunk and for the embedding)."""
    config = zm.llama_config("tiny", vocab_size=8192, hidden_size=256, intermediate_size=256, num_layers=1)
    model, params = zm.init_model(config, 0)
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, 8192)
    mask, d = jnp.ones_like(ids), _direction()

    def temp(pert: Any) -> int:
        f = jax.jit(lambda p: model.token_logprobs(p, ids, mask, perturbation=pert))
        compiled = f.lower(params).compile(compiler_options=zojax.ZO_COMPILER_OPTIONS)
        return int(compiled.memory_analysis().temp_size_in_bytes)

    noise_bytes = config.vocab_size * config.hidden_size * 4
    excess = temp((d, 0.05)) - temp(None)
    assert excess < noise_bytes / 4, (excess, noise_bytes)


# --- sharding: the subspace draws do not depend on the mesh ----------------------------------------


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_subspace_draws_agree_under_sharding() -> None:
    """``θ + s·v`` and the factors ``A, B`` under an FSDP × tensor mesh equal the one-device values
    to a few float32 ulps (not bitwise: the Gram matrix ``gᵀg`` of the Cholesky-QR sums over ``m``,
    which XLA may partition like the leaf; with LAPACK's potrf/trsm it was replicated and bitwise,
    but that version hung XLA:CPU inside the layer scan, see ``perturb.subspace._orthonormal_many``)."""
    from jax.sharding import NamedSharding

    from tests.test_sharding import mesh, params_and_specs, shard

    params, specs = params_and_specs()
    m = mesh()
    d = Direction(jnp.stack([perturb.key_data(3), perturb.key_data(4)]), jnp.array([0.5, -1.5]), "gaussian", FIXED)
    out_sh = jax.tree.map(lambda s: NamedSharding(m, s), specs)
    single = jax.jit(lambda p: perturb.perturb(p, d, 1e-3))(params)
    sharded = jax.jit(lambda p: perturb.perturb(p, d, 1e-3), out_shardings=out_sh)(shard(params, specs, m))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(single), jax.tree.leaves(sharded), strict=True):
        assert len(b.sharding.device_set) > 1 or b.shape == (4,), path
        np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=4)
    # the low-rank factors a model applies, computed next to sharded parameters
    path = (DK("layers"), DK("w"))
    factors = lambda p: perturb.subspace_factors(d, path, p["layers"]["w"].shape[1:], jnp.uint32(1))
    one = jax.jit(factors)(params)
    eight = jax.jit(factors)(shard(params, specs, m))
    for a, b in zip(one, eight, strict=True):
        np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=4)
