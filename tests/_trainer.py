"""The trainer tests' setup: fixture SST-2 data (an easy task), a tiny run's configuration and
helpers to compare runs and read their logs (:mod:`tests.test_train`,
:mod:`tests.test_train_resume`, :mod:`tests.test_cli_finetune`, :mod:`tests.test_metric_objectives`).

Compiling a zeroth-order step is the slow part on CPU (every perturbed leaf carries its own draw
and key derivations), so the session shares one persistent compilation cache (``conftest.compile_cache``):
runs with identical shapes and hyper-parameters compile once.
"""

from __future__ import annotations

import random
from pathlib import Path

import jax
import numpy as np
import pytest

from zojax.cli import main
from zojax.tasks.templates import SST2Template
from zojax.train import (
    Checkpoints,
    TrainConfig,
    build_model,
    build_optimizer,
    prepare_tuning,
    read_events,
)
from zojax.train import checkpoint as ckpt_lib

REPO = Path(__file__).resolve().parents[1]
POS = ["good", "great", "fine", "nice", "lovely", "superb", "grand", "neat"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "sad", "vile"]
# MeZO-GV's v = z_best - z_worst (M = 2, not normalised) has E|v|^2 = 2d: half the step size
LR = {"mezo": 3e-3, "nspsa": 3e-3, "mezo-gv": 1.5e-3, "mezo-greedy": 3e-3, "mezo-centred": 3e-3, "ft": 1e-2}


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
    tuned = prepare_tuning(*build_model(c.model.name), c)
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


class ColonTemplate(SST2Template):
    """SST-2 with one-byte options ("...It was:+" / "...It was:-"), so that the byte tokenizer
    gives single-token candidates, as SmolLM2's does for " great" / " terrible"."""

    def encode(self, ex):
        return f"{ex.data['sentence'].strip()} It was:"

    def verbalize(self, ex, candidate):
        return f"{ex.data['sentence'].strip()} It was:{'+' if candidate else '-'}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
