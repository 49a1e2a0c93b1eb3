"""Loaders on ../shared/data (default lookup), fixture files in the official formats, hub path,
missing-data errors, and MeZO's sampling protocol (deterministic, disjoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import zojax.tasks.data as data_mod
from zojax.tasks import (
    TASKS,
    TaskDataMissingError,
    carve_from_validation,
    f1_score,
    get_task,
    mezo_subset,
    resolve_data_dir,
    split_train_dev,
)
from zojax.tasks.__main__ import main as list_main

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture
def default_lookup(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lookup CI uses: no env var, cwd = repo root -> <repo>/../shared/data."""
    monkeypatch.delenv("ZOJAX_DATA_DIR", raising=False)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
    data_mod.hub_reachable.cache_clear()
    d = resolve_data_dir()
    assert d is not None and d == SHARED, (
        f"benchmark data not found at {SHARED} (CI provides ../shared/data next to the repo)"
    )
    return d


# (task, train pool size, validation size, carved)
SIZES = [
    ("sst2", 67349, 872, False),
    ("rte", 2490, 277, False),
    ("cb", 250, 56, False),
    ("boolq", 1000, 3270, False),  # train_first1000.jsonl
    ("wsc", 554, 104, False),
    ("wic", 5428, 638, False),
    ("multirc", 27243, 4848, False),
    ("copa", 400, 100, False),
    ("squad", 10570 - 1000, 10570, True),
    ("drop", 3419, 1000, False),  # 3,420 train questions, one without an answer
]


@pytest.mark.parametrize(("name", "pool", "valid", "carved"), SIZES, ids=[s[0] for s in SIZES])
def test_shared_data_loads_with_mezo_sizes(
    default_lookup: Path, name: str, pool: int, valid: int, carved: bool
) -> None:
    task = get_task(name)
    s = task.splits(seed=0)
    m = s.meta
    assert m["source"] == f"local:{default_lookup / task.local.folder}"
    assert (m["train_pool_size"], m["validation_size"]) == (pool, valid)
    assert m["carved_from_validation"] is carved
    assert len(s.dev) == min(task.num_dev, pool) and len(s.test) == min(1000, valid)
    assert len(s.train) == min(1000, pool - len(s.dev))
    if name in ("boolq", "drop"):  # partial official files: every report says "subset"
        assert any("subset" in n for n in m["notes"])
    if carved:
        assert any("carved" in n for n in m["notes"]) and "carved" in s.describe()
        assert not set(s.train.indices) & set(s.test.indices)
        assert not set(s.dev.indices) & set(s.test.indices)
    assert not set(s.train.indices) & set(s.dev.indices)
    for e in s.test.examples[:50]:  # examples are well formed for their kind
        if task.generation:
            assert e.answers and not e.candidates
        else:
            assert e.gold and all(0 <= g < len(e.candidates) for g in e.gold)
            task.template.verbalize(e, e.correct_candidate)


def test_shared_data_label_conversion(default_lookup: Path) -> None:
    rte = get_task("rte").load_raw()
    assert {r["label"] for r in rte.train} == {0, 1}
    first = json.loads((default_lookup / "RTE" / "val.jsonl").read_text().splitlines()[0])
    assert rte.validation[0]["label"] == {"entailment": 0, "not_entailment": 1}[first["label"]]
    assert {r["label"] for r in get_task("cb").load_raw().train} == {0, 1, 2}
    wsc = get_task("wsc").load_raw().validation[0]
    assert wsc["span2_text"] == "him" and wsc["span1_text"] == "anyone" and wsc["label"] == 0
    mrc = get_task("multirc").load_raw()
    assert len({(r["idx"]["paragraph"], r["idx"]["question"]) for r in mrc.validation}) == 953
    sst = get_task("sst2").load_raw()
    assert any('"' in r["sentence"] or "`" in r["sentence"] for r in sst.train)  # quoting=3
    assert {r["label"] for r in sst.validation} == {0, 1}


def test_missing_tasks_error_names_task_folder_and_files(default_lookup: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskDataMissingError) as ei:
        get_task("drop").splits(data_dir=tmp_path)
    msg = str(ei.value)
    for s in (
        "'DROP'",
        str(tmp_path / "DROP"),
        "drop_dataset_dev.json",
        "validation_subset",
        "allenai.org",
        "ucinlp/drop",
    ):
        assert s in msg
    with pytest.raises(TaskDataMissingError, match=r"ReCoRD.*val\.jsonl"):
        get_task("record").splits(data_dir=tmp_path)


