"""The protocol fixes an honest comparison needs (issue 12, part 0), each with a test that fails
without its fix:

* selection: the untrained step-0 parameters are never chosen unless asked, ties go to the later
  step, and MeZO's rule (dev loss of the training objective; LM loss on the gold answer for
  ``lm`` tasks) is the default;
* split sizes: ``--num-dev 500`` leaves a training set for every task, and ``--protocol mezo``
  gives MeZO's sizes;
* the full-tuning default learning rate (tuned at 150 forward passes) is refused for long runs;
* a stop inside the dev objective of an ``lm`` task stops between its batches and the resume
  repeats that evaluation;
* ``--forward-budget`` runs for real (not only in ``--dry-run``), ``--stop-after`` is per
  invocation, and a time-based checkpoint is written by default.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from zojax.cli import config_from_args, finetune_main
from zojax.tasks import TASKS, get_task
from zojax.tasks.sampling import split_train_dev
from zojax.train import TrainBatches, TrainConfig, Trainer, build_model, read_metrics, strip_timing, task_loss
from zojax.train.config import DEFAULT_LR_MAX_FORWARDS
from zojax.train.evaluation import BestTracker, DevObjective, jitted_objective_sums

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------------- selection
def test_step0_is_never_best_unless_asked() -> None:
    t = BestTracker("loss")
    assert not t.offer(0, 0.1, "accuracy", 0.9)  # the untrained parameters, however good
    assert t.offer(5, 0.5, "accuracy", 0.6) and t.best["step"] == 5
    asked = BestTracker("loss", select_initial=True)
    assert asked.offer(0, 0.1, "accuracy", 0.9) and asked.best["step"] == 0


@pytest.mark.parametrize("select_by, values", [("loss", [0.7, 0.5, 0.5, 0.6]), ("metric", [0.6, 0.8, 0.8, 0.7])])
def test_ties_go_to_the_later_step(select_by: str, values: list[float]) -> None:
    t = BestTracker(select_by)
    for step, v in zip((10, 20, 30, 40), values, strict=True):
        t.offer(step, v, "accuracy", v)
    assert t.best["step"] == 30  # steps 20 and 30 tie; 40 is worse


def test_nan_is_never_best() -> None:
    t = BestTracker("loss")
    assert not t.offer(3, math.nan, "accuracy", 0.5)
    assert t.offer(4, 1.0, "accuracy", 0.5)
    assert not t.offer(5, math.nan, "accuracy", 0.5) and t.best["step"] == 4


def _fixture_data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "SST-2").mkdir(parents=True)
    rows = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} film number {i}\t{i % 2}" for i in range(48)]
    (d / "SST-2" / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "SST-2" / "dev.tsv").write_text("\n".join(rows[:17]) + "\n")
    (d / "COPA").mkdir()
    copa = [
        {"premise": f"The man dropped glass {i}.", "choice1": "It broke.", "choice2": "It sang.",
         "question": "effect", "label": 0, "idx": i}
        for i in range(40)
    ]  # fmt: skip
    (d / "COPA" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in copa) + "\n")
    (d / "COPA" / "val.jsonl").write_text("\n".join(json.dumps(r) for r in copa[:10]) + "\n")
    return d


def _tiny_config(data_dir: Path, out: Path, **over) -> TrainConfig:
    c = TrainConfig()
    c.model.name = "random:tiny"
    c.data.data_dir = str(data_dir)
    c.data.num_train, c.data.num_dev, c.data.num_test = 16, 8, 8
    c.optim.method, c.optim.lr, c.optim.steps, c.optim.batch_size = "mezo", 0.0, 4, 4
    c.eval.eval_every = 2
    c.run.out, c.run.progress = str(out), False
    for k, v in over.items():
        sec, field = k.split("__")
        setattr(getattr(c, sec), field, v)
    return c


def test_a_trained_run_never_tests_the_initial_parameters(tmp_path: Path) -> None:
    # lr = 0: every dev evaluation is identical, so the old rule (strictly better, step 0 allowed)
    # kept step 0; the fixed rule tests the last step
    res = Trainer(_tiny_config(_fixture_data(tmp_path), tmp_path / "run"), log=lambda m: None).run()
    assert res["selected_step"] == 4 and res["best"]["step"] == 4
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "eval"]  # fmt: skip
    assert [r["step"] for r in evals] == [0, 2, 4] and len({r["dev_loss"] for r in evals}) == 1


def test_mezo_rule_is_the_default_and_uses_the_training_objective_on_lm_tasks(tmp_path: Path) -> None:
    assert TrainConfig().resolve().eval.select_by == "loss"
    data = _fixture_data(tmp_path)
    cfg = _tiny_config(data, tmp_path / "run", data__task="copa", optim__steps=2)
    trainer = Trainer(cfg, log=lambda m: None)
    trainer.run()
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "eval"]  # fmt: skip
    # the dev loss is the LM loss on the gold answers of the whole dev split, as one batch
    model, params = build_model("random:tiny")
    task = get_task("copa")
    dev = trainer.splits.dev.examples
    one = TrainBatches(task, dev, model.tokenizer, len(dev), 0).batch_of(dev)
    expected = float(task_loss(model, "lm", one)(params))
    assert evals[0]["dev_loss"] == pytest.approx(expected, rel=1e-5)
    assert "dev_choice_loss" in evals[0] and evals[0]["dev_choice_loss"] != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("task_name", ["sst2", "copa"])
def test_dev_objective_does_not_depend_on_the_batch_size(task_name: str, tmp_path: Path) -> None:
    model, params = build_model("random:tiny")
    task = get_task(task_name)
    sp = task.splits(seed=0, num_train=16, num_dev=11, num_test=4, data_dir=_fixture_data(tmp_path))
    sums = jitted_objective_sums(model, task.objective)
    values = [DevObjective(task, sp.dev.examples, model.tokenizer, b)(sums, params, None) for b in (1, 4, 11)]
    np.testing.assert_allclose(values, values[0], rtol=1e-5)
    if task.objective == "classification":  # a mean over examples: the training loss of one full batch
        full = TrainBatches(task, sp.dev.examples, model.tokenizer, 11, 0).batch_of(sp.dev.examples)
        one_batch = float(task_loss(model, task.objective, full)(params))
        assert values[0] == pytest.approx(one_batch, rel=1e-5)


def test_a_stop_inside_the_lm_dev_objective_is_repeated_by_the_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPA (``lm`` objective): a SIGTERM that arrives while the dev objective's batches run (after
    the candidate-scoring passes) stops before its next batch; the resume repeats that dev
    evaluation, and the run equals an uninterrupted one (logs and results)."""
    data = _fixture_data(tmp_path)
    over = dict(data__task="copa", optim__lr=1e-3)  # 8 dev examples, batch 4: two objective batches
    quiet = lambda m: None
    reference = Trainer(_tiny_config(data, tmp_path / "reference", **over), log=quiet).run()
    assert reference["status"] == "done"

    out = tmp_path / "interrupted"
    trainer = Trainer(_tiny_config(data, out, **over), log=quiet)
    real, batches = DevObjective.__call__, []

    def stopping(self, sums_fn, params, frozen, should_stop=None):  # the step-2 dev objective, once
        if trainer.state.step != 2 or batches:
            return real(self, sums_fn, params, frozen, should_stop)
        assert len(self.batches) == 2

        def ask() -> bool:  # a SIGTERM lands during the first batch
            if batches:
                trainer.request_stop(signal.SIGTERM)
            return should_stop()

        return real(self, lambda *a: (batches.append(1), sums_fn(*a))[1], params, frozen, ask)

    monkeypatch.setattr(DevObjective, "__call__", stopping)
    first = trainer.run()
    monkeypatch.undo()
    assert first["status"] == "interrupted" and first["step"] == 2 and batches == [1]  # not both batches
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "eval"] == [0]
    again = Trainer(_tiny_config(data, out, run__resume=True, **over), log=quiet).run()
    assert again["status"] == "done"
    ref_logs, logs = (strip_timing(read_metrics(d / "metrics.jsonl")) for d in (tmp_path / "reference", out))
    assert logs == ref_logs and [r["step"] for r in logs if r["event"] == "eval"] == [0, 2, 4]
    for key in ("best", "selected_step", "test"):
        a, b = reference[key], again[key]
        assert (a if not isinstance(a, dict) else {k: v for k, v in a.items() if k != "eval_time"}) == (
            b if not isinstance(b, dict) else {k: v for k, v in b.items() if k != "eval_time"}
        )


