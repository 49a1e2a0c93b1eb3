"""Checkpoint layout: identical parameters are stored once (hard links), the old layout still reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from zojax.train import checkpoint as ckpt_lib
from zojax.train.checkpoint import ITEMS, META, STATE, Checkpoints, write_manifest


def _state(seed: int) -> dict:
    k = jax.random.key(seed)
    params = {"w": jax.random.normal(k, (256, 256)), "b": jnp.arange(256.0)}
    return {"params": params, "opt_state": {"count": jnp.asarray(seed, jnp.int32)}}


def _inodes(folder: Path) -> dict[int, int]:
    return {p.stat().st_ino: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _assert_equal(a: dict, b: dict) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_best_and_step_of_one_step_share_their_parameter_files(tmp_path: Path) -> None:
    state = _state(1)
    for order in ("best first", "step first"):
        ck = Checkpoints(tmp_path / order.replace(" ", "_"))
        saves = [lambda c=ck: c.save_best(5, state["params"], {}), lambda c=ck: c.save(5, state, {"best": None})]
        for save in saves if order == "best first" else saves[::-1]:
            save()
        step_files = _inodes(ck.directory / "step_00000005" / ITEMS / "params")
        best_files = _inodes(ck.directory / "best_00000005" / ITEMS / "params")
        assert step_files == best_files  # the same inodes: one copy on disk
        params_bytes = sum(step_files.values())
        assert params_bytes > 256 * 256 * 4 // 2  # the parameters are in there (orbax compresses a little)
        on_disk = _inodes(ck.directory)
        assert sum(on_disk.values()) < 1.5 * params_bytes  # not two copies
        target = ckpt_lib.abstract(state)
        restored, meta = ck.restore_latest(target)
        _assert_equal(restored, state)
        assert meta["step"] == 5
        shutil.rmtree(ck.directory / "step_00000005")  # pruning one keeps the other intact
        best, _ = ck.restore_best(5, ckpt_lib.abstract(state["params"]))
        _assert_equal(best, state["params"])


def test_different_steps_are_not_linked(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path / "ck")
    ck.save_best(4, _state(1)["params"], {})
    ck.save(5, _state(2), {"best": None})
    assert not set(_inodes(ck.directory / "step_00000005")) & set(_inodes(ck.directory / "best_00000004"))
    restored, _ = ck.restore_latest(ckpt_lib.abstract(_state(2)))
    _assert_equal(restored, _state(2))


def test_checkpoints_of_the_previous_layout_still_restore(tmp_path: Path) -> None:
    state = _state(3)
    folder = tmp_path / "ck" / "step_00000007"
    folder.mkdir(parents=True)
    ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(folder / STATE, args=ocp.args.StandardSave(state))
    (folder / META).write_text(json.dumps({"step": 7}))
    write_manifest(folder)
    restored, meta = Checkpoints(tmp_path / "ck").restore_latest(ckpt_lib.abstract(state))
    assert meta["step"] == 7
    _assert_equal(restored, state)


def test_a_run_stopped_before_its_first_step_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """Stopped right after the step-0 dev evaluation (a SIGTERM before the first step), then resumed:
    the log and the final weights are the uninterrupted run's, bit for bit (no second step-0
    evaluation)."""
    import signal

    from tests.test_golden import dumps, make_config, run_case, write_data
    from zojax.train import Trainer

    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    first = Trainer(make_config(data, out, optim__method="mezo"), log=lambda m: None)
    first.request_stop(signal.SIGTERM)
    report = first.run()
    assert report["status"] == "interrupted" and report["step"] == 0
    expected = json.loads(dumps(run_case("mezo", data, tmp_path / "uninterrupted")))
    got = json.loads(dumps(run_case("mezo", data, out, resume=True)))
    assert got["metrics"] == expected["metrics"]
    assert got["weights"] == expected["weights"]
