"""Batched candidate scoring and objectives against brute-force references; F1 on known cases."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from tests.fakes import TOK, brute_force_option_score, tiny_logits_fn, tiny_params
from zojax.tasks import (
    classification_batch,
    classification_loss,
    encode_candidates,
    encode_gold,
    evaluate,
    exact_match,
    f1_score,
    get_task,
    icl_demo_sets,
    lm_batch,
    lm_loss,
    normalize_answer,
    objective_for,
    score_sequences,
    token_f1,
)

PARAMS = tiny_params(0)

SST = get_task("sst2")
COPA = get_task("copa")
REC = get_task("record")
SQUAD = get_task("squad")


def sst_examples() -> list:
    sents = ["good fun .", "a dull , lifeless film that drags on", "great", "meh ."]
    return [SST.build({"sentence": s, "label": i % 2, "idx": i}, i) for i, s in enumerate(sents)]


def record_examples() -> list:
    rows = [
        {
            "passage": "Ann met Bob in Rome.",
            "query": "@placeholder smiled",
            "entities": ["Ann", "Bob", "Rome"],
            "answers": ["Ann", "Bob"],
            "idx": {"p": 0, "q": 0},
        },
        {
            "passage": "Cy left.",
            "query": "@placeholder went",
            "entities": ["Cy", "Dee"],
            "answers": ["Dee"],
            "idx": {"p": 1, "q": 0},
        },
    ]
    return [REC.build(r, i) for i, r in enumerate(rows)]


def brute_scores(task, examples) -> list[list[float]]:
    out = []
    for e in examples:
        encs = encode_candidates(task, e, TOK)
        out.append([brute_force_option_score(PARAMS, x.ids, x.option_len) for x in encs])
    return out


def _squad_row(id_: str, title: str, context: str, question: str, texts: list[str], starts: list[int]) -> dict:
    """A SQuAD-format row."""
    return {"id": id_, "title": title, "context": context, "question": question,
            "answers": {"text": texts, "answer_start": starts}}  # fmt: skip


@pytest.mark.parametrize("which", ["sst2", "record"])
def test_batched_scoring_matches_brute_force(which: str) -> None:
    task, exs = (SST, sst_examples()) if which == "sst2" else (REC, record_examples())
    ref = brute_scores(task, exs)
    # evaluation path: rows of several examples sorted/bucketed/left-padded, tiny token budget so
    # several forward passes (and padding rows) are exercised
    res = evaluate(
        task, exs, TOK, logits_fn=tiny_logits_fn, params=PARAMS, token_budget=128, pad_to_multiple_of=16, progress=False
    )
    for got, want in zip(res.scores, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert res.predictions == [int(np.argmax(r)) for r in ref]
    acc = np.mean([p in e.gold for p, e in zip(res.predictions, exs, strict=True)])
    assert res.value == pytest.approx(acc)
    assert res.stats["forward_passes"] >= 2 and res.stats["tokens_per_s"] > 0


def test_record_any_gold_accuracy() -> None:
    exs = record_examples()
    assert exs[0].gold == (0, 1) and exs[1].gold == (1,)
    batch = classification_batch(REC, exs, TOK)
    assert batch["input_ids"].shape[:2] == (2, 3)
    np.testing.assert_array_equal(batch["candidate_mask"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(batch["gold_mask"], [[1, 1, 0], [0, 1, 0]])


def test_classification_loss_matches_reference_and_jits() -> None:
    exs = sst_examples()
    batch = classification_batch(SST, exs, TOK, pad_to_multiple_of=16)
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape[1] == 2
    assert batch["input_ids"].shape[2] % 16 == 0
    ref = np.asarray(brute_scores(SST, exs))
    logp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    want = -np.mean([logp[i, e.label] for i, e in enumerate(exs)])
    loss = classification_loss(tiny_logits_fn, PARAMS, batch)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    jitted = jax.jit(functools.partial(objective_for(SST), tiny_logits_fn))
    assert float(jitted(PARAMS, batch)) == pytest.approx(want, rel=1e-5)
    # a different parameter point gives a different loss (the objective really depends on params)
    assert abs(float(jitted(tiny_params(1), batch)) - want) > 1e-4


def test_padded_candidates_do_not_change_loss() -> None:
    exs = sst_examples()
    b2 = classification_batch(SST, exs, TOK)
    t = b2["input_ids"].shape[-1] + 8
    b4 = classification_batch(SST, exs, TOK, num_candidates=4, seq_len=t)
    assert b4["input_ids"].shape[1] == 4
    l2 = float(classification_loss(tiny_logits_fn, PARAMS, b2))
    l4 = float(classification_loss(tiny_logits_fn, PARAMS, b4))
    assert l4 == pytest.approx(l2, rel=1e-5)
    g = jax.jit(jax.grad(lambda p: classification_loss(tiny_logits_fn, p, b4)))(PARAMS)
    assert all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree_util.tree_leaves(g))


def test_lm_loss_is_mean_answer_token_nll() -> None:
    rows = [
        _squad_row("a", "T", "C is 1.", "What is C?", ["1"], [5]),
        _squad_row("b", "U", "D is two.", "What is D?", ["two", "2"], [5, 5]),
    ]
    exs = [SQUAD.build(r, i) for i, r in enumerate(rows)]
    batch = lm_batch(SQUAD, exs, TOK)
    assert objective_for(SQUAD) is lm_loss
    # reference: per-token NLL of " 1\n" and " two\n", averaged over all answer tokens
    nll, count = 0.0, 0
    for e in exs:
        g = encode_gold(SQUAD, e, TOK)
        assert TOK.decode(g.ids[-g.option_len :]) == f" {e.answers[0]}\n"
        nll += -brute_force_option_score(PARAMS, g.ids, g.option_len) * g.option_len
        count += g.option_len
    assert float(lm_loss(tiny_logits_fn, PARAMS, batch)) == pytest.approx(nll / count, rel=1e-5)
    np.testing.assert_array_equal(batch["target_mask"].sum(1), [3, 5])
    full = lm_batch(SQUAD, exs, TOK, only_option=False)
    assert (full["target_mask"].sum(1) == full["attention_mask"].sum(1) - 1).all()
    # COPA trains as LM on the gold candidate
    c = COPA.build(
        {
            "premise": "It rained.",
            "choice1": "The grass got wet.",
            "choice2": "I sang.",
            "question": "effect",
            "label": 0,
            "idx": 0,
        },
        0,
    )
    cb = lm_batch(COPA, [c], TOK)
    ids = cb["input_ids"][0][cb["target_mask"][0] > 0]
    assert TOK.decode(ids) == " the grass got wet."


def test_f1_known_cases() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert f1_score("the cat sat", ["A cat sat."]) == 1.0
    assert token_f1("cat", "cat sat") == pytest.approx(2 / 3)
    assert token_f1("cat sat on mat", "cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("dog", ["cat", "the dog"]) == 1.0  # max over golds
    assert f1_score("dog", ["cat"]) == 0.0
    assert f1_score("", ["cat"]) == 0.0
    assert token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # multiset overlap
    assert token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article, dropped
    assert exact_match("The Eiffel tower", ["eiffel tower"]) == 1.0
    assert exact_match("tower", ["eiffel tower"]) == 0.0


def fake_generate(answers: dict[str, str]):
    """generate_fn returning canned continuations keyed by the prompts' questions."""

    def gen(prompts: list[list[int]]) -> list[list[int]]:
        questions = [TOK.decode(p).rsplit("Question: ", 1)[1].split("\n")[0] for p in prompts]
        return [TOK.encode(answers[q], add_bos=False) for q in questions]

    return gen


