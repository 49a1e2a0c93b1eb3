"""Stopping and resuming a run, and what it writes, on a tiny random Llama with fixture SST-2 data.

* 20 steps uninterrupted == 10 steps, stop, resume, 10 more (params, optimizer state and logs
  bitwise); the same through the CLI with a real SIGTERM; one agreement per step carries the stop
  and the time-based checkpoint;
* a stop during a dev or test evaluation stops it between forward passes, and the resume repeats it
  (training and zero-shot runs);
* a truncated / partial latest checkpoint is detected and the previous one used (with a warning);
* an existing run needs ``--resume``, and a resume may not change the trajectory;
* the logs, ``results.json``, TensorBoard events and the plot script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests._trainer import LR, REPO, assert_trees_equal, final_state, make_config, quiet, run_cli, tb_scalars
from zojax.train import (
    Checkpoints,
    CheckpointWarning,
    Trainer,
    build_model,
    build_optimizer,
    prepare_tuning,
    read_metrics,
    strip_timing,
)
from zojax.train import checkpoint as ckpt_lib


@pytest.fixture(scope="module")
def baseline(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 20-step run every resume test compares against."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    report = Trainer(make_config(data_dir, out), log=quiet).run()
    assert report["status"] == "done"
    return out


# ---------------------------------------------------------------------- resume
def test_resume_at_the_final_step_evaluates_and_reports(data_dir: Path, tmp_path: Path) -> None:
    """Stopped between evaluations, then resumed with ``--steps`` equal to the checkpoint's step:
    no training is left, but the final dev evaluation, checkpoint and report still happen."""
    out = tmp_path / "run"
    first = Trainer(make_config(data_dir, out, run__stop_after=12), log=quiet).run()
    assert first["status"] == "stopped" and first["step"] == 12
    assert all(r.get("step") != 12 for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval")
    second = Trainer(make_config(data_dir, out, run__resume=True, optim__steps=12), log=quiet).run()
    assert second["status"] == "done"
    dev_steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert dev_steps[-1] == 12
    res = json.loads((out / "results.json").read_text())
    assert res["dev_after"]["step"] == 12 and res["test"]["n"] == 8
    assert 12 in Checkpoints(out / "checkpoints").steps()


def test_resume_is_bitwise_identical(baseline: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    first = Trainer(make_config(data_dir, out, run__stop_after=10), log=quiet).run()
    assert first["status"] == "stopped" and first["step"] == 10
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-1] == 10
    second = Trainer(make_config(data_dir, out, run__resume=True), log=quiet).run()
    assert second["status"] == "done"

    cfg = make_config(data_dir, None)
    a, b = final_state(baseline, cfg), final_state(out, cfg)
    assert a["step"] == b["step"] == 20
    assert_trees_equal(a["params"], b["params"])
    assert_trees_equal(a["opt_state"], b["opt_state"])  # incl. the PRNG key and counters
    ma, mb = read_metrics(baseline / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert strip_timing(ma) == strip_timing(mb)
    ra = json.loads((baseline / "results.json").read_text())
    rb = json.loads((out / "results.json").read_text())
    for key in ("dev_before", "dev_after", "best", "test", "selected_step"):
        strip = lambda d: {k: v for k, v in d.items() if k != "eval_time"} if isinstance(d, dict) else d
        assert strip(ra[key]) == strip(rb[key])
    ea, eb = tb_scalars(baseline), tb_scalars(out)
    drop = ("step_time", "forwards_per_s", "wall_time", "eval_time")
    clean = lambda ev: [(s, {k: v for k, v in d.items() if not k.endswith(drop)}) for s, d in ev]
    assert clean(ea) == clean(eb)


def test_one_agreement_per_step_carries_stop_and_timed_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's only collective is one ``hosts.agree`` of ``(stop request, time-based checkpoint
    due)`` before each step (and one before training, and one before each evaluation pass: one here). A
    faked second process asks, through that maximum, for a time-based checkpoint before step 3 and
    stops with SIGTERM before step 5: this process (never due itself) saves step 2, then stops at
    step 4 and saves it."""
    from zojax.train import hosts as real_hosts
    from zojax.train import loop as loop_mod
    from zojax.train import stopping as stopping_mod

    calls: list[list[int]] = []
    other = {4: (-1, 1), 6: (int(signal.SIGTERM), 0)}  # agreement number -> the other process's values

    def agree(values):
        calls.append(list(values))
        theirs = other.get(len(calls) - 1, (-1, 0))
        return tuple(max(int(a), b) for a, b in zip(values, theirs, strict=True))

    fake = SimpleNamespace(count=lambda: 2, agree=agree, is_main=real_hosts.is_main, barrier=lambda name: None)
    monkeypatch.setattr(loop_mod, "hosts", fake)
    monkeypatch.setattr(stopping_mod, "hosts", fake)  # the agreement (zojax.train.stopping)
    out = tmp_path / "run"
    cfg = make_config(data_dir, out, optim__steps=6, run__checkpoint_every=0, run__checkpoint_minutes=1e6)
    report = Trainer(cfg, log=quiet).run()
    assert report["status"] == "interrupted" and report["signal"] == signal.SIGTERM and report["step"] == 4
    assert calls == [[-1, 0]] * 7  # the step-0 dev pass, before training, then before steps 1..5; never due
    assert Checkpoints(out / "checkpoints").steps() == [2, 4]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"] == [1, 2, 3, 4]


