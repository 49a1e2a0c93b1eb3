"""The fine-tuning job end to end on a tiny random Llama with fixture SST-2 data.

* resume: 20 steps uninterrupted == 10 steps, stop, resume, 10 more (params, optimizer state and
  logs bitwise); the same through the CLI with a real SIGTERM;
* a truncated / partial latest checkpoint is detected and the previous one used (with a warning);
* the loss goes down on an easy task for every method (mezo, nspsa, mezo-gv, mezo-greedy, ft);
* the CLI: ``--help``, ``--dry-run``, clear errors for bad arguments; logs, TensorBoard events and
  the plot script.

Compiling a zeroth-order step is the slow part on CPU (every perturbed leaf carries its own draw
and key derivations), so the module shares one persistent compilation cache: runs with identical shapes
and hyper-parameters compile once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax.cli import finetune_main, main
from zojax.tasks.templates import SST2Template
from zojax.train import (
    Checkpoints,
    CheckpointWarning,
    MetricsLogger,
    TrainBatches,
    TrainConfig,
    Trainer,
    build_model,
    build_optimizer,
    build_step,
    prepare_tuning,
    read_events,
    read_metrics,
    step_indices,
    strip_timing,
    task_loss,
    training_loss,
)
from zojax.train import checkpoint as ckpt_lib
from zojax.train.cache import disable_compile_cache, enable_compile_cache
from zojax.train.config import is_zo

REPO = Path(__file__).resolve().parents[1]
POS = ["good", "great", "fine", "nice", "lovely", "superb", "grand", "neat"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "sad", "vile"]
# MeZO-GV's v = z_best - z_worst (M = 2, not normalised) has E|v|^2 = 2d: half the step size
LR = {"mezo": 3e-3, "nspsa": 3e-3, "mezo-gv": 1.5e-3, "mezo-greedy": 3e-3, "ft": 1e-2}


def _sst2_rows(n: int, rng: random.Random, positive_only: bool) -> str:
    lines = ["sentence\tlabel"]
    for i in range(n):
        label = 1 if positive_only else i % 2
        a, b = rng.sample(POS if label else NEG, 2)
        lines.append(f"a {a} and {b} film \t{label}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SST-2 in the official GLUE layout (train.tsv = train pool, dev.tsv = validation).

    The easy task: every training (and dev) review is positive, so a model only has to learn
    to prefer " great" to " terrible" (the random model starts near chance); the validation
    split (test) is balanced."""
    d = tmp_path_factory.mktemp("data")
    (d / "SST-2").mkdir()
    rng = random.Random(0)
    (d / "SST-2" / "train.tsv").write_text(_sst2_rows(48, rng, positive_only=True))
    (d / "SST-2" / "dev.tsv").write_text(_sst2_rows(16, rng, positive_only=False))
    return d


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory: pytest.TempPathFactory):
    """One persistent compilation cache for the module, its CLI calls and subprocesses."""
    path = enable_compile_cache(tmp_path_factory.mktemp("xla"))
    before = os.environ.get("ZOJAX_COMPILE_CACHE")
    os.environ["ZOJAX_COMPILE_CACHE"] = str(path)
    yield path
    disable_compile_cache()
    if before is None:
        del os.environ["ZOJAX_COMPILE_CACHE"]
    else:
        os.environ["ZOJAX_COMPILE_CACHE"] = before


def make_config(data_dir: Path, out: Path | None, **over) -> TrainConfig:
    """A tiny run: random:tiny, 16 training examples, batch 16, dev/test 8, MeZO."""
    c = TrainConfig()
    c.model.name = "random:tiny"
    c.data.data_dir = str(data_dir)
    c.data.num_train, c.data.num_dev, c.data.num_test = 16, 8, 8
    c.optim.method, c.optim.lr, c.optim.eps = "mezo", LR["mezo"], 1e-2
    c.optim.batch_size, c.optim.steps = 16, 20
    c.optim.num_candidates = 2
    c.eval.eval_every = 5
    c.run.out = None if out is None else str(out)
    c.run.progress = False
    c.run.checkpoint_every = 5
    for k, v in over.items():
        sec, field = k.split("__")
        setattr(getattr(c, sec), field, v)
    return c


