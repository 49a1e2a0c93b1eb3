"""``zojax finetune`` on the command line: ``--help``, ``--dry-run``, clear errors for bad arguments, an
existing run needs ``--resume``, ``zojax tasks``, and the experiments script is the same entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._trainer import REPO, run_cli
from zojax.cli import finetune_main


def test_help_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    from zojax.registry import METHODS

    code, out, _ = run_cli(capsys, "finetune", "--help")
    assert code == 0
    for name in [*METHODS, "ft", "zero-shot", "icl"]:
        assert name in out
    for flag in ["--forward-budget", "--resume", "--tuning", "--elite-ratio", "--dry-run"]:
        assert flag in out
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and all(name in out for name in METHODS) and "6 fwd/step" in out
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "finetune" in out


def test_dry_run(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "never"
    code, out, _ = run_cli(
        capsys, "finetune", "--model", "random:tiny", "--data-dir", str(data_dir),
        "--forward-budget", "100",
        "--num-candidates", "3", "--out", str(out_dir), "--dry-run",
    )  # fmt: skip
    assert code == 0, out
    assert "dry run OK: mezo-gv on sst2, 20 steps x 5 forwards = 100 forward passes" in out
    plan = json.loads(out[: out.rindex("}") + 1])
    assert plan["config"]["optim"]["lr"] == 3e-5 and plan["config"]["optim"]["eps"] == 1e-3
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "adam"], "--method: invalid choice 'adam'"),
        (["--tuning", "qlora"], "--tuning"),
        (["--steps", "10", "--forward-budget", "10"], "not allowed with argument"),
        (["--forward-budget", "5"], "--forward-budget: 5 forward passes buy no step"),
        (["--steps", "0"], "--steps: expected an integer >= 1"),
        (["--batch-size", "0"], "--batch-size"),
        (["--eps", "0"], "--eps: the perturbation scale must be > 0"),
        (["--lr", "nan"], "--lr"),
        (["--num-candidates", "1"], "--num-candidates"),
        (["--elite-ratio", "0.1"], "--elite-ratio"),
        (["--task", "imdb"], "--task: unknown task 'imdb'"),
        (["--resume"], "--resume: give the run directory with --out"),
        (["--model", "/no/such/model", "--dry-run"], "--model"),
        (["--lr", "fast"], "argument --lr: invalid float value"),
        (["--steps", "ten"], "argument --steps: invalid int value"),
    ],
)
def test_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, "finetune", *argv)
    assert code == 2
    assert message in err, err


def test_tasks_subcommand(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "tasks", "--data-dir", str(data_dir), "--source", "local")
    assert code == 0 and "sst2" in out and "MISSING" in out


def test_finetune_main_is_the_experiments_script(capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "experiments" / "finetune.py").read_text()
    assert "finetune_main" in text
    with pytest.raises(SystemExit):
        finetune_main(["--help"])
    assert "--forward-budget" in capsys.readouterr().out
