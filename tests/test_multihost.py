"""Multi-host: two JAX processes on loopback (gloo CPU collectives) run a sharded ZO step.

Two subprocesses each call ``jax.distributed.initialize("127.0.0.1:PORT", num_processes=2,
process_id=i)`` (through :func:`zojax.distributed.initialize`) with 2 CPU devices each, build one
global ``("data", "fsdp") = (1, 4)`` mesh over the 4 devices of both processes, FSDP-shard the tiny
Llama's parameters and the batch over all 4 devices (so every layer's forward all-gathers weights
across the two processes and the loss reduces across them), and run 3 MeZO steps with on-the-fly
perturbation. A third subprocess runs the same 3 steps unsharded on one device. The test compares
what the processes write (``python experiments/multihost_smoke.py --out``). jaxlib 0.10.2's CPU client has
gloo collectives built in (``jax_cpu_collectives_implementation="gloo"``, the default), and
``jax_num_cpu_devices=2`` gives each process two devices; no MPI or extra package is needed.

MeZO only: compiling a MeZO-GV step of the tiny model takes ~25-50 s per process on the shared
2-core CPU (M unrolled candidate draws), which would not fit the test's budget; the multi-host
mechanics are the same (``experiments/multihost_smoke.py --runs tiny:mezo-gv`` on each process), and
GV's sharding invariance is tested on 8 local devices in ``test_sharding.py``.

Equalities asserted, and why:

* the two processes' gathered results are bitwise equal (they hold one global result);
* parameters: multi-host vs single device to ``rtol = atol = 1e-6``; the noise is bitwise
  sharding-invariant, so only the summation order of sharded reductions differs (float32, ~1e-7);
* losses: ``rtol = 1e-6`` (~12 ulp of a loss of ~5.6; measured: 0 to 2 ulp);
* projected gradients ``(L₊ − L₋) / 2ε``: ``atol = 8 ulp(L) / 2ε`` (the loss's rounding difference
  amplified by ``1/2ε``; measured 4.8e-5, a quarter of it); the learning rate 1e-3 keeps
  ``lr · Δg · z`` (measured 2.2e-7) under the parameters' 1e-6;
* the steps did move the parameters (by ≫ the tolerance), and no step was skipped as non-finite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import zojax.models as zm
from zojax import distributed

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "multihost_smoke.py"
STEPS = 3
EPS = 1e-2
TIMEOUT_S = 240  # hard limit for the whole run; 20-35 s on the shared 2-core CPU
RUN = "tiny:mezo"
COMMON = ["--runs", RUN, "--steps", str(STEPS), "--eps", str(EPS), "--lr", "1e-3"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment minus this test session's forced device count and any distributed settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)
        and k != distributed.ENV_AUTO
    }
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def stderr_tail(text: str, lines: int = 40) -> str:
    """The last lines of a child's stderr without gloo's connection chatter."""
    kept = [line for line in text.splitlines() if not line.startswith("[Gloo]")]
    return "\n".join(kept[-lines:])


def run_children(
    cmds: dict[str, list[str]], logs: Path, script: Path = SMOKE, envs: dict[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """Runs ``script`` with each command concurrently (``envs``: extra environment by child); fails with
    every child's stderr if one fails or time runs out."""
    procs: dict[str, subprocess.Popen] = {}
    files = {}
    for name, cmd in cmds.items():
        files[name] = (open(logs / f"{name}.out", "w+"), open(logs / f"{name}.err", "w+"))  # noqa: SIM115
        procs[name] = subprocess.Popen(
            [sys.executable, str(script), *cmd],
            cwd=REPO,
            env={**child_env(), **(envs or {}).get(name, {})},
            stdout=files[name][0],
            stderr=files[name][1],
        )
    deadline = time.monotonic() + TIMEOUT_S
    failure = ""
    try:
        while any(p.poll() is None for p in procs.values()):
            bad = [n for n, p in procs.items() if p.returncode not in (None, 0)]
            if bad:
                failure = f"child {bad[0]} exited with {procs[bad[0]].returncode}"
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {TIMEOUT_S} s"
                break
            time.sleep(0.2)
        else:
            bad = [n for n, p in procs.items() if p.returncode != 0]
            failure = f"child {bad[0]} exited with {procs[bad[0]].returncode}" if bad else ""
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    out = {}
    report = []
    for name, (fo, fe) in files.items():
        fo.seek(0)
        fe.seek(0)
        out[name] = fo.read()
        report.append(f"--- {name} (rc={procs[name].returncode}) stderr:\n{stderr_tail(fe.read())}")
        fo.close()
        fe.close()
    if failure:
        pytest.fail(f"multi-host run failed: {failure}\n" + "\n".join(report), pytrace=False)
    return out