# ---------------------------------------------------------------------- split sizes
def test_dev_larger_than_the_pool_leaves_a_train_set() -> None:
    tr, dv = split_train_dev(250, 0, 1000, 500)  # CB's train pool with --num-dev 500
    assert len(tr) == 125 and len(dv) == 125 and not set(tr) & set(dv)
    tr, dv = split_train_dev(554, 0, 1000, 500)  # WSC: MeZO's own 54 / 500
    assert len(tr) == 54 and len(dv) == 500


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data (present on CI)")
def test_num_dev_500_works_for_every_task_with_data() -> None:
    checked = 0
    for name, task in TASKS.items():
        try:
            sp = task.splits(seed=0, num_train=1000, num_dev=500, num_test=1000, data_dir=SHARED)
        except Exception as e:  # a task whose data is not offline
            assert "not found" in str(e).lower() or "missing" in str(e).lower(), (name, e)
            continue
        assert len(sp.train) > 0 and len(sp.dev) > 0, name
        checked += 1
    assert checked >= 10


def test_protocol_mezo_gives_mezo_sizes() -> None:
    for task, dev in (("sst2", 500), ("cb", 100), ("copa", 100), ("rte", 500)):
        c = config_from_args(["--protocol", "mezo", "--task", task])
        assert (c.data.num_train, c.data.num_dev, c.data.num_test) == (1000, dev, 1000)
        assert c.eval.eval_every == 1000 and c.eval.select_by == "loss"
    c = config_from_args(["--protocol", "mezo", "--num-dev", "50", "--eval-every", "10"])
    assert c.data.num_dev == 50 and c.eval.eval_every == 10  # explicit flags win
    q = config_from_args([])
    assert (q.data.num_train, q.data.num_dev, q.data.num_test, q.eval.eval_every) == (1000, 100, 200, 0)


