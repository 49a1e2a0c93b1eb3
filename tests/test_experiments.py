"""The benchmark scripts run end to end on a tiny model and write the JSON other tools parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_FIELDS = {
    "method",
    "forwards_per_step",
    "forward_s",
    "step_s",
    "step_over_forwards",
    "temp_over_param_bytes",
    "peak_rss_over_forward",
}


def _run(script: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users run it
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


FORWARDS_PER_STEP = {"mezo": 2, "mezo-gv-m2": 4}


# the distribution only changes the draws: the guided method's row is checked under one of them
@pytest.mark.parametrize(("distribution", "methods"), [("gaussian", ["mezo", "mezo-gv-m2"]), ("rademacher", ["mezo"])])
def test_bench_writes_one_row_per_method(tmp_path: Path, distribution: str, methods: list[str]) -> None:
    out = tmp_path / "bench.json"
    _run(
        "bench.py",
        *("--model", "tiny", "--batch-size", "2", "--seq-len", "8", "--repeats", "1"),
        *("--methods", ",".join(methods), "--distribution", distribution, "--json", str(out)),
    )
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == methods
    for row in rows:
        forwards = FORWARDS_PER_STEP[row["method"]]
        assert set(row) >= BENCH_FIELDS, BENCH_FIELDS - set(row)
        assert row["forwards_per_step"] == forwards
        assert row["distribution"] == distribution
        assert row["step_s"] > 0 and row["forward_s"] > 0
        expected = row["step_s"] / (forwards * row["forward_s"])
        assert row["step_over_forwards"] == pytest.approx(expected)


def test_bench_dense_noise_switches_the_low_rank_forward_off(tmp_path: Path) -> None:
    """``--dense-noise`` (the LOW_RANK_DENSE A/B): SubZero rows run either way, and the rows say which;
    the step's temp bytes differ, since only the low-rank form avoids the ``m×n`` kernel noise."""
    temps = {}
    for flag in ((), ("--dense-noise",)):
        out = tmp_path / f"bench{len(flag)}.json"
        _run(
            "bench.py",
            *("--model", "tiny", "--batch-size", "2", "--seq-len", "8", "--repeats", "1"),
            *("--methods", "subzero-r4", "--json", str(out), *flag),
        )
        (row,) = json.loads(out.read_text())
        assert row["method"] == "subzero-r4" and row["low_rank_dense"] is (not flag)
        assert row["step_s"] > 0
        temps[bool(flag)] = row["temp_over_param_bytes"]
    assert temps[True] != temps[False], temps


def test_bench_draws_splits_the_step(tmp_path: Path) -> None:
    out = tmp_path / "draws.json"
    _run(
        "bench_draws.py",
        *("--model", "tiny", "--batch-size", "2", "--seq-len", "8", "--repeats", "1"),
        *("--json", str(out)),
    )
    rows = json.loads(out.read_text())
    assert [r["distribution"] for r in rows] == ["gaussian", "rademacher"]
    for r in rows:
        predicted = (2 * r["perturbed_forward_s"] + r["update_s"]) / (2 * r["forward_s"])
        assert r["predicted_mezo_step_over_forwards"] == pytest.approx(predicted)