def quiet(msg: str) -> None:
    del msg


def final_state(run_dir: Path, cfg: TrainConfig) -> dict:
    """The params and optimizer state of the newest checkpoint of ``run_dir``."""
    c = cfg.resolve()
    tuned = prepare_tuning(build_model(c.model.name), c)
    target = {"params": tuned.params, "opt_state": build_optimizer(c).init(tuned.params)}
    state, meta = Checkpoints(run_dir / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    return {**state, "step": meta["step"]}


def assert_trees_equal(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tb_scalars(run_dir: Path) -> list:
    """The scalar events of all of ``run_dir``'s TensorBoard event files, in order."""
    return list(read_events(run_dir / "tb"))


@pytest.fixture(scope="module")
def baseline(data_dir: Path, xla_cache, tmp_path_factory: pytest.TempPathFactory) -> Path:
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
    due)`` before each step (and one before training). A faked second process asks, through that
    maximum, for a time-based checkpoint before step 3 and stops with SIGTERM before step 5: this
    process (never due itself) saves step 2, then stops at step 4 and saves it."""
    from zojax.train import hosts as real_hosts
    from zojax.train import loop as loop_mod

    calls: list[list[int]] = []
    other = {3: (-1, 1), 5: (int(signal.SIGTERM), 0)}  # agreement number -> the other process's values

    def agree(values):
        calls.append(list(values))
        theirs = other.get(len(calls) - 1, (-1, 0))
        return tuple(max(int(a), b) for a, b in zip(values, theirs, strict=True))

    fake = SimpleNamespace(count=lambda: 2, agree=agree, is_main=real_hosts.is_main, barrier=lambda name: None)
    monkeypatch.setattr(loop_mod, "hosts", fake)
    out = tmp_path / "run"
    cfg = make_config(data_dir, out, optim__steps=6, run__checkpoint_every=0, run__checkpoint_minutes=1e6)
    report = Trainer(cfg, log=quiet).run()
    assert report["status"] == "interrupted" and report["signal"] == signal.SIGTERM and report["step"] == 4
    assert calls == [[-1, 0]] * 6  # before training, then before steps 1..5; never due here
    assert Checkpoints(out / "checkpoints").steps() == [2, 4]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"] == [1, 2, 3, 4]


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


def test_sigterm_then_resume_through_the_cli(baseline: Path, data_dir: Path, xla_cache: str, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = [
        "--model", "random:tiny", "--data-dir", str(data_dir), "--num-train", "16",
        "--num-dev", "8", "--num-test", "8", "--method", "mezo", "--lr", str(LR["mezo"]),
        "--eps", "1e-2", "--batch-size", "16", "--eval-every", "5", "--no-progress",
        "--checkpoint-every", "5", "--out", str(out), "--compile-cache", xla_cache,
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
    tuned = prepare_tuning(build_model(cfg.model.name), cfg)
    target = {"params": tuned.params, "opt_state": build_optimizer(cfg).init(tuned.params)}
    with pytest.warns(CheckpointWarning, match="no MANIFEST"):
        _, meta = Checkpoints(out / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    assert meta["step"] == 15
    with pytest.warns(CheckpointWarning, match="starting from scratch"):
        (out / "checkpoints" / "step_00000015" / "meta.json").write_text("{}")
        assert Checkpoints(out / "checkpoints").restore_latest(ckpt_lib.abstract(target)) is None


# ---------------------------------------------------------------------- the loss goes down
@pytest.mark.parametrize("method", ["mezo", "nspsa", "mezo-gv", "mezo-greedy", "ft"])
def test_loss_decreases_on_an_easy_task(method: str, data_dir: Path, xla_cache) -> None:
    """Exact loss on the fixed batch of all 16 training examples, before vs after 60 steps, and
    the mean of the first vs last 10 per-step losses (all seeds fixed; at these learning rates
    MeZO takes the loss from 0.78 to about 0.4)."""
    cfg = make_config(data_dir, None, optim__method=method, optim__lr=LR[method]).resolve()
    model = build_model(cfg.model.name)
    tuned = prepare_tuning(model, cfg)
    from zojax.tasks import get_task

    task = get_task("sst2")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    data = TrainBatches(task, sp.train.examples, model.tokenizer, 16, 0)
    tx = build_optimizer(cfg)
    step = build_step(tuned, training_loss(task.objective), tx, is_zo(method))
    exact = jax.jit(lambda p, b: task_loss(tuned.template, task.objective, b)(p))
    fixed = data.batch(0)
    params = jax.tree.map(jnp.copy, tuned.params)
    state = tx.init(params)
    before = float(exact(params, fixed))
    losses = []
    for t in range(60):
        params, state, stats = step(params, state, None, data.batch(t))
        losses.append(float(stats["loss"]))
    after = float(exact(params, fixed))
    assert np.all(np.isfinite(losses))
    assert after < before - 0.15, (method, before, after)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, (method, losses)


# ---------------------------------------------------------------------- pieces
def test_objective_matches_the_task_code(data_dir: Path) -> None:
    from zojax.perturb import Direction, key_data, perturb
    from zojax.tasks import get_task, objective_for

    model = build_model("random:tiny")
    task = get_task("sst2")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    batch = TrainBatches(task, sp.train.examples, model.tokenizer, 4, 0).batch(3)
    d = Direction.single(key_data(7))

    @jax.jit
    def values(p):
        ours, ref = task_loss(model, task.objective, batch), objective_for(task)
        return (
            (ours(p), ref(model.logits, p, batch)),  # ours from token_logprobs, theirs from logits
            (ours.perturbed(p, d, 1e-2), ref(model.logits, perturb(p, d, 1e-2), batch)),
        )

    (a, b), (fly, mat) = values(model.params)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    np.testing.assert_allclose(float(fly), float(mat), rtol=1e-4)


class ColonTemplate(SST2Template):
    """SST-2 with one-byte options ("...It was:+" / "...It was:-"), so that the byte tokenizer
    gives single-token candidates, as SmolLM2's does for " great" / " terrible"."""

    def encode(self, ex):
        return f"{ex.data['sentence'].strip()} It was:"

    def verbalize(self, ex, candidate):
        return f"{ex.data['sentence'].strip()} It was:{'+' if candidate else '-'}"


@pytest.mark.parametrize("tuning", ["full", "lora", "prefix"])
def test_shared_prompt_batches_give_the_same_loss(tuning: str, data_dir: Path) -> None:
    from zojax.perturb import Direction, key_data
    from zojax.tasks import get_task

    task = get_task("sst2").with_template(ColonTemplate())
    model = build_model("random:tiny")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    shared = TrainBatches(task, sp.train.examples, model.tokenizer, 6, 0)
    general = TrainBatches(task, sp.train.examples, model.tokenizer, 6, 0, share_prompts=False)
    assert shared.shared_prompt and not general.shared_prompt
    a, b = shared.batch(2), general.batch(2)
    assert a["input_ids"].shape == (6, shared.seq_len) and b["input_ids"].shape[:2] == (6, 2)
    cfg = make_config(data_dir, None, model__tuning=tuning).resolve()
    tuned = prepare_tuning(model, cfg)
    lm = tuned.bind(tuned.frozen)
    d = Direction.single(key_data(3))

    @jax.jit
    def values(p):
        la, lb = task_loss(lm, "classification", a), task_loss(lm, "classification", b)
        if tuning != "full":  # (the adapters' on-the-fly perturbation is the models' business)
            return jnp.stack([la(p)]), jnp.stack([lb(p)])
        return jnp.stack([la(p), la.perturbed(p, d, 0.05)]), jnp.stack([lb(p), lb.perturbed(p, d, 0.05)])

    shared_values, general_values = values(tuned.params)
    np.testing.assert_allclose(np.asarray(shared_values), np.asarray(general_values), rtol=1e-5)
    # the byte tokenizer's " great" / " terrible" are several tokens: the general layout is used
    plain = TrainBatches(get_task("sst2"), sp.train.examples, model.tokenizer, 6, 0)
    assert not plain.shared_prompt


def test_data_order_is_a_pure_function_of_seed_and_step() -> None:
    a = np.concatenate([step_indices(3, t, 5, 12) for t in range(12)])
    b = np.concatenate([step_indices(3, t, 5, 12) for t in reversed(range(12))][::-1])
    np.testing.assert_array_equal(a, b)
    for e in range(5):  # every epoch is a permutation
        assert sorted(a[12 * e : 12 * (e + 1)]) == list(range(12))
    assert not np.array_equal(step_indices(3, 0, 5, 12), step_indices(4, 0, 5, 12))


def test_event_file_format(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    log.log_config({"optim": {"method": "mezo"}})  # a text summary, not a scalar
    log.log({"event": "train", "step": 1, "forwards": 6, "loss": 0.5, "note": "x"})
    off = log.offsets()
    log.log({"event": "train", "step": 2, "forwards": 12, "loss": 0.25})
    log.close()
    events = tb_scalars(tmp_path)
    assert events == [
        (1, {"train/loss": 0.5}),
        (6, {"train_by_forwards/loss": 0.5}),
        (2, {"train/loss": 0.25}),
        (12, {"train_by_forwards/loss": 0.25}),
    ]
    log = MetricsLogger(tmp_path, off)  # a resume truncates both logs to the checkpoint
    log.log({"event": "train", "step": 2, "forwards": 12, "loss": 0.125})  # into a second event file
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert tb_scalars(tmp_path) == [*events[:2], (2, {"train/loss": 0.125}), (12, {"train_by_forwards/loss": 0.125})]
    assert len(list((tmp_path / "tb").iterdir())) == 2
    MetricsLogger(tmp_path, off).close()  # resuming from the first checkpoint again drops what followed it
    assert tb_scalars(tmp_path) == events[:2]


@pytest.mark.parametrize("tuning", ["lora", "prefix"])
def test_parameter_efficient_tuning_runs(tuning: str, data_dir: Path, xla_cache, tmp_path: Path) -> None:
    cfg = make_config(
        data_dir,
        tmp_path / tuning,
        model__tuning=tuning,
        optim__lr=None,
        optim__eps=None,
        optim__steps=3,
        eval__eval_every=0,
        data__num_test=0,
    )
    report = Trainer(cfg, log=quiet).run()
    assert report["status"] == "done" and report["dev_after"] is not None
    train = [r for r in read_metrics(tmp_path / tuning / "metrics.jsonl") if r["event"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["loss"]) for r in train)
    saved = json.loads((tmp_path / tuning / "config.json").read_text())["config"]
    assert saved["optim"]["lr"] == {"lora": 1e-4, "prefix": 1e-2}[tuning]


def test_prefix_tuning_on_a_generation_task(
    capsys: pytest.CaptureFixture[str], xla_cache, tmp_path: Path
) -> None:
    """--tuning prefix on SQuAD: a dry run, then 2 steps with dev/test F1 by prefix-tuned greedy
    generation (KV cache holding the prefix)."""
    paras = [
        {"context": f"Ctx {i} is here.", "qas": [{"id": f"id{i}", "question": f"What is {i}?",
         "answers": [{"text": f"Ctx {i}", "answer_start": 0}]}]}
        for i in range(24)
    ]  # fmt: skip
    (tmp_path / "SQuAD").mkdir()
    data = {"version": "1.1", "data": [{"title": "Art", "paragraphs": paras}]}
    (tmp_path / "SQuAD" / "dev-v1.1.json").write_text(json.dumps(data))
    argv = ["finetune", "--model", "random:tiny", "--tuning", "prefix", "--task", "squad",
            "--data-dir", str(tmp_path), "--num-train", "8", "--num-dev", "4", "--num-test", "4",
            "--method", "mezo", "--steps", "2", "--batch-size", "4", "--max-new-tokens", "4",
            "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *argv, "--dry-run")
    assert code == 0 and "dry run OK: mezo on squad, 2 steps x 2 forwards" in out, err
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["status"] == "done" and report["tuning"] == "prefix"
    assert report["test"]["metric"] == "f1" and report["test"]["n"] == 4
    assert report["dev_after"]["step"] == 2 and 0 <= report["dev_after"]["value"] <= 1
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    assert len(train) == 2 and all(np.isfinite(r["loss"]) for r in train)


@pytest.mark.parametrize("method", ["zero-shot", "icl"])
def test_evaluation_only_methods(method: str, data_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(data_dir, tmp_path / method, optim__method=method, eval__num_demos=2)
    report = Trainer(cfg, log=quiet).run()
    assert report["status"] == "done" and report["steps"] == 0
    assert report["test"]["n"] == 8 and 0 <= report["test"]["value"] <= 1


def test_plot(baseline: Path, tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    cmd = [sys.executable, str(REPO / "experiments" / "plot.py"), str(baseline), str(baseline),
           "--labels", "a,b", "--out", str(png)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- the CLI
def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    from zojax.registry import METHODS

    code, out, _ = run_cli(capsys, "finetune", "--help")
    assert code == 0
    for name in [*METHODS, "ft", "zero-shot", "icl"]:
        assert name in out
    for flag in ["--forward-budget", "--resume", "--tuning", "--elite-ratio", "--dry-run"]:
        assert flag in out
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and all(name in out for name in METHODS) and "6 fwd/step" in out
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "finetune" in out


def test_dry_run(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "never"
    code, out, _ = run_cli(
        capsys, "finetune", "--model", "random:tiny", "--data-dir", str(data_dir),
        "--forward-budget", "100",
        "--num-candidates", "3", "--out", str(out_dir), "--dry-run",
    )  # fmt: skip
    assert code == 0, out
    assert "dry run OK: mezo-gv on sst2, 20 steps x 5 forwards = 100 forward passes" in out
    plan = json.loads(out[: out.rindex("}") + 1])
    assert plan["config"]["optim"]["lr"] == 3e-5 and plan["config"]["optim"]["eps"] == 1e-3
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "adam"], "--method: invalid choice 'adam'"),
        (["--tuning", "qlora"], "--tuning"),
        (["--steps", "10", "--forward-budget", "10"], "not allowed with argument"),
        (["--forward-budget", "5"], "--forward-budget: 5 forward passes buy no step"),
        (["--steps", "0"], "--steps: expected an integer >= 1"),
        (["--batch-size", "0"], "--batch-size"),
        (["--eps", "0"], "--eps: the perturbation scale must be > 0"),
        (["--lr", "nan"], "--lr"),
        (["--num-candidates", "1"], "--num-candidates"),
        (["--elite-ratio", "0.1"], "--elite-ratio"),
        (["--task", "imdb"], "--task: unknown task 'imdb'"),
        (["--resume"], "--resume: give the run directory with --out"),
        (["--model", "/no/such/model", "--dry-run"], "--model"),
        (["--lr", "fast"], "argument --lr: invalid float value"),
        (["--steps", "ten"], "argument --steps: invalid int value"),
    ],
)
def test_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, "finetune", *argv)
    assert code == 2
    assert message in err, err


def test_existing_run_needs_resume(
    capsys: pytest.CaptureFixture[str], baseline: Path, tmp_path: Path, data_dir: Path, xla_cache
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


def test_tasks_subcommand(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "tasks", "--data-dir", str(data_dir), "--source", "local")
    assert code == 0 and "sst2" in out and "MISSING" in out


def test_finetune_main_is_the_experiments_script(capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "experiments" / "finetune.py").read_text()
    assert "finetune_main" in text
    with pytest.raises(SystemExit):
        finetune_main(["--help"])
    assert "--forward-budget" in capsys.readouterr().out
