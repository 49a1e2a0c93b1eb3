"""``--objective accuracy|f1``: training on the metric itself (MeZO's non-differentiable objective)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tests._trainer import ColonTemplate, make_config, run_cli
from zojax.perturb import Direction, key_data, perturb
from zojax.tasks import get_task
from zojax.tasks.metrics import f1_score
from zojax.tasks.scoring import candidate_scores_from_logprobs, negative_accuracy
from zojax.train import TrainBatches, build_model, build_optimizer, build_step, prepare_tuning, training_loss
from zojax.train.metric_loss import F1Scorer, greedy_tokens


def _squad_dir(root: Path, n: int = 24) -> Path:
    paras = [
        {"context": f"Ctx {i} is here.", "qas": [{"id": f"id{i}", "question": f"What is {i}?",
         "answers": [{"text": f"Ctx {i}", "answer_start": 0}]}]}
        for i in range(n)
    ]  # fmt: skip
    (root / "SQuAD").mkdir(parents=True)
    doc = {"version": "1.1", "data": [{"title": "Art", "paragraphs": paras}]}
    (root / "SQuAD" / "dev-v1.1.json").write_text(json.dumps(doc))
    return root


def _accuracy(model, params, batch) -> float:
    """Accuracy of a candidate batch by plain numpy argmax over the candidates' mean log-probs."""
    b, c, t = batch["input_ids"].shape
    lp = model.token_logprobs(params, batch["input_ids"].reshape(b * c, t), batch["attention_mask"].reshape(b * c, t))
    scores = np.array(candidate_scores_from_logprobs(lp, batch))
    scores[batch["candidate_mask"] == 0] = -np.inf
    return float(np.mean(batch["gold_mask"][np.arange(b), scores.argmax(-1)]))


def test_negative_accuracy_is_minus_the_accuracy(data_dir: Path) -> None:
    model, params = build_model("random:tiny")
    task = get_task("sst2")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    batch = TrainBatches(task, sp.train.examples, model.tokenizer, 16, 0, objective="accuracy").batch(0)
    loss = training_loss("accuracy")(model, batch, None)
    value = float(jax.jit(loss)(params))
    assert value == -_accuracy(model, params, batch)
    assert value * 16 == round(value * 16)  # a count of correct examples, not a smooth surrogate
    # masked candidates never win, ReCoRD-style multiple golds count
    scores = jnp.array([[0.0, 5.0, 1.0], [3.0, 2.0, 1.0]])
    toy = {"candidate_mask": np.array([[1, 0, 1], [1, 1, 1]]), "gold_mask": np.array([[0, 1, 1], [0, 1, 1]])}
    assert float(negative_accuracy(scores, toy)) == -0.5


def test_accuracy_on_shared_prompts_equals_the_candidate_layout(data_dir: Path) -> None:
    task = get_task("sst2").with_template(ColonTemplate())
    model, params = build_model("random:tiny")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    shared = TrainBatches(task, sp.train.examples, model.tokenizer, 8, 0, objective="accuracy")
    general = TrainBatches(task, sp.train.examples, model.tokenizer, 8, 0, share_prompts=False, objective="accuracy")
    assert shared.shared_prompt and not general.shared_prompt
    d = Direction.single(key_data(5))
    loss_of = training_loss("accuracy")
    for step in range(3):
        a, b = loss_of(model, shared.batch(step), None), loss_of(model, general.batch(step), None)
        assert float(a(params)) == float(b(params))
        assert float(a.perturbed(params, d, 0.5)) == float(b.perturbed(params, d, 0.5))


def test_accuracy_objective_raises_the_training_accuracy(data_dir: Path) -> None:
    """MeZO on minus the accuracy of each batch of the easy task (every training review positive):
    the accuracy on all 16 training examples goes from the random model's to above it.

    The estimate is nonzero only on steps where a prediction flips between θ ± εz, so ε is large
    (0.05) and the learning rate is the loss scale's (accuracy differences of 1/16)."""
    cfg = make_config(data_dir, None, optim__objective="accuracy", optim__lr=2e-2, optim__eps=5e-2).resolve()
    assert cfg.eval.select_by == "metric"
    model, params = build_model(cfg.model.name)
    tuned = prepare_tuning(model, params, cfg)
    task = get_task("sst2")
    sp = task.splits(seed=0, num_train=16, num_dev=8, num_test=8, data_dir=data_dir)
    data = TrainBatches(task, sp.train.examples, model.tokenizer, 8, 0, objective="accuracy")
    tx = build_optimizer(cfg)
    step = build_step(tuned, training_loss("accuracy"), tx, True)
    everything = TrainBatches(task, sp.train.examples, model.tokenizer, 16, 0, objective="accuracy").batch(0)
    params = jax.tree.map(jnp.copy, tuned.params)
    before = _accuracy(model, params, everything)
    state = tx.init(params)
    nonzero = 0
    for t in range(40):
        params, state, stats = step(params, state, None, data.batch(t))
        nonzero += float(stats["projected_grad"]) != 0.0
    after = _accuracy(model, params, everything)
    assert nonzero > 0
    assert before <= 0.75 and after >= before + 0.25, (before, after, nonzero)


