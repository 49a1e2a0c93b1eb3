"""``experiments/directions.py``: its shared-pool shortcuts are exact, and MeZO-GV (M = 2) is MeZO.

* The pool's exact products (``⟨∇L, z_i⟩``, Gram matrix) equal those of materialised noise, and the
  row-chunked draw is bitwise the library's noise.
* A draw's coefficients (ranking, weights, real two-point values) rebuild the registered estimators'
  own estimates for every method of the experiment.
* On a linear loss the pool machinery reproduces the exact finite-k predictions (and those agree
  with :mod:`zojax.diagnostics`).
* MeZO-GV with M = 2, α = 0.5 and MeZO with (2·lr, √2·ε): equal update for shared noise (coupled),
  and the same update distribution for independent keys (two-sample KS tests on the registered
  estimators, which reject the wrong pairing MeZO at (lr, √2·ε)).
* The script end to end on the tiny model, interrupted and resumed: the same records as one run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zojax import diagnostics, estimators, perturb, registry
from zojax.models import next_token_loss
from zojax.perturb import Direction
from zojax.train.loop import build_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("directions", ROOT / "experiments" / "directions.py")
D = importlib.util.module_from_spec(_spec)
sys.modules["directions"] = D
_spec.loader.exec_module(D)

EPS = 1e-2
ALPHA = 1e-3


@pytest.fixture(scope="module")
def tiny():
    """The tiny random Llama, a next-token loss on random bytes (batch 4 x 16) and its gradient."""
    model, params = build_model("random:tiny")
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 256, (4, 16)), jnp.int32)
    mask = jnp.ones_like(ids)
    loss = next_token_loss(model, ids, mask)
    grad = jax.jit(jax.grad(loss))(params)
    return loss, params, grad


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_noise_rows_is_the_library_noise_bitwise() -> None:
    path = (jax.tree_util.DictKey("embed"), jax.tree_util.DictKey("embedding"))
    key = perturb.key_data(7)
    full = np.asarray(perturb.leaf_noise(key, path, (259, 64)))
    rows = jax.jit(lambda s: D.noise_rows(key, path, (259, 64), s, 37))
    for chunk in range(7):
        np.testing.assert_array_equal(np.asarray(rows(chunk * 37)), full[chunk * 37 : (chunk + 1) * 37])


def test_pool_products_equal_materialised_noise(tiny, monkeypatch) -> None:
    _, params, grad = tiny
    monkeypatch.setattr(D, "ROW_CHUNK_ELEMENTS", 64 * 40)  # the embedding (259 x 64) in 7 chunks of 37 rows
    assert D.row_chunk(259, 64) == 37
    held = jax.tree.map(lambda x: jnp.cos(3.0 * x), grad)
    keys = jnp.stack([perturb.fold_in(perturb.key_data(3), i) for i in range(5)])
    p, q, gram = (np.asarray(x, np.float64) for x in jax.jit(D.pool_stats)(keys, grad, held))
    z = np.stack([_flat(perturb.direction_tree(Direction.single(keys[i]), params)) for i in range(5)])
    g, h = _flat(grad), _flat(held)
    np.testing.assert_allclose(p, z @ g, rtol=1e-4, atol=1e-4 * np.abs(z @ g).max())
    np.testing.assert_allclose(q, z @ h, rtol=1e-4, atol=1e-4 * np.abs(z @ h).max())
    np.testing.assert_allclose(gram, z @ z.T, rtol=1e-5, atol=1e-4 * len(g) ** 0.5)


@pytest.mark.parametrize("m", [2, 3, 4, 8])
def test_gv_weights_match_the_estimator(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(20):
        losses = rng.integers(0, 3, m).astype(np.float32)  # many ties: the stable order decides
        ref = np.asarray(estimators.guiding_weights(jnp.asarray(losses), 0.5))
        np.testing.assert_allclose(D.gv_weights(losses), ref, rtol=1e-6)


def _smooth_loss(params):
    """A non-linear loss on a small pytree with a stacked ``layers`` leaf (rankings depend on curvature)."""
    x = jnp.concatenate([params["layers"]["w"].ravel(), params["v"]])
    a = jnp.sin(jnp.arange(x.size, dtype=jnp.float32))
    return jnp.sum(jax.nn.softplus(3.0 * a * x - 0.5)) + 2.0 * jnp.sum(x**2) ** 2


def test_draw_coefficients_rebuild_the_registered_estimates() -> None:
    """Pool keys fold_in(K, i) and the draw 0..7: every method's coefficients ``b`` (ĝ = Σ b_i z_i)
    are the registered estimator's own (keys, weights)."""
    params = {"layers": {"w": 0.1 * jnp.ones((2, 6, 5))}, "v": jnp.linspace(-0.3, 0.3, 40)}
    step_key = perturb.key_data(11)
    keys = jnp.stack([perturb.fold_in(step_key, i) for i in range(8)])
    options = {"nspsa": "num_queries", "mezo-gv": "num_candidates", "mezo-greedy": "num_candidates"}

    @jax.jit
    def registered(key):
        out = []
        for spec in D.SPECS:
            kw = {options[spec.family]: spec.k} if spec.family in options else {}
            est = registry.get(spec.family).estimate(_smooth_loss, params, key, eps=EPS, **kw)
            out.append((est.grad.keys, est.grad.weights))
        return out

    # every evaluation as an 8-key direction (zero weights for unused keys): one compiled program
    at = jax.jit(lambda w, s: perturb.evaluate(_smooth_loss, params, Direction(keys, w), s))

    def value(idx, w, s):
        full = np.zeros(8, np.float32)
        full[idx] = w
        return float(at(jnp.asarray(full), jnp.float32(s)))

    pool_losses = np.asarray([value([i], [1.0], EPS) for i in range(8)])
    sel = np.arange(8)
    for spec, (rkeys, rweights) in zip(D.SPECS, registered(step_key), strict=True):
        dirs = D.searches(spec, sel, pool_losses)
        c = [(value(idx, w, EPS) - value(idx, w, -EPS)) / (2 * EPS) for idx, w in dirs]
        b = D.coefficients(dirs, c, 8)
        ref = np.zeros(8)
        for k, w in zip(np.asarray(rkeys), np.asarray(rweights, np.float64), strict=True):
            ref[next(j for j in range(8) if np.array_equal(np.asarray(keys[j]), k))] += w
        np.testing.assert_allclose(b, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max(), err_msg=spec.label)


