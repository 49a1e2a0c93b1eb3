"""`zojax finetune` on two processes (loopback, gloo CPU collectives, 2 devices each).

The same command runs in two subprocesses with ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES``
/ ``JAX_PROCESS_ID`` and ``--mesh data=2,fsdp=2``: the batch's rows split over the processes and
every parameter FSDP-sharded across both (each layer's forward all-gathers weights across them).

* against the single-process run of the same configuration (in this process, one device): losses
  to 1e-6 and projected gradients to ``2·1e-6 / 2ε`` (two losses within 1e-6, divided by 2ε), the
  final parameters to 1e-6, dev and test metrics equal;
* process 0 alone writes the logs and the results; the checkpoint holds both processes' shards;
* SIGTERM to process 1 alone mid-run: both processes agree to stop at the same step, checkpoint and
  exit with 128 + 15; ``--resume`` on both finishes the run with final parameters and losses
  bitwise equal to the uninterrupted two-process run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._runs import assert_metrics_agree, assert_params_agree, final_params, initial_params
from tests.test_golden import LR, make_config, write_data
from zojax.train import Trainer, read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
EPS = 1e-2
TOL = 1e-6
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _over() -> dict[str, Any]:
    return {"optim__steps": STEPS, "optim__eps": EPS}


def _argv(data_dir: Path, out: Path) -> list[str]:
    """The CLI form of ``make_config(data_dir, out, **_over())``."""
    return [
        "finetune", "--model", "random:tiny", "--task", "sst2", "--data-dir", str(data_dir),
        "--num-train", "8", "--num-dev", "4", "--num-test", "4", "--max-new-tokens", "4",
        "--method", "mezo", "--lr", str(LR["mezo"]), "--eps", str(EPS), "--batch-size", "4",
        "--steps", str(STEPS), "--eval-every", "2", "--checkpoint-every", "0", "--checkpoint-minutes", "0",
        "--no-progress", "--seed", "0", "--mesh", "data=2,fsdp=2", "--out", str(out),
    ]  # fmt: skip


def _launch(argv: list[str], log: Path) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
            "JAX_NUM_CPU_DEVICES": "2",
            "XLA_FLAGS": "",
            "ZOJAX_MESH": "",
        }
        out = open(f"{log}.p{i}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen([sys.executable, "-m", "zojax.cli", *argv], cwd=REPO, env=env,
                                      stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
    return procs


def _wait(procs: list[subprocess.Popen], log: Path) -> list[int]:
    deadline = time.monotonic() + TIMEOUT_S
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            logs = "\n".join(Path(f"{log}.p{i}.log").read_text()[-3000:] for i in range(2))
            pytest.fail(f"the two processes did not finish in {TIMEOUT_S}s:\n{logs}")
    return codes


def _wait_for_first_evaluation(procs: list[subprocess.Popen], log0: Path) -> None:
    """Returns once process 0 has printed its step-0 dev evaluation (the processes are in step)."""
    deadline = time.monotonic() + TIMEOUT_S
    while "dev accuracy @ step 0" not in (log0.read_text() if log0.exists() else ""):
        assert time.monotonic() < deadline and procs[0].poll() is None, log0.read_text()[-2000:]
        time.sleep(0.2)


def _numbers(metrics: list[dict]) -> list[dict]:
    keep = ("event", "step", "loss", "projected_grad", "dev_loss", "dev_accuracy", "test_loss", "test_accuracy")
    return [{k: r[k] for k in keep if k in r} for r in metrics]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multihost_trainer")
    data = write_data(root / "data")
    single_out = root / "single"
    cfg = make_config(data, single_out, run__mesh="none", **_over())
    Trainer(cfg, log=lambda m: None).run()
    multi_out = root / "multi"
    codes = _wait(_launch(_argv(data, multi_out), root / "multi"), root / "multi")
    return {"root": root, "data": data, "cfg": cfg, "single": single_out, "multi": multi_out, "codes": codes}


@pytest.mark.slow
def test_two_processes_equal_one(runs: dict[str, Any]) -> None:
    assert runs["codes"] == [0, 0], [Path(f"{runs['root'] / 'multi'}.p{i}.log").read_text()[-2000:] for i in range(2)]
    p0 = Path(f"{runs['root'] / 'multi'}.p0.log").read_text()
    p1 = Path(f"{runs['root'] / 'multi'}.p1.log").read_text()
    assert "mesh: data=2,fsdp=2 over 4 cpu devices" in p0 and "results:" in p0
    assert "[zojax]" not in p1  # process 1 prints nothing of its own
    single = read_metrics(runs["single"] / "metrics.jsonl")
    multi = read_metrics(runs["multi"] / "metrics.jsonl")
    assert_metrics_agree(single, multi, EPS, TOL)
    single_params, multi_params = final_params(runs["single"], runs["cfg"]), final_params(runs["multi"], runs["cfg"])
    assert_params_agree(single_params, multi_params, initial_params(runs["cfg"]), TOL)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_and_resume_is_bitwise(runs: dict[str, Any]) -> None:
    root, out = runs["root"], runs["root"] / "killed"
    procs = _launch(_argv(runs["data"], out), root / "killed")
    log0 = Path(f"{root / 'killed'}.p0.log")
    _wait_for_first_evaluation(procs, log0)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 learns it through the agreement
    codes = _wait(procs, root / "killed")
    assert codes == [128 + signal.SIGTERM] * 2, (codes, log0.read_text()[-2000:])
    stopped = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "train"]
    assert len(stopped) < STEPS
    codes = _wait(_launch([*_argv(runs["data"], out), "--resume"], root / "resumed"), root / "resumed")
    assert codes == [0, 0], Path(f"{root / 'resumed'}.p0.log").read_text()[-2000:]
    assert _numbers(read_metrics(out / "metrics.jsonl")) == _numbers(read_metrics(runs["multi"] / "metrics.jsonl"))
    resumed, uninterrupted = final_params(out, runs["cfg"]), final_params(runs["multi"], runs["cfg"])
    for k in uninterrupted:
        np.testing.assert_array_equal(resumed[k], uninterrupted[k], err_msg=k)


@pytest.mark.slow
def test_a_process_that_dies_ends_the_others_with_one_line(runs: dict[str, Any]) -> None:
    """kill -9 of process 1: process 0's next collective fails; it says so in one line and exits
    at once (not after JAX's ~100 s heartbeat timeout and a C++ abort)."""
    root, out = runs["root"], runs["root"] / "dead"
    procs = _launch(_argv(runs["data"], out), root / "dead")
    log0 = Path(f"{root / 'dead'}.p0.log")
    _wait_for_first_evaluation(procs, log0)
    procs[1].kill()
    killed_at = time.monotonic()
    code = procs[0].wait(timeout=TIMEOUT_S)
    procs[1].wait()
    text = log0.read_text()
    assert code == 1, text[-2000:]
    assert time.monotonic() - killed_at < 60  # well under the heartbeat timeout
    line = next(x for x in text.splitlines() if x.startswith("zojax finetune: error: process 0 of 2:"))
    assert f"zojax finetune --out {out} --resume" in line
    assert "Traceback" not in text