def test_listing_shows_every_task(default_lookup: Path, capsys: pytest.CaptureFixture) -> None:
    assert list_main([]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert f"\n{name} " in out
    assert "11/11 tasks available" in out and "MISSING" not in out and "carved" in out
    assert "--protocol quick" in out and "--protocol mezo" in out  # the default's sizes next to MeZO's
    drop = next(line for line in out.splitlines() if line.startswith("drop "))
    # pool, valid, then train, dev, test of --protocol quick (the default) and of --protocol mezo
    assert drop.split()[4:12] == ["3419", "1000", "1000", "100", "200", "1000", "500", "1000"]
    boolq = next(line for line in out.splitlines() if line.startswith("boolq "))
    assert boolq.split()[4:12] == ["1000", "3270", "900", "100", "200", "500", "500", "1000"]
    assert "carved" not in boolq
    assert "random 1,000-question subset of the official validation split" in out
    assert "the first 1,000 rows of the official train split" in out


# ------------------------------------------------------------------ official-format fixtures


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def record_passage(i: int) -> dict:
    text = f"Ann{i} met Bob in Rome.\n@highlight\nAnn{i} smiled"
    a = len(f"Ann{i}")
    ents = [
        {"start": 0, "end": a - 1},
        {"start": a + 5, "end": a + 7},
        {"start": a + 12, "end": a + 15},
        {"start": text.rindex("Ann"), "end": len(text) - 8},
    ]
    return {
        "source": "Daily mail",
        "idx": i,
        "passage": {"text": text, "entities": ents},
        "qas": [
            {
                "query": "@placeholder went home",
                "idx": 10 * i,
                "answers": [
                    {"start": 0, "end": a - 1, "text": f"Ann{i}"},
                    {"start": text.rindex("Ann"), "end": len(text) - 8, "text": f"Ann{i}"},
                ],
            },
            {
                "query": "They met in @placeholder",
                "idx": 10 * i + 1,
                "answers": [{"start": a + 12, "end": a + 15, "text": "Rome"}],
            },
        ],
    }


def test_record_official_jsonl_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "ReCoRD" / "train.jsonl", [record_passage(i) for i in range(3)])
    write_jsonl(tmp_path / "ReCoRD" / "val.jsonl", [record_passage(i) for i in range(3, 5)])
    monkeypatch.setenv("ZOJAX_DATA_DIR", str(tmp_path))  # env var lookup
    task = get_task("record")
    raw = task.load_raw()
    assert len(raw.train) == 6 and len(raw.validation) == 4  # one row per query
    r0 = raw.train[0]
    assert r0["entities"] == ["Ann0", "Bob", "Rome"] and r0["answers"] == ["Ann0"]
    s = task.splits(seed=0, num_train=3, num_dev=2)
    assert (len(s.train), len(s.dev), len(s.test)) == (3, 2, 4)
    e = next(x for x in s.test if x.data["query"].startswith("They"))
    assert e.candidates[e.label] == "Rome" and e.answers == ("Rome",)
    assert task.template.encode(e).endswith('They met in @placeholder\nQuestion: what is the "@placeholder"\nAnswer:')