LINEAR_D = 20_000


def linear_pools(seed: int, pools: int = 12, draws: int = 32):
    """``pools`` independent pools of Gaussian ``z`` on ``L = 1 + gᵀθ`` (``d = LINEAR_D``, held-out
    gradient ``h = g/2 + noise``) with disjoint draws: ``(pool, subsets)`` pairs."""
    d, n = LINEAR_D, D.DRAW_SIZE * draws  # disjoint draws
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d)
    h = 0.5 * g + rng.standard_normal(d)
    for k in range(pools):
        z = rng.standard_normal((n, d)).astype(np.float32).astype(np.float64)
        pool = {"d": d, "grad_norm2": g @ g, "heldout_grad_norm2": h @ h, "p": z @ g, "q": z @ h, "gram": z @ z.T}
        pool["losses"] = 1.0 + EPS * pool["p"]
        yield pool, D.draw_subsets(k, f"linear/{k}", n, draws)


def test_linear_loss_reproduces_the_exact_predictions() -> None:
    """Independent pools of Gaussian z on L = gᵀθ (d = 20 000): per-method means within the bounds."""
    d = LINEAR_D
    per_pool = [D.analyse_pool(pool, subsets, 1.0, EPS) for pool, subsets in linear_pools(0)]
    stat_names = ("cos", "r1", "mult", "noise")
    crit = stats.norm.ppf(1 - ALPHA / (2 * len(D.SPECS) * len(stat_names)))
    for spec in D.SPECS:
        pred = D.linear_prediction(spec, d)
        dn, dk = spec.diagnostics_name
        exact = diagnostics.predicted_ratio(dn, dk, d)[0] * math.sqrt(d - 1)
        assert abs(pred["r1"] - exact) <= 0.01 * exact, (spec.label, pred["r1"], exact)
        for s in stat_names:
            v = np.asarray([pp[spec.label]["real"][s] for pp in per_pool])
            assert np.allclose(v, [pp[spec.label]["linear"][s] for pp in per_pool])
            se = v.std(ddof=1) / math.sqrt(len(v))
            assert abs(v.mean() - pred[s]) <= crit * se, (spec.label, s, v.mean(), pred[s], se)


