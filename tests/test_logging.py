"""The run logs' trackers (:mod:`zojax.train.logging`): the interface with a fake tracker, the
``trackers`` option, Weights & Biases in offline mode, and the trainer honouring the option.

and TensorBoard's event files: their scalars by step and by forward passes, and a resume's truncation
(a second event file, rewound with the checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from zojax.errors import UserError
from zojax.train import MetricsLogger, Tracker, TrainConfig, Trainer, read_events, read_metrics
from zojax.train import resolve as resolve_lib
from zojax.train.trackers import WANDB_MISSING, WandbTracker

RECORDS = [
    {"event": "eval", "step": 0, "forwards": 0, "dev_accuracy": 0.5, "wall_time": 0.1},
    {"event": "train", "step": 1, "forwards": 2, "loss": 0.75, "lr": 1e-3, "forwards_per_s": None},
    {"event": "train", "step": 2, "forwards": 4, "loss": float("nan"), "lr": 1e-3},
    {"event": "eval", "step": 2, "forwards": 4, "dev_accuracy": 0.625, "note": "x"},
]


class FakeTracker:
    """Keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.configs: list[dict[str, Any]] = []
        self.closed = False

    def log(self, record: Any) -> None:
        self.records.append(dict(record))

    def log_config(self, config: Any) -> None:
        self.configs.append(dict(config))

    def close(self) -> None:
        self.closed = True


def test_a_tracker_gets_every_record_and_the_config(tmp_path: Path) -> None:
    fake = FakeTracker()
    assert isinstance(fake, Tracker)
    log = MetricsLogger(tmp_path, trackers=[fake])
    log.log_config({"optim": {"method": "mezo"}})
    for r in RECORDS:
        log.log(r)
    log.close()
    assert fake.closed and fake.configs == [{"optim": {"method": "mezo"}}]
    assert fake.records == read_metrics(tmp_path / "metrics.jsonl")  # NaN as None, like the file
    assert fake.records[2]["loss"] is None
    assert not (tmp_path / "tb").exists()


def test_the_trackers_option_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(*trackers: str) -> TrainConfig:
        c = TrainConfig()
        c.model.name, c.run.trackers = "random:tiny", trackers
        return c.resolve()

    assert resolve().run.trackers == ()
    assert resolve("tensorboard").run.trackers == ("tensorboard",)
    with pytest.raises(ValueError, match="--trackers: invalid choice 'mlflow'"):
        resolve("mlflow")
    with pytest.raises(ValueError, match=r"--trackers: .* twice"):
        resolve("tensorboard", "tensorboard")
    monkeypatch.setattr(resolve_lib, "wandb_installed", lambda: False)
    with pytest.raises(ValueError, match=r"--trackers: 'wandb' needs the wandb package: pip install 'zojax\[wandb\]'"):
        resolve("wandb")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    with pytest.raises(UserError) as err:
        WandbTracker(Path("unused"))
    assert str(err.value) == WANDB_MISSING


def test_wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLogger(tmp_path / "run", trackers=("wandb",))
    (tracker,) = log.trackers[1:]
    log.log_config({"optim": {"method": "mezo"}})
    for r in RECORDS:
        log.log(r)
    run = tracker.run
    assert run.offline and run.name == "run" and run.config["optim"] == {"method": "mezo"}
    # (W&B commits a step when a later one starts: here step 1; step 2 is committed by close)
    assert run.summary["train/loss"] == 0.75 and run.summary["eval/dev_accuracy"] == 0.5
    assert run.summary["forwards"] == 2 and run.summary.get("eval/note") is None
    log.close()
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("*.wandb"))


def test_the_trainer_honours_the_trackers_option(tmp_path: Path) -> None:
    """An evaluation-only run without trackers writes ``metrics.jsonl`` only; with TensorBoard,
    the same scalars as events."""
    (tmp_path / "SST-2").mkdir()
    rows = "".join(f"a {w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"] * 2))
    for split in ("train", "dev"):
        (tmp_path / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    for trackers in [(), ("tensorboard",)]:
        c = TrainConfig()
        c.model.name, c.optim.method, c.data.data_dir = "random:tiny", "zero-shot", str(tmp_path)
        c.data.num_train, c.data.num_dev, c.data.num_test = 4, 0, 4
        c.run.out, c.run.progress, c.run.trackers = str(tmp_path / f"run{len(trackers)}"), False, trackers
        report = Trainer(c, log=lambda msg: None).run()
        assert report["status"] == "done"
        out = Path(c.run.out)
        (test,) = read_metrics(out / "metrics.jsonl")
        assert (out / "tb").exists() == bool(trackers)
        if trackers:
            (by_step, by_forwards) = read_events(out / "tb")
            assert by_step[0] == by_forwards[0] == 0
            assert by_step[1]["test/test_accuracy"] == pytest.approx(test["test_accuracy"], rel=1e-7)
            assert "test_by_forwards/test_accuracy" in by_forwards[1] and "test/wall_time" in by_step[1]


def test_event_file_format(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    log.log_config({"optim": {"method": "mezo"}})  # a text summary, not a scalar
    log.log({"event": "train", "step": 1, "forwards": 6, "loss": 0.5, "note": "x"})
    off = log.offsets()
    log.log({"event": "train", "step": 2, "forwards": 12, "loss": 0.25})
    log.close()
    events = list(read_events(tmp_path / "tb"))
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
    resumed = [(2, {"train/loss": 0.125}), (12, {"train_by_forwards/loss": 0.125})]
    assert list(read_events(tmp_path / "tb")) == [*events[:2], *resumed]
    assert len(list((tmp_path / "tb").iterdir())) == 2
    MetricsLogger(tmp_path, off).close()  # resuming from the first checkpoint again drops what followed it
    assert list(read_events(tmp_path / "tb")) == events[:2]
