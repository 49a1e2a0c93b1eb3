"""Typed containers shared by the task code: examples, splits and their metadata."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["classification", "multiple_choice", "generation"]
Objective = Literal["classification", "lm"]
Metric = Literal["accuracy", "f1"]


@dataclass(frozen=True)
class Example:
    """One evaluation/training example in MeZO's ``Sample`` sense.

    Attributes:
        id: stable identifier (the dataset's ``idx``/``id`` where it has one).
        data: the fields the template reads (hub schema names, e.g. ``premise``, ``passage``).
        candidates: the values handed to ``Template.verbalize`` (label ints for classification,
            strings for COPA/ReCoRD); empty for generation tasks.
        gold: indices into ``candidates`` of the correct candidates (ReCoRD may have several);
            empty for generation tasks.
        answers: gold answer strings (generation tasks and ReCoRD); empty otherwise.
    """

    id: str
    data: Mapping[str, Any]
    candidates: tuple[Any, ...] = ()
    gold: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        """Index of the (first) correct candidate, the label MeZO trains on."""
        if not self.gold:
            raise ValueError(f"example {self.id} has no candidate label (generation task)")
        return self.gold[0]

    @property
    def correct_candidate(self) -> Any:
        """What MeZO passes to ``verbalize`` to render the example with its gold answer."""
        if self.candidates:
            return self.candidates[self.gold[0]]
        return self.answers[0]


@dataclass(frozen=True)
class RawData:
    """Rows of one task in the hub schema, before sampling.

    ``train`` is None when the train split is unavailable (then train/dev are carved from
    ``validation``).
    """

    train: list[dict[str, Any]] | None
    validation: list[dict[str, Any]]
    source: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """A sampled split: the examples and the indices they came from in their pool."""

    name: str
    examples: list[Example]
    indices: list[int]
    pool: str

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


@dataclass
class TaskSplits:
    """MeZO's train/dev/test for one task and seed, with everything a report must say.

    ``meta`` carries at least: ``task``, ``source``, ``seed``, ``carved_from_validation`` (bool),
    ``train_pool_size``, ``validation_size`` and ``notes`` (a list of human-readable caveats, e.g.
    that the train split was absent and train/dev/test were carved from validation).
    ``train_pool`` is the full pool that train/dev were sampled from (ICL demonstrations are
    drawn from it, as in MeZO).
    """

    train: Split
    dev: Split
    test: Split
    train_pool: list[Example]
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: sizes and provenance (carving included) for logs and reports."""
        s = f"train {len(self.train)} / dev {len(self.dev)} / test {len(self.test)}"
        if self.meta.get("carved_from_validation"):
            s += " (train/dev/test carved disjointly from validation: train split absent)"
        return s


def as_tuple(xs: Sequence[Any]) -> tuple[Any, ...]:
    """Small helper: list-like to tuple."""
    return tuple(xs)
