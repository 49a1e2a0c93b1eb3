r"""Golden runs: short fine-tuning jobs whose logs and final weights must not change, bit for bit.

Each case is a few :class:`zojax.train.Trainer` steps on ``random:tiny`` with fixture data (SST-2,
and COPA for the ``lm`` objective): every method (``mezo``, ``nspsa``, ``mezo-gv``,
``mezo-greedy``, ``mezo-centred``, ``ft``), LoRA and prefix tuning, SubZero's subspace noise
(MeZO-GV, and LoRA), an evaluation-only run (``zero-shot``), and a run stopped after 2 steps and
resumed. For each, ``tests/golden/<case>.json`` holds

* ``metrics``: every ``metrics.jsonl`` record (train loss, projected gradient, dev loss and metric,
  test value, ...) without its timing fields;
* ``results``: ``results.json`` without timing fields and the run directory;
* ``params`` / ``opt_state``: the SHA-256 of the newest checkpoint's leaves (raw bytes, tree
  order; parameters as float32) plus the float sum of each parameter leaf, for readable diffs.

A refactoring that keeps the arithmetic keeps every number here identical.

The goldens are tied to the CPU, XLA and jax build they were recorded with: bitwise XLA:CPU
results can change with the CPU's instruction set (vector width, FMA) and across jax/jaxlib
versions. After such a change (and only then: a change of code must not move them), re-record
from the repository root with::

    python tests/test_golden.py --record      # or: python -m tests.test_golden --record
    python tests/test_golden.py --record subzero-gv   # only the cases named (a new case)

and commit ``tests/golden/`` together with a note of the jax version and machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # script mode: this checkout's zojax and tests/conftest.py's environment
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("ZOJAX_MESH", "none")  # else the trainer's --mesh auto spreads a run over the 8 devices

import jax
import numpy as np
import pytest

from zojax.train import (
    Checkpoints,
    TrainConfig,
    Trainer,
    build_model,
    build_optimizer,
    prepare_tuning,
    read_metrics,
    strip_timing,
)
from zojax.train import checkpoint as ckpt_lib
from zojax.train.cache import disable_compile_cache, enable_compile_cache

GOLDEN = Path(__file__).resolve().parent / "golden"
POS = ["good", "great", "fine", "nice", "lovely", "superb", "grand", "neat"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "sad", "vile"]
SUBSPACE = {"optim__perturbation": "subspace", "optim__rank": 4, "optim__refresh_every": 2}
LR = {"mezo": 3e-3, "nspsa": 3e-3, "mezo-gv": 1.5e-3, "mezo-greedy": 3e-3, "mezo-centred": 3e-3, "ft": 1e-2}
# case -> config overrides ("section__field": value); "resume" runs twice (stop after 2, resume)
CASES: dict[str, dict[str, Any]] = {
    **{m: {"optim__method": m, "optim__lr": LR[m]} for m in LR},
    "lora": {"model__tuning": "lora", "optim__lr": None, "optim__eps": None},
    "prefix": {"model__tuning": "prefix", "optim__lr": None, "optim__eps": None},
    "copa": {"data__task": "copa"},
    "zero-shot": {"optim__method": "zero-shot"},
    # SubZero noise (rank 4, a new subspace every 2 steps: the 3-step run crosses a refresh)
    "subzero-gv": {"optim__method": "mezo-gv", "optim__lr": LR["mezo-gv"], **SUBSPACE},
    "subzero-lora": {"model__tuning": "lora", "optim__lr": None, "optim__eps": None, **SUBSPACE},
    "resume": {},
}
RESULT_DROP = ("wall_time", "eval_time", "run_dir")  # timing, and where the run happened to be


def write_data(d: Path) -> Path:
    """Fixture SST-2 (GLUE layout) and COPA (SuperGLUE layout) under ``d``."""
    rng = random.Random(0)
    (d / "SST-2").mkdir(parents=True)
    for name, n in (("train.tsv", 24), ("dev.tsv", 12)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            a, b = rng.sample(POS if i % 2 else NEG, 2)
            lines.append(f"a {a} and {b} film \t{i % 2}")
        (d / "SST-2" / name).write_text("\n".join(lines) + "\n")
    (d / "COPA").mkdir()
    copa = [
        {"premise": f"The man dropped glass {i}.", "choice1": "It broke.", "choice2": "It sang.",
         "question": "effect", "label": i % 2, "idx": i}
        for i in range(24)
    ]  # fmt: skip
    (d / "COPA" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in copa) + "\n")
    (d / "COPA" / "val.jsonl").write_text("\n".join(json.dumps(r) for r in copa[:8]) + "\n")
    return d


def make_config(data_dir: Path, out: Path, **over: Any) -> TrainConfig:
    """3 steps of batch 4 on random:tiny; dev 4 (evaluated at steps 0, 2, 3), test 4."""
    c = TrainConfig()
    c.model.name = "random:tiny"
    c.data.data_dir = str(data_dir)
    c.data.num_train, c.data.num_dev, c.data.num_test = 8, 4, 4
    c.data.max_new_tokens = 4
    c.optim.method, c.optim.lr, c.optim.eps = "mezo", LR["mezo"], 1e-2
    c.optim.batch_size, c.optim.steps = 4, 3
    c.optim.num_candidates = 2
    c.eval.eval_every = 2
    c.run.out = str(out)
    c.run.progress = False
    c.run.checkpoint_every = 0  # the final step (and the stop of "resume") only: orbax saves are slow
    c.run.checkpoint_minutes = 0
    for k, v in over.items():
        sec, field = k.split("__")
        setattr(getattr(c, sec), field, v)
    return c


def digest(tree: Any, as_float32: bool) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(jax.device_get(leaf))
        h.update(np.ascontiguousarray(a.astype(np.float32) if as_float32 else a).tobytes())
    return h.hexdigest()


def final_weights(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Digests of the newest checkpoint's params and optimizer state."""
    c = cfg.resolve()
    tuned = prepare_tuning(*build_model(c.model.name), c)
    target = {"params": tuned.params, "opt_state": build_optimizer(c).init(tuned.params)}
    state, meta = Checkpoints(run_dir / "checkpoints").restore_latest(ckpt_lib.abstract(target))
    params = state["params"]
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "step": meta["step"],
        "params": digest(params, as_float32=True),
        "opt_state": digest(state["opt_state"], as_float32=False),
        "param_sums": {jax.tree_util.keystr(p): float(np.sum(np.asarray(v, np.float64))) for p, v in paths},
    }