def test_greedy_tokens_match_cached_generation_and_the_perturbed_copy() -> None:
    """The cacheless fixed-step decode inside the loss gives Model.generate's tokens (KV cache),
    and with a perturbation those of the materialised ``θ + s·v``."""
    model, params = build_model("random:tiny")
    prompts = [model.encode("What is 3?"), model.encode("Hello there, friend")]
    t = max(map(len, prompts))
    ids = np.full((2, t), 257, np.int32)
    mask = np.zeros((2, t), np.int32)
    for i, p in enumerate(prompts):
        ids[i, t - len(p) :], mask[i, t - len(p) :] = p, 1
    decode = jax.jit(lambda p, pert=None: greedy_tokens(model, p, ids, mask, 6, 257, perturbation=pert))
    got = np.asarray(decode(params))
    for i, p in enumerate(prompts):
        want = model.generate(params, p, max_new_tokens=6, stop_ids=[], stop_strings=())
        assert list(got[i]) == list(want)
    d = Direction.single(key_data(11))
    fly = np.asarray(jax.jit(lambda p: greedy_tokens(model, p, ids, mask, 6, 257, perturbation=(d, 0.5)))(params))
    np.testing.assert_array_equal(fly, np.asarray(decode(perturb(params, d, 0.5))))
    assert not np.array_equal(fly, got)  # the perturbation changed the answers


def test_f1_scorer_cuts_at_the_stop_and_scores_like_evaluation() -> None:
    from zojax.tasks.base import Example
    from zojax.train.data import ByteTokenizer

    tok = ByteTokenizer()
    exs = [Example("a", {}, answers=("the cat",)), Example("b", {}, answers=("dog", "a dog"))]
    scorer = F1Scorer(exs, tok)
    rows = np.array([list(b"cat\nxx"), [*list(b"a dog"), tok.eos_id]], np.int32)
    f1 = scorer(rows, np.array([0, 1]))
    np.testing.assert_allclose(f1, [f1_score("cat", ["the cat"]), 1.0])
    assert scorer.text([*list(b"zz"), tok.eos_id, *list(b"dog")]) == "zz"
    loss = jax.jit(lambda r: scorer.negative_f1(r, {"example_index": np.array([0, 1])}))(rows)
    np.testing.assert_allclose(float(loss), -np.mean(f1), rtol=1e-6)


def test_f1_objective_through_the_cli(capsys, tmp_path: Path) -> None:
    """--objective f1 on a SQuAD-shaped task: the training loss is minus the F1 of the batch's greedy
    answers (in [−1, 0]), selection uses dev F1; a wrong pairing of objective and task is one line."""
    _squad_dir(tmp_path)
    argv = ["finetune", "--model", "random:tiny", "--task", "squad", "--data-dir", str(tmp_path),
            "--num-train", "8", "--num-dev", "4", "--num-test", "4", "--method", "mezo", "--steps", "2",
            "--batch-size", "4", "--max-new-tokens", "3", "--objective", "f1", "--no-progress"]  # fmt: skip
    code, _out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "run"))
    assert code == 0, err
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["optim"]["objective"] == "f1" and config["eval"]["select_by"] == "metric"
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in train if r["event"] == "train"]
    assert len(losses) == 2 and all(-1.0 <= v <= 0.0 for v in losses)
    code, _out, err = run_cli(capsys, *argv[:-1], "--objective", "accuracy", "--dry-run")
    assert code == 2 and "--objective accuracy: squad has no candidates" in err
    code, _out, err = run_cli(capsys, *argv[:-1], "--method", "ft", "--dry-run")
    assert code == 2 and "--objective f1: not differentiable" in err
