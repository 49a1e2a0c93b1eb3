"""Comparing two trainer runs of one configuration (single device vs a mesh or several processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from zojax.train import Checkpoints, build_model, build_optimizer, prepare_tuning
from zojax.train import checkpoint as ckpt_lib


def final_params(run_dir: Path, config: Any) -> dict[str, np.ndarray]:
    """The newest checkpoint's parameters of a run of ``config``, by key path, on the host."""
    c = config.resolve()
    tuned = prepare_tuning(*build_model(c.model.name), c)
    target = {"params": tuned.params, "opt_state": build_optimizer(c).init(tuned.params)}
    state, _ = Checkpoints(Path(run_dir) / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state["params"])[0]}


def initial_params(config: Any) -> dict[str, np.ndarray]:
    """The trainable parameters a run of ``config`` starts from, by key path."""
    c = config.resolve()
    tuned = prepare_tuning(*build_model(c.model.name), c)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tuned.params)[0]}


def assert_metrics_agree(a: list[dict], b: list[dict], eps: float, tol: float) -> None:
    """Two ``metrics.jsonl`` logs agree: losses within ``tol`` (relative above 1), projected
    gradients ``(L₊ − L₋)/2ε`` within ``2·tol/2ε`` (two losses within ``tol`` each), steps and
    metrics equal."""
    assert [r["event"] for r in a] == [r["event"] for r in b]
    bounds = {"loss": tol, "dev_loss": tol, "test_loss": tol, "projected_grad": 2 * tol / (2 * eps)}
    for x, y in zip(a, b, strict=True):
        for k, t in bounds.items():
            if k in x:
                assert abs(x[k] - y[k]) <= t * max(1.0, abs(x[k])), (k, x, y)
        for k in ("step", "dev_accuracy", "test_accuracy", "selected_step"):
            assert x.get(k) == y.get(k), (k, x, y)


def assert_params_agree(a: dict[str, np.ndarray], b: dict[str, np.ndarray], initial: dict[str, np.ndarray],
                        tol: float) -> None:  # fmt: skip
    """Parameters within ``tol`` of each other, after moving by more than ``100·tol`` (so the check is
    not between two untrained models)."""
    assert a.keys() == b.keys() == initial.keys()
    assert max(float(np.max(np.abs(a[k] - initial[k]))) for k in a) > 100 * tol
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=tol, err_msg=k)
