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

Bitwise XLA:CPU results depend on the CPU's instruction set (vector width, FMA) and on the
jax/jaxlib build, so the goldens come in sets, one per machine: ``tests/golden/<set>/`` holds the
cases and ``machine.json``, the :func:`machine` fingerprint they were recorded on. On a machine
whose fingerprint has a set, every number must be identical (the real check: a change of code must
not move them). On any other machine the run is compared with every set at the level of float32
roundoff (:func:`roundoff_mismatches`): the discrete outcomes (events, steps, forwards, selected
steps) exactly, each float (accuracies too) within ``ROUNDOFF`` of the largest magnitude its field takes in
the case, and the checkpoint digests not at all. To add this machine's bitwise set, from the
repository root::

    python tests/test_golden.py --record      # or: python -m tests.test_golden --record
    python tests/test_golden.py --record subzero-gv   # only the cases named (a new case)

which writes ``tests/golden/<this machine's set>/``; commit it. After a deliberate change of the
arithmetic, re-record every set you can reach and delete the others.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import random
import re
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


ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_bf16",
)  # fmt: skip
# The cross-machine tolerance, as a fraction of the largest magnitude a field takes in the case. A
# different vector width reorders float32 sums, so each loss moves by a few ulps (2⁻²⁴ ≈ 6e-8
# relative); the projected gradient (l₊ − l₋)/(2ε) turns that into an absolute error of a few
# ulp(l)/ε (ε = 1e-2 here), and three updates carry it into the weights. Measured between an AMD
# EPYC (AVX2) and the legacy set's machine, as fractions of the field's scale: at most 7.1e-5 for
# projected gradients, 4.5e-7 for the weights' sums, 4.1e-7 for losses. A real change of the
# arithmetic (a key, a sign, a scale, a selection) moves a field by a sizeable fraction of its scale.
ROUNDOFF = 1e-3


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def machine() -> dict[str, Any]:
    """The fingerprint a golden set is tied to: jax and jaxlib versions, the CPU (vendor, family,
    model, name) and the instruction-set extensions XLA:CPU may use (read once per process)."""
    return json.loads(_machine_json())


@functools.cache
def _machine_json() -> str:
    import jaxlib

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cpu = [info[k] for k in ("vendor_id", "cpu family", "model", "model name") if k in info]
    return json.dumps({
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "cpu": " / ".join(cpu) if cpu else f"{platform.machine()} {platform.processor()}",
        "isa": [f for f in ISA_FLAGS if f in flags],
    })  # fmt: skip


def set_name(fingerprint: dict[str, Any]) -> str:
    """A readable, unique folder name for a fingerprint."""
    digest_ = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]
    vendor = re.sub(r"[^a-z0-9]+", "-", fingerprint["cpu"].split(" / ")[0].lower()).strip("-") or "cpu"
    isa = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in fingerprint["isa"]), "base")
    return f"{vendor}-{isa.replace('_', '')}-jax{fingerprint['jax']}-{digest_}"


def golden_sets() -> list[Path]:
    """Every recorded set's folder."""
    return sorted(p for p in GOLDEN.iterdir() if (p / "machine.json").is_file())


def this_machines_set() -> Path | None:
    """The set recorded on a machine with this machine's fingerprint, if any."""
    here = machine()
    return next((s for s in golden_sets() if json.loads((s / "machine.json").read_text()) == here), None)


def golden_path(name: str, golden_set: Path | None = None) -> Path:
    return (golden_set or GOLDEN / set_name(machine())) / f"{name}.json"


