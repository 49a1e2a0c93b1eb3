"""Templates render fixed examples to MeZO's exact strings; tokenisation/ICL/truncation rules."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import TOK
from zojax.tasks import (
    Encoded,
    Example,
    encode_candidates,
    encode_generation_prompt,
    encode_gold,
    get_task,
    truncate_keep_bos,
)
from zojax.tasks.encode import left_pad, render_demos

BOS, PAD = TOK.bos_id, TOK.pad_id


def ex(task: str, row: dict, i: int = 0) -> Example:
    return get_task(task).build(row, i)


SST2 = {"sentence": "a charming journey . ", "label": 1, "idx": 3}
RTE = {"premise": "Dogs bark.", "hypothesis": "Dogs make noise.", "label": 0, "idx": 0}
CB = {"premise": "It rained.", "hypothesis": "It was wet.", "label": 2, "idx": 0}
BOOLQ = {"passage": "Water is wet.", "question": "is water wet", "label": 1, "idx": 0}
WSC = {
    "text": "Tom hit Bob because he was mad.",
    "span1_index": 0,
    "span2_index": 4,
    "span1_text": "Tom",
    "span2_text": "He",
    "label": 1,
    "idx": 0,
}
WIC = {"word": "bank", "sentence1": "River bank.", "sentence2": "Bank account.", "label": 0, "idx": 0}
MULTIRC = {
    "paragraph": "P.",
    "question": "Q?",
    "answer": "A",
    "label": 1,
    "idx": {"paragraph": 0, "question": 1, "answer": 2},
}
COPA = {
    "premise": "The man broke his toe.",
    "choice1": "He dropped a hammer on his foot.",
    "choice2": "I got a hole in my sock.",
    "question": "cause",
    "label": 0,
    "idx": 0,
}
RECORD = {
    "passage": "Obama met Merkel.\n@highlight\nTalks held",
    "query": "@placeholder spoke",
    "entities": ["Merkel", "Obama"],
    "answers": ["Obama"],
    "idx": {"passage": 0, "query": 0},
}
SQUAD = {
    "id": "x1",
    "title": "Paris",
    "context": "Paris is in France.",
    "question": " Where is Paris? ",
    "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
}
DROP = {
    "query_id": "q1",
    "passage": "He scored 3 goals.",
    "question": "How many goals?",
    "answers_spans": {"spans": ["3"], "types": ["number"]},
}

# (task, row, expected encode(), expected verbalize(gold))
CASES = [
    ("sst2", SST2, "a charming journey . It was", "a charming journey . It was great"),
    (
        "rte",
        RTE,
        'Dogs bark.\nDoes this mean that "Dogs make noise." is true? Yes or No?\n',
        'Dogs bark.\nDoes this mean that "Dogs make noise." is true? Yes or No?\nYes',
    ),
    (
        "cb",
        CB,
        'Suppose It rained. Can we infer that "It was wet."? Yes, No, or Maybe?\n',
        'Suppose It rained. Can we infer that "It was wet."? Yes, No, or Maybe?\nMaybe',
    ),
    ("boolq", BOOLQ, "Water is wet. Is water wet?\n", "Water is wet. Is water wet?\nYes"),
    (
        "wsc",
        WSC,
        'Tom hit Bob because he was mad.\nIn the previous sentence, does the pronoun "he" refer to Tom? Yes or No?\n',
        "Tom hit Bob because he was mad.\nIn the previous sentence, "
        'does the pronoun "he" refer to Tom? Yes or No?\nYes',
    ),
    (
        "wic",
        WIC,
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nRiver bank.\nBank account.\n',
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nRiver bank.\nBank account.\nNo',
    ),
    (
        "multirc",
        MULTIRC,
        'P.\nQuestion: Q?\nI found this answer "A". Is that correct? Yes or No?\n',
        'P.\nQuestion: Q?\nI found this answer "A". Is that correct? Yes or No?\nYes',
    ),
    ("copa", COPA, "The man broke his toe because ", "The man broke his toe because he dropped a hammer on his foot."),
    (
        "record",
        RECORD,
        'Obama met Merkel.\n@highlight\nTalks held\n@placeholder spoke\nQuestion: what is the "@placeholder"\nAnswer:',
        "Obama met Merkel.\n@highlight\nTalks held\n"
        '@placeholder spoke\nQuestion: what is the "@placeholder"\nAnswer: Obama',
    ),
    (
        "squad",
        SQUAD,
        "Title: Paris\nContext: Paris is in France.\nQuestion: Where is Paris?\nAnswer:",
        "Title: Paris\nContext: Paris is in France.\nQuestion: Where is Paris?\nAnswer: France\n",
    ),
    (
        "drop",
        DROP,
        "Passage: He scored 3 goals.\nQuestion: How many goals?\nAnswer:",
        "Passage: He scored 3 goals.\nQuestion: How many goals?\nAnswer: 3\n",
    ),
]


@pytest.mark.parametrize(("task", "row", "prompt", "gold"), CASES, ids=[c[0] for c in CASES])
def test_template_renders_exact_strings(task: str, row: dict, prompt: str, gold: str) -> None:
    t = get_task(task)
    e = ex(task, row)
    assert t.template.encode(e) == prompt
    assert t.template.verbalize(e, e.correct_candidate) == gold


def test_all_candidates_and_verbalisers() -> None:
    sst = ex("sst2", SST2)
    t = get_task("sst2")
    assert [t.template.verbalize(sst, c)[-12:] for c in sst.candidates] == ["was terrible", "It was great"]
    rte = get_task("rte")
    assert [rte.template.verbalize(ex("rte", RTE), c)[-3:] for c in (0, 1)] == ["Yes", "\nNo"]
    assert ex("cb", CB).label == 2 and ex("boolq", BOOLQ).candidates == ("Yes", "No")
    assert ex("boolq", {**BOOLQ, "label": 0}).label == 1  # false -> "No"
    copa = get_task("copa")
    c = ex("copa", COPA)
    # "I ..." keeps its capital; other first words are lower-cased
    assert copa.template.verbalize(c, c.candidates[1]).endswith("because I got a hole in my sock.")
    eff = ex("copa", {**COPA, "question": "effect", "premise": "It rained"})
    assert copa.template.encode(eff) == "It rained so "
    gpt3 = get_task("record", template="gpt3")
    r = ex("record", RECORD)
    assert gpt3.template.verbalize(r, "Obama") == "Obama met Merkel.\n- Talks held\n- Obama spoke"


def test_option_tokens_are_the_candidate_with_leading_space() -> None:
    t = get_task("sst2")
    encs = encode_candidates(t, ex("sst2", SST2), TOK)
    for enc, word in zip(encs, (" terrible", " great"), strict=True):
        assert enc.ids[0] == BOS
        assert TOK.decode(enc.ids[-enc.option_len :]) == word
        assert TOK.decode(enc.ids) == "a charming journey . It was" + word
    # RTE: answer has no leading space, follows the "\n"
    encs = encode_candidates(get_task("rte"), ex("rte", RTE), TOK)
    assert [TOK.decode(e.ids[-e.option_len :]) for e in encs] == ["Yes", "No"]


def test_gold_and_generation_encodings() -> None:
    sq = get_task("squad")
    e = ex("squad", SQUAD)
    g = encode_gold(sq, e, TOK)
    assert TOK.decode(g.ids[-g.option_len :]) == " France\n"
    p = encode_generation_prompt(sq, e, TOK)
    assert TOK.decode(p).endswith("Answer:") and p[0] == BOS
    copa = get_task("copa")
    g = encode_gold(copa, ex("copa", COPA), TOK)
    # the prompt is .strip(" ")-ed (MeZO), so the option carries the leading space
    assert TOK.decode(g.ids[-g.option_len :]) == " he dropped a hammer on his foot."


def test_icl_prompt_format() -> None:
    t = get_task("sst2")
    demos = [ex("sst2", {"sentence": "bad .", "label": 0}), ex("sst2", {"sentence": "good .", "label": 1})]
    assert render_demos(t, demos) == "bad . It was terrible\n\ngood . It was great"
    enc = encode_candidates(t, ex("sst2", SST2), TOK, demos)
    assert TOK.decode(enc[1].ids) == (
        "bad . It was terrible\n\ngood . It was great\n\na charming journey . It was great"
    )
    assert TOK.decode(enc[1].ids[-enc[1].option_len :]) == " great"
    # generation ICL: demos keep their answer (trailing newline stripped), then the prompt
    sq = get_task("squad")
    p = encode_generation_prompt(sq, ex("squad", SQUAD), TOK, [ex("squad", SQUAD)])
    assert TOK.decode(p).count("Answer: France\n\nTitle: Paris") == 1


def test_truncation_keeps_bos_and_option() -> None:
    assert truncate_keep_bos([BOS, 1, 2, 3, 4, 5], 4, BOS) == [BOS, 3, 4, 5]
    assert truncate_keep_bos([9, 1, 2, 3], 2, BOS) == [2, 3]
    assert truncate_keep_bos([BOS, 1], 4, BOS) == [BOS, 1]
    t = get_task("sst2")
    long = ex("sst2", {"sentence": "x" * 500, "label": 1})
    enc = encode_candidates(t, long, TOK, max_length=64)[1]
    assert len(enc.ids) == 64 and enc.ids[0] == BOS
    assert TOK.decode(enc.ids[-enc.option_len :]) == " great"


def test_left_pad_layout() -> None:
    seqs = [Encoded([BOS, 10, 11, 12], 2), Encoded([BOS, 20], 1)]
    ids, mask, tm = left_pad(seqs, PAD, 6, BOS)
    np.testing.assert_array_equal(ids[1], [PAD, PAD, PAD, PAD, BOS, 20])
    np.testing.assert_array_equal(mask[0], [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(tm[0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(tm[1], [0, 0, 0, 0, 0, 1])
    assert ids.dtype == np.int32 and tm.dtype == np.float32
    ids, mask, _ = left_pad(seqs, PAD, 3, BOS)  # too long: truncated keeping BOS
    np.testing.assert_array_equal(ids[0], [BOS, 11, 12])
