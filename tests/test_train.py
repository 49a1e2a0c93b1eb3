"""The fine-tuning job's pieces on a tiny random Llama with fixture SST-2 data.

* the loss goes down on an easy task for every method (mezo, nspsa, mezo-gv, mezo-greedy, mezo-centred, ft);
* the training objective equals the task code's, shared-prompt batches give the same loss, the data
  order is a pure function of (seed, step); LoRA and prefix tuning run (also on a generation task);
  the evaluation-only methods.

Resume and logs: :mod:`tests.test_train_resume`; the command line: :mod:`tests.test_cli_finetune`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._trainer import LR, ColonTemplate, make_config, quiet, run_cli
from zojax.train import (
    TrainBatches,
    Trainer,
    build_model,
    build_optimizer,
    build_step,
    prepare_tuning,
    read_metrics,
    step_indices,
    task_loss,
    training_loss,
)
from zojax.train.config import is_zo


# ---------------------------------------------------------------------- the loss goes down
@pytest.mark.parametrize("method", ["mezo", "nspsa", "mezo-gv", "mezo-greedy", "mezo-centred", "ft"])
def test_loss_decreases_on_an_easy_task(method: str, data_dir: Path) -> None:
    """Exact loss on the fixed batch of all 16 training examples, before vs after 60 steps, and
    the mean of the first vs last 10 per-step losses (all seeds fixed; at these learning rates
    MeZO takes the loss from 0.78 to about 0.4)."""
    cfg = make_config(data_dir, None, optim__method=method, optim__lr=LR[method]).resolve()
    model, params = build_model(cfg.model.name)
    tuned = prepare_tuning(model, params, cfg)
    from zojax.tasks import get_task

    task = get_task("sst2")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    data = TrainBatches(task, sp.train.examples, model.tokenizer, 16, 0)
    tx = build_optimizer(cfg)
    step = build_step(tuned, training_loss(task.objective), tx, is_zo(method))
    exact = jax.jit(lambda p, b: task_loss(tuned.lm, task.objective, b)(p))
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

    model, params = build_model("random:tiny")
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

    (a, b), (fly, mat) = values(params)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    np.testing.assert_allclose(float(fly), float(mat), rtol=1e-4)


@pytest.mark.parametrize("tuning", ["full", "lora", "prefix"])
def test_shared_prompt_batches_give_the_same_loss(tuning: str, data_dir: Path) -> None:
    from zojax.perturb import Direction, key_data
    from zojax.tasks import get_task

    task = get_task("sst2").with_template(ColonTemplate())
    model, params = build_model("random:tiny")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    shared = TrainBatches(task, sp.train.examples, model.tokenizer, 6, 0)
    general = TrainBatches(task, sp.train.examples, model.tokenizer, 6, 0, share_prompts=False)
    assert shared.shared_prompt and not general.shared_prompt
    a, b = shared.batch(2), general.batch(2)
    assert a["input_ids"].shape == (6, shared.seq_len) and b["input_ids"].shape[:2] == (6, 2)
    cfg = make_config(data_dir, None, model__tuning=tuning).resolve()
    tuned = prepare_tuning(model, params, cfg)
    lm, frozen = tuned.lm, tuned.frozen
    d = Direction.single(key_data(3))

    @jax.jit
    def values(p):
        la, lb = task_loss(lm, "classification", a, frozen), task_loss(lm, "classification", b, frozen)
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


@pytest.mark.parametrize("tuning", ["lora", "prefix"])
def test_parameter_efficient_tuning_runs(tuning: str, data_dir: Path, tmp_path: Path) -> None:
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


def test_prefix_tuning_on_a_generation_task(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
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