def drop_fixture() -> dict:
    def qa(qid: str, q: str, ans: dict, validated: list[dict]) -> dict:
        return {"question": q, "query_id": qid, "answer": ans, "validated_answers": validated}

    empty = {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": []}
    return {
        "nfl_1": {
            "passage": "The Bears scored 3 touchdowns in May 1999.",
            "qa_pairs": [
                qa(
                    "q1",
                    "How many touchdowns?",
                    {**empty, "number": "3"},
                    [{**empty, "spans": ["three"]}, {**empty, "number": "3"}],
                ),
                qa("q2", "When?", {**empty, "date": {"day": "", "month": "May", "year": "1999"}}, []),
                qa("q3", "Who scored?", {**empty, "spans": ["Bears"]}, []),
                qa("q4", "Which two?", {**empty, "spans": ["a", "b"]}, []),  # multi-span: one answer
                qa("q5", "Nothing?", empty, []),  # no answer: skipped
            ],
        }
    }


def test_drop_official_json_fixture(tmp_path: Path) -> None:
    (tmp_path / "DROP").mkdir()
    for name in ("drop_dataset_train.json", "drop_dataset_dev.json"):
        (tmp_path / "DROP" / name).write_text(json.dumps(drop_fixture()))
    task = get_task("drop")
    raw = task.load_raw(data_dir=tmp_path)
    assert [r["query_id"] for r in raw.validation] == ["q1", "q2", "q3", "q4"]
    # the official reading: number, else spans, else "day month year"; validated answers too
    assert raw.train[0]["answers_spans"] == {"spans": ["3"], "types": ["number"]}
    assert raw.validation[0]["gold_answers"] == ["3", "three"]
    assert raw.validation[1]["gold_answers"] == ["May 1999"]
    assert raw.validation[3]["answers_spans"] == {"spans": ["a", "b"], "types": ["spans", "spans"]}
    assert raw.validation[3]["gold_answers"] == ["a, b"]
    assert [n for n in raw.notes if "subset" in n] == [
        "DROP: train = a subset: 1 passages (5 questions) of the official train file (77,409 questions; "
        "drop_dataset_train.json)",
        "DROP: validation = a subset (5 of 9,536 questions, drop_dataset_dev.json)",
    ]
    s = task.splits(data_dir=tmp_path, num_train=1, num_dev=1)
    assert len(s.test) == 4 and not s.meta["carved_from_validation"]
    e = next(x for x in s.test if x.id == "q1")
    assert e.answers == ("3", "three")
    assert task.template.verbalize(e, e.correct_candidate) == (
        "Passage: The Bears scored 3 touchdowns in May 1999.\nQuestion: How many touchdowns?\nAnswer: 3\n"
    )
    # a validation sample in EleutherAI/drop's schema stands in for the dev json when it is absent
    (tmp_path / "DROP" / "drop_dataset_dev.json").unlink()
    write_jsonl(
        tmp_path / "DROP" / "validation_subset2.jsonl",
        [
            {
                "query_id": "v1",
                "passage": "P",
                "question": "Who?",
                "answers": [["Ann", "Bob"], ["Ann"], ["Ann"]],
                "answers_spans": {"spans": ["Ann", "Bob"], "types": []},
            },
            {
                "query_id": "v2",
                "passage": "P",
                "question": "How many?",
                "answers": [["2"]],
                "answers_spans": {"spans": ["2"], "types": []},
            },
        ],
    )
    s = task.splits(data_dir=tmp_path, num_train=1, num_dev=1)
    assert [x.id for x in s.test] == [["v1", "v2"][i] for i in mezo_subset(2, 0, 1000)]
    assert next(x for x in s.test if x.id == "v1").answers == ("Ann, Bob", "Ann")
    assert any("random 2-question subset of the official validation split" in n for n in s.meta["notes"])


def test_drop_shared_subsets_and_f1_over_acceptable_answers(default_lookup: Path) -> None:
    task = get_task("drop")
    raw = task.load_raw()
    assert len(raw.train) == 3419 and len(raw.validation) == 1000
    first = json.loads((default_lookup / "DROP" / "drop_dataset_train.json").read_text())["nfl_2201"]
    assert raw.train[0]["query_id"] == first["qa_pairs"][0]["query_id"]
    assert raw.train[0]["gold_answers"][0] == first["qa_pairs"][0]["answer"]["number"] == "3"
    assert not {r["passage"] for r in raw.train} & {r["passage"] for r in raw.validation}
    exs = {e.id: e for e in task.build_examples(raw.validation)}
    multi = next(e for e in exs.values() if e.data["question"].startswith("How many people and families"))
    assert multi.answers == ("19922", "15,557 people, 4,365 families")
    assert f1_score("15,557 people, 4,365 families", multi.answers) == 1.0  # max over answers
    assert f1_score("19922", multi.answers) == 1.0 and f1_score("4,365", multi.answers) == pytest.approx(0.4)
    countries = next(e for e in exs.values() if e.data["question"].startswith("Which countries had less"))
    assert countries.answers[1] == "Germany, France, United Kingdom"
    assert f1_score("Germany, France, the United Kingdom", countries.answers) == 1.0
    assert exs["50ad1ec3-d7b5-4ffc-82db-af0e31f4bdf7"].answers == ("swedish",)


def test_boolq_shared_train_subset_in_google_schema(default_lookup: Path) -> None:
    raw = get_task("boolq").load_raw()
    assert len(raw.train) == 1000 and sum(r["answer"] for r in raw.train) == 624
    assert raw.train[0]["question"] == "do iran and afghanistan speak the same language"
    # SuperGLUE passages are "<title> -- <passage>"; MeZO reads google/boolq, without the title
    v0 = raw.validation[0]
    assert v0["title"] == "Ethanol fuel" and v0["passage"].startswith("All biomass goes through")
    assert not any(r["passage"].startswith(r["title"] + " -- ") for r in raw.validation)
    # SuperGLUE train rows (FewGLUE's) converted equal the same official rows in google's schema
    few_dir = default_lookup / "BoolQ" / "FewGLUE_32dev"
    few = [r for f in ("train.jsonl", "dev32.jsonl") for r in data_mod.read_jsonl(few_dir / f)]
    few = data_mod.superglue_rows("boolq", few)
    google = {r["question"]: r for r in raw.train}
    same = [r for r in data_mod.boolq_google_rows(few) if r["question"] in google]
    assert same and all(r["passage"] == google[r["question"]]["passage"] for r in same)
    assert all(r["answer"] == google[r["question"]]["answer"] for r in same)
    task = get_task("boolq")
    e = task.build_examples(raw.train)[0]
    assert e.candidates[e.label] == "Yes"
    assert task.template.encode(e).startswith("Persian (/")


def test_boolq_fixture_train_first1000_and_hub_schemas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "BoolQ"
    val = [
        {"question": f"is it {i}", "passage": f"Title {i} -- Text {i} -- more", "idx": i, "label": i % 2 == 0}
        for i in range(6)
    ]
    write_jsonl(d / "val.jsonl", val)
    task = get_task("boolq")
    s = task.splits(data_dir=tmp_path, num_train=2, num_dev=1, num_test=3)
    assert s.meta["carved_from_validation"]  # no train file: carved, as before
    write_jsonl(
        d / "train_first1000.jsonl", [{"question": f"q{i}", "answer": i < 2, "passage": f"p{i}"} for i in range(4)]
    )
    s = task.splits(data_dir=tmp_path, num_train=2, num_dev=1, num_test=3)
    assert not s.meta["carved_from_validation"] and s.meta["train_pool_size"] == 4
    assert any("subset" in n and "first 4 rows" in n for n in s.meta["notes"])
    e = s.test[0]
    assert e.data["passage"] == f"Text {e.id} -- more" and e.data["title"] == f"Title {e.id}"
    assert e.candidates[e.label] == ("Yes" if int(e.id) % 2 == 0 else "No")
    assert task.template.encode(e) == f"Text {e.id} -- more Is it {e.id}?\n"
    # the hub: google/boolq (MeZO's "boolq") first, then SuperGLUE's (titles split off)
    import datasets

    calls = []

    def fake_load(path: str, name: str | None = None, **kw: object) -> dict:
        calls.append((path, name))
        if path != "super_glue":
            raise ConnectionError("offline")
        return {"train": val, "validation": val[:2]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(data_mod, "hub_reachable", lambda: True)
    s = task.splits(data_dir=tmp_path / "none", num_train=2, num_dev=1)
    assert calls == [("google/boolq", None), ("boolq", None), ("super_glue", "boolq")]
    assert s.meta["source"] == "hub:super_glue/boolq"
    assert {x.data["passage"] for x in s.test} == {"Text 0 -- more", "Text 1 -- more"}


def test_drop_hub_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [
        {
            "section_id": "s",
            "query_id": f"q{i}",
            "passage": "P",
            "question": "Q?",
            "answers_spans": {"spans": [str(i), f"{i}.0"], "types": ["number", "number"]},
        }
        for i in range(4)
    ]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: {"train": rows, "validation": rows})
    monkeypatch.setattr(data_mod, "hub_reachable", lambda: True)
    s = get_task("drop").splits(data_dir=tmp_path, num_train=2, num_dev=1)
    assert s.meta["source"] == "hub:ucinlp/drop"
    assert next(x for x in s.test if x.id == "q1").answers == ("1", "1.0")


def squad_fixture(n: int) -> dict:
    paras = [
        {
            "context": f"Ctx {i} is here.",
            "qas": [
                {
                    "id": f"id{i}",
                    "question": f"What is {i}?",
                    "answers": [{"text": f"Ctx {i}", "answer_start": 0}, {"text": "here", "answer_start": 10}],
                }
            ],
        }
        for i in range(n)
    ]
    return {"version": "1.1", "data": [{"title": "Art", "paragraphs": paras}]}


def test_squad_official_json_fixture_carves_when_train_absent(tmp_path: Path) -> None:
    (tmp_path / "SQuAD").mkdir()
    (tmp_path / "SQuAD" / "dev-v1.1.json").write_text(json.dumps(squad_fixture(40)))
    task = get_task("squad")
    s = task.splits(data_dir=tmp_path, num_train=8, num_dev=4, num_test=10)
    assert s.meta["carved_from_validation"] and s.meta["validation_size"] == 40
    assert (len(s.train), len(s.dev), len(s.test)) == (8, 4, 10)
    ids = [set(x.id for x in sp) for sp in (s.train, s.dev, s.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert s.test[0].answers[1] == "here" and s.test[0].data["title"] == "Art"
    # with the train json too, nothing is carved
    (tmp_path / "SQuAD" / "train-v1.1.json").write_text(json.dumps(squad_fixture(30)))
    s2 = task.splits(data_dir=tmp_path, num_train=8, num_dev=4, num_test=10)
    assert not s2.meta["carved_from_validation"] and s2.meta["train_pool_size"] == 30


def test_squad_parquet_layout_fixture(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = data_mod.squad_json_rows(squad_fixture(6))
    (tmp_path / "SQuAD" / "plain_text").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "SQuAD" / "plain_text" / "validation-00000-of-00001.parquet")
    raw = get_task("squad").load_raw(data_dir=tmp_path)
    assert raw.train is None and raw.validation == rows


def test_sst2_official_glue_layout(tmp_path: Path) -> None:
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\na \"quoted\" film \t1\n`` bad '' \t0\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    (d / "test.tsv").write_text("index\tsentence\n0\tunlabelled \n")  # GLUE test: no labels
    raw = get_task("sst2").load_raw(data_dir=tmp_path)
    assert [r["sentence"] for r in raw.train] == ['a "quoted" film ', "`` bad '' "]
    assert [r["label"] for r in raw.validation] == [1]


def test_hub_rows_are_used_when_no_local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(path: str, name: str | None = None, **kw: object) -> dict:
        calls.append((path, name))
        if path == "super_glue":
            raise ConnectionError("moved")
        rows = [{"premise": f"p{i}", "hypothesis": "h", "idx": i, "label": i % 2} for i in range(20)]
        return {"train": rows, "validation": rows[:5]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(data_mod, "hub_reachable", lambda: True)
    s = get_task("rte").splits(data_dir=tmp_path, num_train=4, num_dev=2)
    assert calls == [("super_glue", "rte"), ("aps/super_glue", "rte")]
    assert s.meta["source"] == "hub:aps/super_glue/rte" and len(s.test) == 5


# ------------------------------------------------------------------ sampling protocol


def test_sampling_matches_mezo_and_is_deterministic() -> None:
    n = 2490
    idx = mezo_subset(n, 7, 1500)
    assert idx == np.random.RandomState(7).permutation(n)[:1500].tolist()
    tr, dv = split_train_dev(n, 7, 1000, 500)
    assert tr == idx[:1000] and dv == idx[1000:] and not set(tr) & set(dv)
    assert split_train_dev(n, 7, 1000, 500) == (tr, dv)
    assert split_train_dev(n, 8, 1000, 500) != (tr, dv)
    tr, dv = split_train_dev(250, 0, 1000, 100)  # CB: dev 100, train = the rest
    assert (len(tr), len(dv)) == (150, 100) and sorted(tr + dv) == list(range(250))
    assert mezo_subset(56, 0, 1000) == np.random.RandomState(0).permutation(56).tolist()


def test_carving_is_disjoint_and_keeps_mezo_test_sample() -> None:
    tr, dv, te = carve_from_validation(3270, 0, 1000, 500, 1000)
    assert (len(tr), len(dv), len(te)) == (1000, 500, 1000)
    assert te == mezo_subset(3270, 0, 1000)  # the same test sample MeZO would draw
    assert not (set(tr) & set(dv)) and not (set(tr) & set(te)) and not (set(dv) & set(te))
    assert carve_from_validation(3270, 0, 1000, 500, 1000) == (tr, dv, te)
    tr, dv, te = carve_from_validation(10, 0, 1000, 500, 1000)  # tiny: half stays for training
    assert len(te) == 5 and sorted(tr + dv + te) == list(range(10))


def test_task_splits_deterministic_and_seeded(default_lookup: Path) -> None:
    t = get_task("rte")
    a, b, c = t.splits(seed=0), t.splits(seed=0), t.splits(seed=1)
    assert a.train.indices == b.train.indices and a.test.indices == b.test.indices
    assert a.train.indices != c.train.indices
    assert a.train.indices == mezo_subset(2490, 0, 1500)[:1000]
    assert a.dev.indices == mezo_subset(2490, 0, 1500)[1000:]
    assert a.test.indices == mezo_subset(277, 0, 1000)


def test_record_falls_back_to_fewglue_sample_and_says_so() -> None:
    sp = get_task("record").splits(seed=0, num_test=1000, data_dir=SHARED)
    assert sp.meta["carved_from_validation"]
    assert any("FewGLUE_32dev" in n for n in sp.meta["notes"])
    ids = [id(e) for part in (sp.dev.examples, sp.test.examples) for e in part]
    assert len(ids) == len(set(ids)) and 0 < len(sp.test.examples) <= 32