def test_centred_coefficients_are_the_registered_estimate() -> None:
    """The experiment's centred-loss coefficients over candidates 0..M−1 are the registered
    ``mezo-centred`` estimate's own weights (same keys, same order)."""
    params = {"layers": {"w": 0.1 * jnp.ones((2, 6, 5))}, "v": jnp.linspace(-0.3, 0.3, 40)}
    step_key = perturb.key_data(11)
    for m in D.CENTRED_SIZES:
        est = registry.get("mezo-centred").estimate(_smooth_loss, params, step_key, eps=EPS, num_candidates=m)
        for i in range(m):
            assert np.array_equal(np.asarray(est.grad.keys[i]), np.asarray(perturb.fold_in(step_key, i)))
        losses = np.asarray(est.losses, np.float64)
        b = D.centred_coefficients(losses, np.arange(m), EPS, m)
        # float32 mean and difference in the estimator: a few ulps of the losses, over (M − 1)ε
        ulp = float(np.spacing(np.float32(np.abs(losses).max())))
        np.testing.assert_allclose(b, np.asarray(est.grad.weights, np.float64), rtol=0, atol=4 * ulp / ((m - 1) * EPS))


def test_centred_estimate_on_a_linear_loss_meets_its_prediction() -> None:
    """Independent linear pools (d = 20 000): the centred-loss estimator's mean mult and noise within
    Bonferroni z-bounds of ``mult = 1`` and ``noise = 1/(M−1)`` (so SNR = M − 1)."""
    per_pool = [D.analyse_centred(pool, subsets, EPS) for pool, subsets in linear_pools(1)]
    stat_names = ("mult", "noise")
    crit = stats.norm.ppf(1 - ALPHA / (2 * len(D.CENTRED_SIZES) * len(stat_names)))
    for m in D.CENTRED_SIZES:
        pred = D.centred_prediction(m)
        for s in stat_names:
            v = np.asarray([pp[f"centred-m{m}"][s] for pp in per_pool])
            se = v.std(ddof=1) / math.sqrt(len(v))
            assert abs(v.mean() - pred[s]) <= crit * se, (m, s, v.mean(), pred[s], se)
    # a wrong normalisation (1/M instead of 1/(M−1)) is rejected: the negative control
    v = np.asarray([pp["centred-m4"]["mult"] for pp in per_pool]) * 3 / 4
    assert abs(v.mean() - 1.0) > crit * v.std(ddof=1) / math.sqrt(len(v))


@pytest.fixture(scope="module")
def gv_and_mezo(tiny):
    """200 draws of the registered MeZO-GV (M = 2; lr, ε) and MeZO (√2·ε) on the tiny model: the
    coupled MeZO update along GV's own u = (z1 − z2)/√2, and per update Δθ the statistics descent
    ⟨Δθ, ∇L⟩, ‖Δθ‖, ⟨Δθ, r⟩ (fixed r) and the real loss change L(θ − Δθ) − L(θ).

    Small jitted pieces called in a Python loop: compiling the estimators once each is most of it."""
    loss, params, grad = tiny
    n, lr = 200, 1e-3
    r = jax.tree.map(lambda x: jnp.sin(7.0 * x + 1.0), grad)
    base = float(loss(params))
    gv_est = jax.jit(
        lambda key: registry.get("mezo-gv").estimate(loss, params, key, eps=EPS, num_candidates=2, elite_ratio=0.5).grad
    )
    mezo_est = jax.jit(lambda key: registry.get("mezo").estimate(loss, params, key, eps=math.sqrt(2) * EPS).grad)
    at = jax.jit(lambda direction, s: perturb.evaluate(loss, params, direction, s))

    @jax.jit
    def linear(direction):
        v = perturb.direction_tree(direction, params)
        dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
        return jnp.stack([dot(v, grad), jnp.sqrt(dot(v, v)), dot(v, r)])

    def summary(direction, scale):
        lin = scale * np.asarray(linear(direction), np.float64)
        return np.append(lin, float(at(direction, jnp.float32(-scale))) - base)

    out = {"gv_coef": [], "coupled": [], "gv": [], "mezo_2x": [], "mezo_1x": []}
    w_u = jnp.asarray([1.0, -1.0], jnp.float32) / jnp.sqrt(2.0)
    for i in range(n):
        gv = gv_est(perturb.fold_in(perturb.key_data(1), i))
        u = Direction(gv.keys, w_u)
        g_u = (float(at(u, jnp.float32(math.sqrt(2) * EPS))) - float(at(u, jnp.float32(-math.sqrt(2) * EPS)))) / (
            2 * math.sqrt(2) * EPS
        )
        out["gv_coef"].append(lr * np.asarray(gv.weights, np.float64))
        out["coupled"].append(2 * lr * g_u * np.asarray(w_u, np.float64))
        out["gv"].append(summary(gv, lr))
        mz = mezo_est(perturb.fold_in(perturb.key_data(2), i))
        out["mezo_2x"].append(summary(mz, 2 * lr))
        out["mezo_1x"].append(summary(mz, lr))
    return {**{k: np.asarray(v) for k, v in out.items()}, "lr": lr, "loss_ulp": float(np.spacing(np.float32(base)))}