def _run_stopping_in_evaluation(cfg, at: tuple[int, int] | None) -> tuple[dict, list[int]]:
    """Runs ``cfg``; with ``at = (step, k)`` a SIGTERM arrives while the k-th evaluation pass at
    ``step`` runs (the stop request is made when the trainer asks whether to stop before pass k + 1).

    Returns the report and the training step at each of the trainer's "stop before this pass?" questions.
    """
    trainer = Trainer(cfg, log=quiet)
    asked: list[int] = []
    real = trainer._stops.should_stop

    def should_stop() -> bool:
        asked.append(trainer.state.step)
        if at is not None and asked.count(at[0]) == at[1] + 1:
            trainer.request_stop(signal.SIGTERM)  # what the handler does
        return real()

    trainer._stops.should_stop = should_stop
    return trainer.run(), asked


def test_stop_during_an_evaluation_stops_it_and_a_resume_repeats_it(data_dir: Path, tmp_path: Path) -> None:
    """A SIGTERM during a dev evaluation stops it before its next forward pass (not after the
    whole split), checkpoints the step, and the resume evaluates that step again; a second one
    during the final test evaluation likewise. The twice-interrupted run equals an uninterrupted one
    (params, optimizer state, logs, results)."""
    over = dict(optim__steps=10, eval__token_budget=64)  # a few rows per pass: several passes per split
    ref_out, out = tmp_path / "reference", tmp_path / "interrupted"
    ref, asked_ref = _run_stopping_in_evaluation(make_config(data_dir, ref_out, **over), None)
    assert ref["status"] == "done"
    dev_passes = asked_ref.count(5)  # the dev evaluation at step 5
    assert dev_passes >= 3 and asked_ref.count(0) == dev_passes
    assert asked_ref.count(10) > dev_passes  # the final dev, then the test evaluation

    first, asked = _run_stopping_in_evaluation(make_config(data_dir, out, **over), (5, 1))
    assert first["status"] == "interrupted" and first["signal"] == signal.SIGTERM and first["step"] == 5
    assert asked.count(5) == 2  # stopped before its second pass, not after the whole split
    assert 5 in Checkpoints(out / "checkpoints").steps()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "eval"] == [0]
    assert not (out / "results.json").exists()

    second, asked = _run_stopping_in_evaluation(make_config(data_dir, out, run__resume=True, **over),
                                                (10, dev_passes + 1))  # fmt: skip
    assert second["status"] == "interrupted" and second["step"] == 10
    assert asked.count(5) == dev_passes  # the interrupted evaluation, repeated in full
    assert not (out / "results.json").exists()
    third, _ = _run_stopping_in_evaluation(make_config(data_dir, out, run__resume=True, **over), None)
    assert third["status"] == "done"

    cfg = make_config(data_dir, None, **over)
    a, b = final_state(ref_out, cfg), final_state(out, cfg)
    assert a["step"] == b["step"] == 10
    assert_trees_equal(a["params"], b["params"])
    assert_trees_equal(a["opt_state"], b["opt_state"])
    assert strip_timing(read_metrics(ref_out / "metrics.jsonl")) == strip_timing(read_metrics(out / "metrics.jsonl"))
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref_out, out))
    strip = lambda d: {k: v for k, v in d.items() if k != "eval_time"} if isinstance(d, dict) else d
    for key in ("dev_before", "dev_after", "best", "test", "selected_step"):
        assert strip(ra[key]) == strip(rb[key])