# ---------------------------------------------------------------------- learning rates
def test_demo_learning_rate_is_not_used_for_long_runs() -> None:
    with pytest.raises(ValueError, match="--lr: required"):
        config_from_args(["--method", "mezo", "--forward-budget", "40000"])
    assert config_from_args(["--method", "mezo", "--forward-budget", str(DEFAULT_LR_MAX_FORWARDS)]).optim.lr == 3e-5
    assert config_from_args(["--method", "mezo", "--forward-budget", "40000", "--lr", "2e-7"]).optim.lr == 2e-7
    # LoRA's and prefix's defaults are the paper's own, fine at any budget
    assert config_from_args(["--tuning", "lora", "--forward-budget", "40000"]).optim.lr == 1e-4


# ---------------------------------------------------------------------- runs
def test_forward_budget_runs_and_stop_after_is_per_invocation(tmp_path: Path) -> None:
    data = _fixture_data(tmp_path)
    out = tmp_path / "run"
    argv = ["--model", "random:tiny", "--data-dir", str(data), "--num-train", "16", "--num-dev", "4",
            "--num-test", "4", "--method", "mezo", "--lr", "1e-3", "--batch-size", "4",
            "--forward-budget", "12", "--out", str(out), "--no-progress", "--checkpoint-every", "1"]  # fmt: skip
    assert finetune_main([*argv, "--stop-after", "2"]) == 0
    assert not (out / "results.json").exists()
    assert finetune_main(["--out", str(out), "--resume", "--no-progress"]) == 0  # not stopped again after 2
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "done" and res["steps"] == 6 and res["forwards"] == 12


def test_time_based_checkpoints_by_default(tmp_path: Path) -> None:
    assert TrainConfig().run.checkpoint_minutes > 0
    cfg = _tiny_config(
        _fixture_data(tmp_path), tmp_path / "run", run__checkpoint_minutes=1e-9, run__keep_checkpoints=10
    )
    Trainer(cfg, log=lambda m: None).run()
    steps = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps == [1, 2, 3, 4]  # every step exceeded the (tiny) interval; without it: only the last
    jax.clear_caches()