def test_gv_m2_is_mezo_at_twice_the_rate_for_shared_noise(gv_and_mezo) -> None:
    """Coupled: GV's update equals MeZO's formula along u = (z1 − z2)/√2 at (2·lr, √2·ε), draw by draw
    (up to float32 rounding of the losses), over 200 draws."""
    gv, mezo = gv_and_mezo["gv_coef"], gv_and_mezo["coupled"]
    # both evaluate L at the same points θ ± ε(z1 − z2), only rounded differently: allow 64 ulp of
    # the loss in each two-point difference, i.e. |Δcoef| <= lr · 64 ulp(L) / ε
    tol = gv_and_mezo["lr"] * 64 * gv_and_mezo["loss_ulp"] / EPS
    assert np.abs(gv - mezo).max() <= tol, (np.abs(gv - mezo).max(), tol)
    assert np.median(np.abs(gv - mezo) / np.abs(mezo)) < 1e-4
    assert np.all(np.sign(gv) == np.sign(mezo))


def test_gv_m2_and_mezo_at_twice_the_rate_have_one_update_distribution(gv_and_mezo) -> None:
    """Independent keys, the registered estimators: KS two-sample tests on the four update statistics
    accept GV (lr, ε) = MeZO (2·lr, √2·ε) and reject the wrong pairing MeZO (lr, √2·ε)."""
    gv, mezo2, mezo1 = gv_and_mezo["gv"], gv_and_mezo["mezo_2x"], gv_and_mezo["mezo_1x"]
    n, k = gv.shape
    p_same = [stats.ks_2samp(gv[:, j], mezo2[:, j]).pvalue for j in range(k)]
    p_wrong = [stats.ks_2samp(gv[:, j], mezo1[:, j]).pvalue for j in range(k)]
    assert min(p_same) > ALPHA / k, p_same
    assert min(p_wrong) < ALPHA / k, p_wrong
    # the means agree within a bound from the sample variances
    se = np.sqrt(gv.var(0, ddof=1) / n + mezo2.var(0, ddof=1) / n)
    assert np.all(np.abs(gv.mean(0) - mezo2.mean(0)) <= stats.norm.ppf(1 - ALPHA / (2 * k)) * se)


POS = ["good", "great", "fine", "nice"]
NEG = ["bad", "awful", "poor", "dull"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data") / "SST-2"
    d.mkdir()
    rng = random.Random(0)
    for name, n in (("train.tsv", 64), ("dev.tsv", 16)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"a {rng.choice(POS if label else NEG)} film \t{label}")
        (d / name).write_text("\n".join(rows) + "\n")
    return d.parent


def test_script_end_to_end_interrupted_and_resumed(tmp_path: Path, data_dir: Path) -> None:
    """2 minibatches of SST-2 on the tiny model (MeZO and GV M = 2, every phase of the script): stop
    after one, resume; the stored minibatch is kept as it was, the second is added, the summary covers
    both, a run with other settings is refused."""
    common = [
        *("--model", "random:tiny", "--tasks", "sst2", "--tunings", "full", "--batches", "2"),
        *("--methods", "mezo,mezo-gv-m2", "--draws", "4", "--pool", "8", "--probe-draws", "1"),
        *("--lr-grid", "1,10", "--equiv-draws", "1", "--num-train", "48", "--data-dir", str(data_dir)),
        *("--compile-cache", "none", "--no-progress", "--out", str(tmp_path / "d.json")),
    ]
    # the session's compilation cache is on (conftest): the resumed run loads the first run's executables
    assert D.main([*common, "--stop-after", "1"]) == 0
    first = json.loads((tmp_path / "d.json").read_text())["records"]
    assert D.main([*common, "--plot", str(tmp_path / "d.png")]) == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert [r["unit"] for r in data["records"]] == ["sst2/full/0", "sst2/full/1"]
    assert data["records"][0] == first[0]  # not recomputed
    rec = data["records"][0]
    assert rec["counts"]["forwards"] == 8 + 3 + 2 * 2 * 2 + 6  # pool, two-point probes, steps, coupled
    assert rec["equivalence_coupled"][0]["max_rel_diff"] < 1e-3
    assert "equivalence_coupled" not in data["records"][1]
    g = data["summary"]["tunings"]["full"]["all"]
    assert g["units"] == 2 and set(g["methods"]) == {"mezo", "mezo-gv-m2"}
    assert len(g["methods"]["mezo"]["loss_change"]["curves"]["dloss"]) == 2
    assert (tmp_path / "d.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # other settings must not mix into a stored run
        D.main([*common, "--draws", "5"])