def test_two_process_sharded_step_equals_single_process(tmp_path: Path) -> None:
    port = free_port()
    mh = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--num-cpu-devices", "2"]
    mh += ["--data", "1", "--fsdp", "4", "--timeout", "120", *COMMON, "--out", str(tmp_path / "mh")]
    run_children(
        {
            "process0": [*mh, "--process-id", "0"],
            "process1": [*mh, "--process-id", "1"],
            "single": ["--single-device", *COMMON, "--out", str(tmp_path / "ref")],
        },
        tmp_path,
    )
    p0, p1 = np.load(tmp_path / "mh.p0.npz"), np.load(tmp_path / "mh.p1.npz")
    ref = np.load(tmp_path / "ref.p0.npz")
    # A genuine 2-process job: 4 global devices, 2 local; arrays live on both processes.
    for i, p in enumerate((p0, p1)):
        assert int(p["meta/process_count"]) == 2 and int(p["meta/process_index"]) == i
        assert int(p["meta/device_count"]) == 4 and int(p["meta/local_device_count"]) == 2
        assert bool(p[f"{RUN}/param_spans_processes"])
    assert int(ref["meta/process_count"]) == 1 and int(ref["meta/device_count"]) == 1
    assert sorted(p0.files) == sorted(p1.files)
    for k in p0.files:
        if not k.startswith("meta/"):
            np.testing.assert_array_equal(p0[k], p1[k], err_msg=f"process 0 vs 1: {k}")

    assert int(p0[f"{RUN}/nonfinite"]) == 0 and int(ref[f"{RUN}/nonfinite"]) == 0
    losses, ref_losses = p0[f"{RUN}/losses"], ref[f"{RUN}/losses"]
    assert losses.shape == (STEPS,) and np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6, atol=0)
    ulp = float(np.spacing(np.float32(np.max(np.abs(ref_losses)))))
    np.testing.assert_allclose(
        p0[f"{RUN}/projected_grads"], ref[f"{RUN}/projected_grads"], rtol=0, atol=8 * ulp / (2 * EPS)
    )

    init = {
        f"{RUN}/params{jax.tree_util.keystr(k)}": np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(zm.init_params(zm.llama_config("tiny"), 0))
    }
    param_keys = [k for k in ref.files if k.startswith(f"{RUN}/params")]
    assert sorted(param_keys) == sorted(init)
    moved = max(float(np.max(np.abs(ref[k] - init[k]))) for k in param_keys)
    assert moved > 2e-5, f"the steps barely moved the parameters ({moved}); the comparison would be vacuous"
    worst = max(float(np.max(np.abs(p0[k] - ref[k]))) for k in param_keys)
    dpg = np.max(np.abs(p0[f"{RUN}/projected_grads"] - ref[f"{RUN}/projected_grads"]))
    print(
        f"moved {moved:.2e}; multi-host vs single device: max |Δθ| {worst:.2e}, max |Δg| {dpg:.2e}, "
        f"losses {losses} vs {ref_losses}"
    )
    for k in param_keys:
        np.testing.assert_allclose(p0[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(tmp_path: Path) -> None:
    """Candidate scoring and greedy generation with rows split over two processes (``data=2,fsdp=2``,
    3-row passes rounded up to 4): both processes fetch the same results, equal to one device's
    (scores to 1e-6, generations and metrics exactly)."""
    job = {distributed.ENV_COORDINATOR: f"127.0.0.1:{free_port()}", distributed.ENV_NUM_PROCESSES: "2"}
    mh = ["--num-cpu-devices", "2", "--mesh", "data=2,fsdp=2", "--out", str(tmp_path / "mh")]
    run_children(
        {"process0": mh, "process1": mh, "single": ["--mesh", "none", "--out", str(tmp_path / "ref")]},
        tmp_path,
        REPO / "experiments" / "multihost_eval_smoke.py",
        {f"process{i}": {**job, distributed.ENV_PROCESS_ID: str(i)} for i in range(2)},
    )
    p0, p1, ref = (json.loads((tmp_path / name).read_text()) for name in ("mh.p0.json", "mh.p1.json", "ref.p0.json"))
    assert (p0["process_count"], p0["mesh"], ref["process_count"], ref["mesh"]) == (2, "data=2,fsdp=2", 1, "none")
    assert p0 == p1
    assert (p0["forward_passes"], ref["forward_passes"]) == (4, 5)  # 14 sequences in passes of 4 / 3 rows
    assert p0["generations"] == ref["generations"] and len(set(ref["generations"])) >= 5
    assert (p0["f1"], p0["predictions"], p0["accuracy"]) == (ref["f1"], ref["predictions"], ref["accuracy"])
    np.testing.assert_allclose(np.asarray(p0["scores"]), np.asarray(ref["scores"]), rtol=0, atol=1e-6)


def test_initialize_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(distributed.ENV_AUTO, raising=False)
    assert distributed.initialize(cpu_collectives=None) is False  # nothing configured: single process
    assert distributed.initialize("127.0.0.1:1", 1, 0, cpu_collectives=None) is False
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1", 2, cpu_collectives=None)
    with pytest.raises(ValueError, match=r"not in \[0, 2\)"):
        distributed.initialize("127.0.0.1:1", 2, 2, cpu_collectives=None)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        distributed.initialize(cpu_collectives=None)
    assert not jax.distributed.is_initialized()


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_global_mesh_shapes() -> None:
    m = distributed.global_mesh()
    assert dict(m.shape) == {"data": 1, "fsdp": 8}
    assert dict(distributed.global_mesh(data=2).shape) == {"data": 2, "fsdp": 4}
    with pytest.raises(ValueError, match="devices"):
        distributed.global_mesh(data=3, fsdp=3)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = distributed.put_batch({"x": x}, distributed.global_mesh(data=2))["x"]
    assert len(g.sharding.device_set) == 8 and g.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(distributed.gather(g), x)
    h = distributed.put_process_batch({"x": x}, distributed.global_mesh(data=2))["x"]  # one process: all rows
    assert h.sharding == g.sharding
    np.testing.assert_array_equal(distributed.gather(h), x)