def test_stop_during_a_zero_shot_evaluation(data_dir: Path, tmp_path: Path) -> None:
    """Zero-shot: a SIGTERM during the dev evaluation stops it between passes and writes no
    results (nothing to checkpoint); the rerun reports what an uninterrupted run does."""
    over = dict(optim__method="zero-shot", optim__steps=0, eval__token_budget=64)
    ref, _ = _run_stopping_in_evaluation(make_config(data_dir, tmp_path / "reference", **over), None)
    out = tmp_path / "zero-shot"
    first, asked = _run_stopping_in_evaluation(make_config(data_dir, out, **over), (0, 1))
    assert first["status"] == "interrupted" and first["signal"] == signal.SIGTERM
    assert len(asked) == 2 and not (out / "results.json").exists()
    again, _ = _run_stopping_in_evaluation(make_config(data_dir, out, run__resume=True, **over), None)
    assert again["status"] == "done"
    for key in ("dev_after", "test"):
        assert {k: v for k, v in again[key].items() if k != "eval_time"} == {
            k: v for k, v in ref[key].items() if k != "eval_time"
        }


def test_logs_and_results(baseline: Path) -> None:
    recs = read_metrics(baseline / "metrics.jsonl")
    train = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert all(r["forwards"] == 2 * r["step"] for r in recs)
    assert all({"loss", "projected_grad", "wall_time", "step_time"} <= set(r) for r in train)
    evals = [r for r in recs if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10, 15, 20]
    assert all("dev_accuracy" in r and "dev_loss" in r for r in evals)
    (test,) = [r for r in recs if r["event"] == "test"]
    assert "test_accuracy" in test
    res = json.loads((baseline / "results.json").read_text())
    assert res["forwards"] == 40 and res["best"]["step"] in (0, 5, 10, 15, 20)
    assert res["test"]["n"] == 8
    saved = json.loads((baseline / "config.json").read_text())
    assert saved["config"]["optim"]["method"] == "mezo" and saved["forwards_per_step"] == 2
    events = tb_scalars(baseline)
    by_step = [s for s, d in events if "train/loss" in d]
    by_fwd = [s for s, d in events if "train_by_forwards/loss" in d]
    assert by_step == list(range(1, 21)) and by_fwd == list(range(2, 41, 2))
    # checkpoints: the last two periodic ones and the best-by-dev slots they refer to
    ck = Checkpoints(baseline / "checkpoints")
    assert ck.steps() == [15, 20]
    assert res["best"]["step"] in ck.best_steps()
    assert set(ck.best_steps()) == ck.referenced_best_steps() | {res["best"]["step"]}