def _flatten(x: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(x, dict):
        for k, v in x.items():
            _flatten(v, f"{path}.{k}", out)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = x
    return out


def _field(path: str) -> str:
    """The field a value belongs to: list indices and parameter-leaf names dropped."""
    path = re.sub(r"\[\d+\]", "[]", path)
    return re.sub(r"(param_sums)\..*", r"\1", path)


def roundoff_mismatches(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Where ``got`` and ``expected`` differ by more than float32 roundoff across machines.

    Every non-float value (and the structure) must be equal, every float within ``ROUNDOFF`` times
    the largest magnitude of its field in ``expected`` (an accuracy over ``n`` examples moves by at
    least ``1/n`` when a prediction changes, far more). The checkpoints' digests are skipped.
    """
    a, b = _flatten(got, "", {}), _flatten(expected, "", {})
    a = {k: v for k, v in a.items() if not k.endswith((".weights.params", ".weights.opt_state"))}
    b = {k: v for k, v in b.items() if not k.endswith((".weights.params", ".weights.opt_state"))}
    if set(a) != set(b):
        return [f"fields differ: {sorted(set(a) ^ set(b))[:5]}"]
    scale: dict[str, float] = {}
    for k, v in b.items():
        if isinstance(v, float):
            scale[_field(k)] = max(scale.get(_field(k), 0.0), abs(v))
    bad = []
    for k, v in b.items():
        w = a[k]
        exact = not isinstance(v, float)
        if exact and w != v:
            bad.append(f"{k}: {w!r} != {v!r}")
        elif not exact and not (isinstance(w, float) and abs(w - v) <= ROUNDOFF * scale[_field(k)]):
            bad.append(f"{k}: {w!r} vs {v!r} (tolerance {ROUNDOFF * scale[_field(k)]:.2e})")
    return bad


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


@pytest.fixture(scope="module")
def golden_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture data (the session's compilation cache is on: ``conftest.compile_cache``)."""
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str, golden_env: Path, tmp_path: Path) -> None:
    got = json.loads(dumps(run_case(name, golden_env, tmp_path / "run")))  # the same float round trip
    exact = this_machines_set()
    if exact is not None:  # bit for bit
        expected = json.loads(golden_path(name, exact).read_text())
        assert got["metrics"] == expected["metrics"], f"{name}: metrics.jsonl changed"
        assert got["results"] == expected["results"], f"{name}: results.json changed"
        assert got.get("weights") == expected.get("weights"), f"{name}: final weights changed"
        return
    # No set of this machine: within float32 roundoff of some recorded set.
    found = {s.name: roundoff_mismatches(got, json.loads(golden_path(name, s).read_text())) for s in golden_sets()}
    assert found, "no golden set recorded; see the module docstring"
    nearest = min(found, key=lambda s: len(found[s]))
    assert not found[nearest], (
        f"{name}: differs from every golden set by more than roundoff; nearest {nearest}: {found[nearest][:5]} "
        f"(this machine {machine()} has no bitwise set: `python tests/test_golden.py --record` adds one)"
    )


@pytest.mark.parametrize("golden_set", golden_sets(), ids=lambda p: p.name)
def test_resume_equals_the_uninterrupted_run(golden_set: Path) -> None:
    """In every set, the recorded resume is the recorded uninterrupted ``mezo`` run (same config)."""
    a, b = (json.loads(golden_path(n, golden_set).read_text()) for n in ("mezo", "resume"))
    assert a == b


def test_every_set_has_every_case_and_its_machine() -> None:
    sets = golden_sets()
    assert sets
    for s in sets:
        assert sorted(p.stem for p in s.glob("*.json") if p.name != "machine.json") == sorted(CASES), s.name
        assert set(json.loads((s / "machine.json").read_text())) >= {"jax", "jaxlib", "cpu", "isa"}, s.name


@pytest.mark.parametrize("name", list(CASES))
def test_sets_of_different_machines_agree_within_roundoff(name: str) -> None:
    """Every pair of recorded sets, from machines with different instruction sets, passes the
    cross-machine comparison: the positive control for ``ROUNDOFF`` on real roundoff."""
    records = {s.name: json.loads(golden_path(name, s).read_text()) for s in golden_sets()}
    for a in records:
        for b in records:
            if a != b:
                assert roundoff_mismatches(records[a], records[b]) == [], (name, a, b)


def test_roundoff_comparison_catches_a_real_change() -> None:
    """Negative controls for the cross-machine comparison, on a recorded case: roundoff-sized noise
    passes; a flipped projected-gradient sign, a 1% change of a loss or a changed accuracy fails."""
    expected = json.loads(golden_path("mezo", golden_sets()[0]).read_text())
    rng = np.random.default_rng(0)

    def jitter(x: Any, rel: float) -> Any:  # every float moved by about `rel` of itself
        if isinstance(x, dict):
            return {k: jitter(v, rel) for k, v in x.items()}
        if isinstance(x, list):
            return [jitter(v, rel) for v in x]
        return x * (1 + rel * rng.standard_normal()) if isinstance(x, float) else x

    assert roundoff_mismatches(jitter(expected, 1e-6), expected) == []
    train = next(i for i, r in enumerate(expected["metrics"]) if r["event"] == "train")
    for mutate in (
        lambda r: r["metrics"][train].__setitem__("projected_grad", -r["metrics"][train]["projected_grad"]),
        lambda r: r["metrics"][train].__setitem__("loss", r["metrics"][train]["loss"] * 1.01),
        lambda r: r["metrics"][0].__setitem__("dev_accuracy", r["metrics"][0]["dev_accuracy"] - 0.25),
    ):
        changed = json.loads(json.dumps(expected))
        mutate(changed)
        assert roundoff_mismatches(changed, expected) != []


def record(names: list[str]) -> None:
    """Reruns the cases ``names`` (all of them when empty) and rewrites their ``tests/golden/`` files."""
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; the cases are {list(CASES)}")
    target = GOLDEN / set_name(machine())
    target.mkdir(parents=True, exist_ok=True)
    (target / "machine.json").write_text(json.dumps(machine(), indent=1, sort_keys=True) + "\n")
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