def run_case(name: str, data_dir: Path, out: Path, resume: bool = False) -> dict[str, Any]:
    """Runs one case in ``out`` (``resume``: continuing the run already there); returns what its
    golden file holds."""
    over = {**CASES[name], **({"run__resume": True} if resume else {})}
    quiet = lambda msg: None
    if name == "resume":
        first = Trainer(make_config(data_dir, out, run__stop_after=2, **over), log=quiet).run()
        assert first["status"] == "stopped" and first["step"] == 2
        over = {**over, "run__resume": True}
    report = Trainer(make_config(data_dir, out, **over), log=quiet).run()
    assert report["status"] == "done"
    results = json.loads((out / "results.json").read_text())
    record = {
        "metrics": strip_timing(read_metrics(out / "metrics.jsonl")),
        "results": {k: v for k, v in results.items() if k not in RESULT_DROP},
    }
    for v in record["results"].values():
        if isinstance(v, dict):
            for k in RESULT_DROP:
                v.pop(k, None)
    record["results"]["splits"].pop("source")  # names the temporary data folder
    cfg = make_config(data_dir, out, **over)
    if cfg.resolve().training:
        record["weights"] = final_weights(out, cfg)
    return record


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


@pytest.fixture(scope="module")
def golden_env(tmp_path_factory: pytest.TempPathFactory):
    """The fixture data and one persistent compilation cache for the module."""
    enable_compile_cache(tmp_path_factory.mktemp("xla"))
    yield write_data(tmp_path_factory.mktemp("data"))
    disable_compile_cache()


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str, golden_env: Path, tmp_path: Path) -> None:
    expected = json.loads(golden_path(name).read_text())
    got = json.loads(dumps(run_case(name, golden_env, tmp_path / "run")))  # the same float round trip
    assert got["metrics"] == expected["metrics"], f"{name}: metrics.jsonl changed"
    assert got["results"] == expected["results"], f"{name}: results.json changed"
    assert got.get("weights") == expected.get("weights"), f"{name}: final weights changed"


def test_resume_equals_the_uninterrupted_run() -> None:
    """The recorded resume is the recorded uninterrupted ``mezo`` run (same config)."""
    a, b = (json.loads(golden_path(n).read_text()) for n in ("mezo", "resume"))
    assert a == b


def record(names: list[str]) -> None:
    """Reruns the cases ``names`` (all of them when empty) and rewrites their ``tests/golden/`` files."""
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; the cases are {list(CASES)}")
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        enable_compile_cache(Path(tmp) / "xla")
        data = write_data(Path(tmp) / "data")
        for name in names or CASES:
            golden_path(name).write_text(dumps(run_case(name, data, Path(tmp) / name)))
            print(f"recorded {golden_path(name)}", flush=True)
        disable_compile_cache()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python tests/test_golden.py --record [CASE ...]   (rewrites tests/golden/; see the docstring)")
    record(sys.argv[2:])