def test_generation_eval() -> None:
    rows = [
        _squad_row("a", "T", "x", "Q1?", ["Paris"], [0]),
        _squad_row("b", "T", "y", "Q2?", ["big red dog"], [0]),
    ]
    exs = [SQUAD.build(r, i) for i, r in enumerate(rows)]
    gen = fake_generate({"Q1?": " Paris\nQuestion: junk", "Q2?": " red dog."})
    res = evaluate(SQUAD, exs, TOK, generate_fn=gen, progress=False)
    assert res.predictions == ["Paris", "red dog."]  # cut at "\n", stripped
    assert res.value == pytest.approx((1.0 + 0.8) / 2)


def test_generation_stop_rule_mezo_keeps_the_whole_continuation() -> None:
    """``stop_rule="mezo"``: MeZO decodes the whole continuation and only strips it (its
    generation stops at the exact newline id, so text after a merged ".\\n" token stays);
    ``"text"`` (default) keeps the first line."""
    rows = [
        {
            "id": "a",
            "title": "T",
            "context": "x",
            "question": "Q1?",
            "answers": {"text": ["Paris"], "answer_start": [0]},
        }
    ]
    exs = [SQUAD.build(r, i) for i, r in enumerate(rows)]
    gen = fake_generate({"Q1?": " Paris.\nQuestion: junk\n"})
    text = evaluate(SQUAD, exs, TOK, generate_fn=gen, progress=False)
    mezo = evaluate(SQUAD, exs, TOK, generate_fn=gen, progress=False, stop_rule="mezo")
    assert text.predictions == ["Paris."] and text.value == 1.0
    assert mezo.predictions == ["Paris.\nQuestion: junk"] and mezo.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="stop_rule"):
        evaluate(SQUAD, exs, TOK, generate_fn=gen, progress=False, stop_rule="newline")


def test_icl_demos_follow_mezo_and_change_the_prompt() -> None:
    pool = sst_examples() * 10
    sets = icl_demo_sets(pool, num_eval=3, num_demos=4)
    seeds = np.random.RandomState(0).randint(0, 10000, 3)
    want = [[pool[j] for j in np.random.RandomState(int(s)).permutation(len(pool))[:4]] for s in seeds]
    assert sets == want and icl_demo_sets(pool, 3, 4) == sets
    exs = sst_examples()[:3]
    zs = evaluate(SST, exs, TOK, logits_fn=tiny_logits_fn, params=PARAMS, progress=False)
    ic = evaluate(SST, exs, TOK, logits_fn=tiny_logits_fn, params=PARAMS, num_demos=4, demo_pool=pool, progress=False)
    assert ic.num_demos == 4 and zs.num_demos == 0
    assert not np.allclose(ic.scores, zs.scores)
    # ICL sequences really contain the demonstrations
    enc = encode_candidates(SST, exs[0], TOK, sets[0])
    assert TOK.decode(enc[0].ids).count("\n\n") == 4


def test_score_sequences_order_independent() -> None:
    encs = [x for e in sst_examples() for x in encode_candidates(SST, e, TOK)]
    a, _ = score_sequences(tiny_logits_fn, PARAMS, TOK, encs, token_budget=64)
    b, _ = score_sequences(tiny_logits_fn, PARAMS, TOK, encs[::-1], token_budget=10_000)
    np.testing.assert_allclose(a, b[::-1], rtol=1e-5, atol=1e-5)
