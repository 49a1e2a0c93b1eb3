"""The 11 MeZO tasks: sources, example builders, templates, objectives, metrics, splits."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zojax.tasks import templates as T
from zojax.tasks.base import Example, Kind, Metric, Objective, RawData, Split, TaskSplits
from zojax.tasks.data import (
    BOOLQ_LOCAL,
    DROP_LOCAL,
    SQUAD_LOCAL,
    SST2_LOCAL,
    HubSource,
    LocalSource,
    boolq_google_rows,
    load_raw,
    superglue_local,
)
from zojax.tasks.sampling import carve_from_validation, mezo_subset, split_train_dev

Row = dict[str, Any]


def _idx(row: Row, i: int) -> str:
    v = row.get("idx", row.get("id", row.get("query_id", i)))
    if isinstance(v, dict):
        return "-".join(str(x) for x in v.values())
    return str(v)


def _labelled(candidates: tuple[Any, ...]) -> Callable[[Row, int], Example]:
    """Builder for label-indexed classification (candidates are label ints or fixed strings)."""

    def build(row: Row, i: int) -> Example:
        label = int(row["label"])
        return Example(_idx(row, i), row, candidates, (label,))

    return build


def _boolq(row: Row, i: int) -> Example:
    """MeZO's BoolQ sample from a google/boolq row (a SuperGLUE row is converted, its passage title
    split off): candidates ``("Yes", "No")``, gold "Yes" if ``answer``."""
    (row,) = boolq_google_rows([row])
    return Example(_idx(row, i), row, ("Yes", "No"), (0 if row["answer"] else 1,))


def _copa(row: Row, i: int) -> Example:
    return Example(_idx(row, i), row, (row["choice1"], row["choice2"]), (int(row["label"]),))


def _record(row: Row, i: int) -> Example:
    entities = tuple(row["entities"])
    answers = tuple(row["answers"])
    gold = tuple(entities.index(a) for a in answers if a in entities)
    return Example(_idx(row, i), row, entities, gold, answers)


def _squad(row: Row, i: int) -> Example:
    answers = tuple(row["answers"]["text"])
    data = {
        "title": row["title"],
        "context": row["context"],
        "question": row["question"],
        "answers": answers,
    }
    return Example(str(row.get("id", i)), data, (), (), answers)


def _drop(row: Row, i: int) -> Example:
    """A DROP example; its answers are every acceptable answer (``gold_answers`` of the local
    readers, else the hub's ``answers_spans``), the first one the training target."""
    answers = tuple(row.get("gold_answers") or row["answers_spans"]["spans"])
    data = {"context": row["passage"], "question": row["question"], "answers": answers}
    return Example(str(row.get("query_id", i)), data, (), (), answers)


def _keep_record(ex: Example) -> bool:
    # a query with no answer among the entities cannot be scored (MeZO would crash on it)
    return bool(ex.gold)


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes:
        name: registry key (``sst2``, ``rte``, ...).
        display: the paper's name (``SST-2``).
        kind: ``classification`` (label verbaliser), ``multiple_choice`` (per-example candidate
            strings: COPA, ReCoRD) or ``generation`` (SQuAD, DROP).
        objective: MeZO's training objective: ``classification`` (cross-entropy over candidates
            whose logits are mean option-token log-probs) or ``lm`` (teacher-forced LM loss on
            the gold answer).
        metric: ``accuracy`` (candidate scoring; ReCoRD: any gold) or ``f1`` (greedy generation).
        template: the MeZO prompt template.
        local / hub: where the data lives offline / online.
        where_to_get: URL for the official files (used in missing-data errors).
        build: hub-schema row -> :class:`Example`.
        num_dev: MeZO's dev size (500; CB and COPA 100).
        train_sep: separator between ICL demonstrations.
        keep: optional filter on built examples.
    """

    name: str
    display: str
    kind: Kind
    objective: Objective
    metric: Metric
    template: T.Template
    local: LocalSource
    hub: HubSource
    where_to_get: str
    build: Callable[[Row, int], Example]
    num_dev: int = 500
    train_sep: str = "\n\n"
    keep: Callable[[Example], bool] | None = None

    @property
    def generation(self) -> bool:
        """True for SQuAD and DROP (scored by greedy generation + F1)."""
        return self.kind == "generation"

    def load_raw(self, data_dir: str | os.PathLike[str] | None = None, source: str = "auto") -> RawData:
        """Raw hub-schema rows (see :func:`zojax.tasks.data.load_raw`)."""
        return load_raw(self.display, self.local, self.hub, self.where_to_get, data_dir, source)

    def build_examples(self, rows: list[Row]) -> list[Example]:
        """Rows -> examples (filtered by ``keep``)."""
        exs = [self.build(r, i) for i, r in enumerate(rows)]
        return [e for e in exs if self.keep is None or self.keep(e)]

    def splits(
        self,
        seed: int = 0,
        num_train: int = 1000,
        num_dev: int | None = None,
        num_test: int = 1000,
        data_dir: str | os.PathLike[str] | None = None,
        source: str = "auto",
        raw: RawData | None = None,
    ) -> TaskSplits:
        """MeZO's seeded train/dev/test (1000/500/1000; dev 100 for CB and COPA).

        When the train split is absent, train/dev/test are carved disjointly from validation and
        ``meta["carved_from_validation"]`` is True (with a note every report should print)."""
        raw = raw if raw is not None else self.load_raw(data_dir, source)
        num_dev = self.num_dev if num_dev is None else num_dev
        valid = self.build_examples(raw.validation)
        notes = list(raw.notes)
        if raw.train is not None:
            pool = self.build_examples(raw.train)
            tr, dv = split_train_dev(len(pool), seed, num_train, num_dev)
            te = mezo_subset(len(valid), seed, num_test)
            train = Split("train", [pool[i] for i in tr], tr, "train")
            dev = Split("dev", [pool[i] for i in dv], dv, "train")
            carved = False
        else:
            # indices of train/dev/test all point into validation and are disjoint
            tr, dv, te = carve_from_validation(len(valid), seed, num_train, num_dev, num_test)
            test_set = set(te)
            pool = [valid[i] for i in range(len(valid)) if i not in test_set]
            train = Split("train", [valid[i] for i in tr], tr, "validation")
            dev = Split("dev", [valid[i] for i in dv], dv, "validation")
            carved = True
            if not any("carved" in n for n in notes):
                notes.append(f"{self.display}: train split absent; train/dev/test carved disjointly from validation")
        test = Split("test", [valid[i] for i in te], te, "validation")
        meta: dict[str, Any] = {
            "task": self.name,
            "display": self.display,
            "source": raw.source,
            "seed": seed,
            "carved_from_validation": carved,
            "train_pool_size": len(pool),
            "validation_size": len(valid),
            "sizes": {"train": len(train), "dev": len(dev), "test": len(test)},
            "notes": notes,
        }
        return TaskSplits(train, dev, test, pool, meta)

    def with_template(self, template: T.Template) -> Task:
        """A copy of the task using another template."""
        return dataclasses.replace(self, template=template)


SG = (
    "https://super.gluebenchmark.com/tasks (SuperGLUE v2 zip, e.g. "
    "dl.fbaipublicfiles.com/glue/superglue/data/v2/{}.zip)"
)


def _sg_hub(name: str) -> HubSource:
    return HubSource("super_glue", name, fallbacks=("aps/super_glue",))


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "sst2",
            "SST-2",
            "classification",
            "classification",
            "accuracy",
            T.SST2Template(),
            SST2_LOCAL,
            HubSource("glue", "sst2", fallbacks=("nyu-mll/glue",)),
            "https://gluebenchmark.com/tasks (SST-2.zip)",
            _labelled((0, 1)),
        ),
        Task(
            "rte",
            "RTE",
            "classification",
            "classification",
            "accuracy",
            T.RTETemplate(),
            superglue_local("RTE", "rte"),
            _sg_hub("rte"),
            SG.format("RTE"),
            _labelled((0, 1)),
        ),
        Task(
            "cb",
            "CB",
            "classification",
            "classification",
            "accuracy",
            T.CBTemplate(),
            superglue_local("CB", "cb"),
            _sg_hub("cb"),
            SG.format("CB"),
            _labelled((0, 1, 2)),
            num_dev=100,
        ),
        Task(
            "boolq",
            "BoolQ",
            "classification",
            "classification",
            "accuracy",
            T.BoolQTemplate(),
            BOOLQ_LOCAL,
            HubSource("google/boolq", None, fallbacks=("boolq", ("super_glue", "boolq"), ("aps/super_glue", "boolq"))),
            SG.format("BoolQ"),
            _boolq,
        ),
        Task(
            "wsc",
            "WSC",
            "classification",
            "classification",
            "accuracy",
            T.WSCTemplate(),
            superglue_local("WSC", "wsc"),
            _sg_hub("wsc.fixed"),
            SG.format("WSC"),
            _labelled((0, 1)),
        ),
        Task(
            "wic",
            "WiC",
            "classification",
            "classification",
            "accuracy",
            T.WiCTemplate(),
            superglue_local("WiC", "wic"),
            _sg_hub("wic"),
            SG.format("WiC"),
            _labelled((0, 1)),
        ),
        Task(
            "multirc",
            "MultiRC",
            "classification",
            "classification",
            "accuracy",
            T.MultiRCTemplate(),
            superglue_local("MultiRC", "multirc"),
            _sg_hub("multirc"),
            SG.format("MultiRC"),
            _labelled((0, 1)),
        ),
        Task(
            "copa",
            "COPA",
            "multiple_choice",
            "lm",
            "accuracy",
            T.COPATemplate(),
            superglue_local("COPA", "copa"),
            _sg_hub("copa"),
            SG.format("COPA"),
            _copa,
            num_dev=100,
        ),
        Task(
            "record",
            "ReCoRD",
            "multiple_choice",
            "lm",
            "accuracy",
            T.ReCoRDTemplate(),
            superglue_local("ReCoRD", "record"),
            _sg_hub("record"),
            SG.format("ReCoRD"),
            _record,
            keep=_keep_record,
        ),
        Task(
            "squad",
            "SQuAD",
            "generation",
            "lm",
            "f1",
            T.SQuADTemplate(),
            SQUAD_LOCAL,
            HubSource("rajpurkar/squad", None, fallbacks=("squad",)),
            "https://rajpurkar.github.io/SQuAD-explorer/ (train-v1.1.json, dev-v1.1.json)",
            _squad,
        ),
        Task(
            "drop",
            "DROP",
            "generation",
            "lm",
            "f1",
            T.DROPTemplate(),
            DROP_LOCAL,
            HubSource("ucinlp/drop", None, fallbacks=("drop",)),
            "https://allenai.org/data/drop (drop_dataset.zip)",
            _drop,
        ),
    ]
}

ALIASES = {
    "sst-2": "sst2",
    "sst2": "sst2",
    "copa": "copa",
    "wic": "wic",
    "wsc.fixed": "wsc",
    "record": "record",
    "multirc": "multirc",
    "squad": "squad",
    "drop": "drop",
}

TEMPLATE_VARIANTS: dict[str, dict[str, T.Template]] = {
    "record": {"default": T.ReCoRDTemplate(), "gpt3": T.ReCoRDTemplateGPT3()},
}


def get_task(name: str, template: str = "default") -> Task:
    """Look a task up by name (case-insensitive; MeZO's class names like ``Copa`` work too).

    ``template`` selects a variant (``record``: ``default`` or ``gpt3``)."""
    key = name.lower().replace("_", "")
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    task = TASKS[key]
    if template != "default":
        variants = TEMPLATE_VARIANTS.get(key, {})
        if template not in variants:
            raise KeyError(f"task {key} has no template {template!r}")
        task = task.with_template(variants[template])
    return task