def test_sigterm_then_resume_through_the_cli(
    baseline: Path, data_dir: Path, compile_cache: str, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    args = [
        "--model", "random:tiny", "--data-dir", str(data_dir), "--num-train", "16",
        "--num-dev", "8", "--num-test", "8", "--method", "mezo", "--lr", str(LR["mezo"]),
        "--eps", "1e-2", "--batch-size", "16", "--eval-every", "5", "--no-progress",
        "--checkpoint-every", "5", "--out", str(out), "--compile-cache", compile_cache,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "zojax.cli", "finetune", *args]
    env = dict(os.environ)  # same XLA_FLAGS as this process: the cached executables apply
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (a file, not a pipe that could fill)
    proc = subprocess.Popen([*cmd, "--steps", "100000"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log.close()
    output = (tmp_path / "killed.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM" in output and "--resume" in output
    killed_at = Checkpoints(out / "checkpoints").steps()[-1]
    assert killed_at >= 1
    assert read_metrics(metrics)[-1]["step"] == killed_at
    # resume and finish at step 20 (or a few steps after the kill): equal to an uninterrupted run
    total = max(20, killed_at + 3)
    done = subprocess.run(
        [*cmd, "--resume", "--steps", str(total)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ref = baseline
    if total != 20:
        ref = tmp_path / "reference"
        Trainer(make_config(data_dir, ref, optim__steps=total), log=quiet).run()
    cfg = make_config(data_dir, None, optim__steps=total)
    assert_trees_equal(final_state(ref, cfg)["params"], final_state(out, cfg)["params"])
    ma, mb = read_metrics(ref / "metrics.jsonl"), read_metrics(metrics)
    assert strip_timing(ma) == strip_timing(mb)


def test_corrupt_latest_checkpoint_falls_back(baseline: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "corrupt"
    shutil.copytree(baseline, out)
    ck = Checkpoints(out / "checkpoints")
    latest = out / "checkpoints" / "step_00000020"
    files = [p for p in (latest / "items").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    cfg = make_config(data_dir, out, run__resume=True)
    with pytest.warns(CheckpointWarning, match="step_00000020.*truncated.*falling back to step 15"):
        report = Trainer(cfg, log=quiet).run()
    assert report["status"] == "done"
    assert (out / "checkpoints" / "corrupt.step_00000020").exists()
    assert ck.steps() == [15, 20]
    # steps 16..20 were recomputed: same params and logs as the uninterrupted run
    ref = make_config(data_dir, None)
    assert_trees_equal(final_state(baseline, ref)["params"], final_state(out, ref)["params"])
    assert strip_timing(read_metrics(baseline / "metrics.jsonl")) == strip_timing(read_metrics(out / "metrics.jsonl"))


def test_partial_checkpoint_is_ignored(baseline: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    shutil.copytree(baseline, out)
    (out / "checkpoints" / "step_00000020" / "MANIFEST.json").unlink()  # killed mid-save
    cfg = make_config(data_dir, None).resolve()
    tuned = prepare_tuning(*build_model(cfg.model.name), cfg)
    target = {"params": tuned.params, "opt_state": build_optimizer(cfg).init(tuned.params)}
    with pytest.warns(CheckpointWarning, match="no MANIFEST"):
        _, meta = Checkpoints(out / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    assert meta["step"] == 15
    with pytest.warns(CheckpointWarning, match="starting from scratch"):
        (out / "checkpoints" / "step_00000015" / "meta.json").write_text("{}")
        assert Checkpoints(out / "checkpoints").restore_latest(ckpt_lib.abstract(target)) is None


def test_existing_run_needs_resume(
    capsys: pytest.CaptureFixture[str], baseline: Path, tmp_path: Path, data_dir: Path
) -> None:
    code, _, err = run_cli(capsys, "finetune", "--model", "random:tiny", "--data-dir",
                           str(data_dir), "--out", str(baseline))  # fmt: skip
    assert code == 2 and "already holds a run; pass --resume" in err
    code, _, err = run_cli(capsys, "finetune", "--out", str(baseline), "--resume", "--lr", "0.5")
    assert code == 2 and f"--lr: the run being resumed used {LR['mezo']!r}, got 0.5" in err
    code, _, err = run_cli(capsys, "finetune", "--out", str(baseline), "--resume", "--steps", "10")
    assert code == 2 and "--steps: the run in" in err and "is at step 20 already; resume with --steps >= 20" in err
    code, _, err = run_cli(capsys, "finetune", "--out", str(tmp_path), "--resume")
    assert code == 2 and "no run to resume" in err


def test_plot(baseline: Path, tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    cmd = [sys.executable, str(REPO / "experiments" / "plot.py"), str(baseline), str(baseline),
           "--labels", "a,b", "--out", str(png)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
