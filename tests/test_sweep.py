"""``zojax sweep`` and ``zojax table`` end to end on the tiny model, and the committed specs.

* a 2 × 2 × 2 sweep (method × learning rate × seed) stopped after one step in two of its cells, then
  completed (the stopped cells resumed, the others started): a resumed cell equals the
  uninterrupted run of its ``--print-commands`` line;
  a real SIGTERM stops the running cell with a checkpoint and the next invocation finishes it;
  a SIGUSR1 (or ``--drain-after``) drains the sweep: the running cell finishes, no new cell starts;
  the dry run times the remaining cells by the finished ones of the same task and method;
* the table's numbers equal ones computed by hand from fixture runs, the training-loss tails and
  their paired reductions too;
* ``lr_from``: a spec waits for its pilot, then runs at the pilot's choice in the pilot's cell ids,
  and refuses a choice at the edge of the grid;
* the paper spec's dry run: 627 cells (SubZero rows included), every method the same forward budget;
* the CPU specs resolve, give every ZO method the same budget, and their ``lr_from`` choices are the
  committed pilot's.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zojax import sweep as S
from zojax import table as T
from zojax.cli import config_from_args, finetune_main
from zojax.train import strip_timing
from zojax.train.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _sst2(d: Path) -> Path:
    (d / "SST-2").mkdir(parents=True, exist_ok=True)
    rows = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} film {i}\t{i % 2}" for i in range(40)]
    (d / "SST-2" / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "SST-2" / "dev.tsv").write_text("\n".join(rows[:13]) + "\n")
    return d


def _spec(tmp: Path, data: Path, steps: int = 3, **base: object) -> Path:
    spec = {
        "name": "tiny",
        "out": str(tmp / "out"),
        "base": {
            "model.name": "random:tiny",
            "data.data_dir": str(data),
            "data.num_train": 16,
            "data.num_dev": 4,
            "data.num_test": 4,
            "optim.batch_size": 4,
            "optim.steps": steps,
            "eval.eval_every": 1,
            "run.checkpoint_every": 1,
            **base,
        },
        "grid": {"run.seed": [0, 1]},
        "methods": [
            {"label": "MeZO", "optim.method": "mezo", "optim.lr": [1e-3, 1e-2]},
            {"label": "MeZO-GV", "optim.method": "mezo-gv", "optim.num_candidates": 2, "optim.lr": [1e-3, 1e-2]},
        ],
    }
    path = tmp / "tiny.json"
    path.write_text(json.dumps(spec))
    return path


def _zojax(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zojax.cli", *argv], capture_output=True, text=True, cwd=REPO, **kw)


def test_sweep_stop_resume_and_print_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zojax.cli import sweep_main

    spec_path = _spec(tmp_path, _sst2(tmp_path / "data"))
    spec = S.load_spec(spec_path)
    cells = spec.cells()
    assert len(cells) == 8 and len({c.id for c in cells}) == 8

    assert sweep_main([str(spec_path), "--dry-run", "--forward-seconds", "0.5"]) == 0
    dry = capsys.readouterr().out
    assert "8 cells" in dry and "MeZO: 4 cells, 3 steps x 2 forwards/step = 6 forward passes" in dry
    assert "MeZO-GV: 4 cells, 3 steps x 4 forwards/step = 12 forward passes" in dry
    assert "estimated training time of the remaining cells: 0.0 h" in dry

    assert sweep_main([str(spec_path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all(line.startswith("zojax finetune ") for line in lines)
    for cell, line in zip(cells, lines, strict=True):  # each line is exactly the cell's configuration
        assert config_from_args(shlex.split(line)[2:]) == cell.config(spec.out)

    # two cells (one per method) stopped after one step; the other six not started
    stopped = [c for c in cells if c.id.endswith("lr-0.01_seed-1")]
    assert len(stopped) == 2 and stopped[-1] == cells[-1]
    first = _zojax(
        "sweep", str(spec_path), "--no-progress", "--jobs", "2", "--stop-after", "1", "--only", "lr-0.01_seed-1"
    )
    assert first.returncode == 128 + signal.SIGTERM, first.stdout + first.stderr
    assert "2 interrupted" in first.stdout
    assert [S.cell_status(spec.out / c.id) for c in cells] == ["started" if c in stopped else "new" for c in cells]

    # the next invocation resumes the stopped cells and runs the new ones
    second = _zojax("sweep", str(spec_path), "--no-progress", "--jobs", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "8 done now" in second.stdout
    assert all((f"{c.id}: resumed" in second.stdout) == (c in stopped) for c in cells)
    assert all(S.cell_status(spec.out / c.id) == "done" for c in cells)
    assert not any((spec.out / c.id / "checkpoints").exists() for c in cells)  # cleaned up
    assert all(("--resume" in (spec.out / c.id / "sweep.log").read_text()) == (c in stopped) for c in cells)

    assert sweep_main([str(spec_path), "--no-progress"]) == 0
    assert "8 already done" in capsys.readouterr().out

    # the stopped-and-resumed cell equals its printed command run without interruption
    ref = tmp_path / "ref"
    argv = shlex.split(lines[-1])[2:]
    argv[argv.index("--out") + 1] = str(ref)
    assert finetune_main([*argv, "--no-progress"]) == 0
    resumed = spec.out / cells[-1].id
    assert strip_timing(read_metrics(resumed / "metrics.jsonl")) == strip_timing(read_metrics(ref / "metrics.jsonl"))
    a, b = (json.loads((p / "results.json").read_text()) for p in (resumed, ref))
    assert a["test"]["value"] == b["test"]["value"] and a["selected_step"] == b["selected_step"]

    table = T.table_from_dirs([spec.out])
    assert set(table["labels"]) == {"MeZO", "MeZO-GV"} and table["tasks"] == ["sst2"]
    assert table["cells"]["sst2"]["MeZO"]["seeds"] == [0, 1]


def test_sigterm_stops_the_running_cell_and_the_next_invocation_finishes_it(tmp_path: Path) -> None:
    # long enough to be stopped mid-run; no evaluation or checkpoint per step (SIGTERM writes its own)
    spec_path = _spec(tmp_path, _sst2(tmp_path / "data"), steps=600, **{"eval.eval_every": 0,
                      "run.checkpoint_every": 0})  # fmt: skip
    spec = S.load_spec(spec_path)
    cell = spec.cells()[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zojax.cli", "sweep", str(spec_path), "--no-progress", "--only", cell.id],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics = spec.out / cell.id / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count('"train"') >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert S.cell_status(spec.out / cell.id) == "started"
    assert any((spec.out / cell.id / "checkpoints").glob("step_*"))
    done = _zojax("sweep", str(spec_path), "--no-progress", "--only", cell.id, timeout=900)
    assert done.returncode == 0, done.stdout
    res = json.loads((spec.out / cell.id / "results.json").read_text())
    assert res["status"] == "done" and res["steps"] == 600


def test_sigusr1_drains_the_sweep_the_running_cell_finishes_and_no_new_cell_starts(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, _sst2(tmp_path / "data"), steps=100, **{"eval.eval_every": 0,
                      "run.checkpoint_every": 0})  # fmt: skip
    spec = S.load_spec(spec_path)
    first, second = [c for c in spec.cells() if c.id.endswith("lr-0.001_seed-0")]  # MeZO, then MeZO-GV
    proc = subprocess.Popen(
        [sys.executable, "-m", "zojax.cli", "sweep", str(spec_path), "--no-progress", "--only", "lr-0.001_seed-0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    metrics = spec.out / first.id / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and '"train"' in metrics.read_text()):
        time.sleep(0.05)
    # to the whole process group, as a scheduler signals every process of a job: the running cell
    # (99 steps and its test evaluation to go) must not die of it
    os.killpg(proc.pid, signal.SIGUSR1)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out  # unfinished, so a chain (`&&`, `set -e`) stops here
    assert "SIGUSR1: 1 running cell(s) will finish; no new cell starts" in out
    assert "1 done now" in out and "1 not started" in out and "drained" in out
    assert f"{first.id}: started" in out and f"{first.id}: done (" in out and second.id not in out
    res = json.loads((spec.out / first.id / "results.json").read_text())
    assert res["status"] == "done" and res["steps"] == 100  # ran to its end, not stopped
    assert "--resume" not in (spec.out / first.id / "sweep.log").read_text()
    assert S.cell_status(spec.out / second.id) == "new" and not (spec.out / second.id).exists()


def test_drain_after_starts_no_cell_once_its_time_is_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zojax.cli import sweep_main
    from zojax.cli.sweep import parse_duration

    assert [parse_duration(t) for t in ("5400", "90m", "1h30m", "1.5h", "5400s")] == [5400.0] * 5
    for bad in ("", "soon", "1d", "-5", "h"):
        with pytest.raises(ValueError, match="--drain-after"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="--drain-after"):
        S.SweepRunner(S.load_spec(_spec(tmp_path, tmp_path)), drain_after=-1.0)

    spec_path = _spec(tmp_path, _sst2(tmp_path / "data"))
    assert sweep_main([str(spec_path), "--no-progress", "--drain-after", "0"]) == 128 + signal.SIGTERM
    out = capsys.readouterr()
    assert "--drain-after 0s reached" in out.err and "8 not started" in out.out and "drained" in out.out
    assert not S.load_spec(spec_path).out.exists()  # nothing started, nothing written
    with pytest.raises(SystemExit) as e:
        sweep_main([str(spec_path), "--drain-after", "tomorrow"])
    assert e.value.code == 2 and "--drain-after" in capsys.readouterr().err


# ---------------------------------------------------------------------- the table, by hand
def _fixture_run(root: Path, label: str, lr: float | None, seed: int, dev: float, test: float, dev_loss: float,
                 forwards: int = 120, wall: float = 60.0, task: str = "sst2", name: str | None = None,
                 eval_before: bool = True) -> None:  # fmt: skip
    d = root / (name or f"{task}_{label}_{lr}_{seed}")
    d.mkdir(parents=True)
    method = {"MeZO": "mezo", "MeZO-GV": "mezo-gv", "FT": "ft", "zero-shot": "zero-shot"}[label]
    config = {"optim": {"method": method, "lr": lr if lr is not None else 0.0, "num_candidates": 4},
              "model": {"tuning": "full"}, "run": {"seed": seed}}  # fmt: skip
    (d / "config.json").write_text(json.dumps({"config": config}))
    (d / "sweep_cell.json").write_text(json.dumps({"label": label}))
    before = {"event": "eval", "step": 0, "forwards": 0, "dev_accuracy": 0.5, "dev_loss": 0.7}
    (d / "metrics.jsonl").write_text(
        (json.dumps(before) + "\n" if eval_before else "")
        + json.dumps({"event": "eval", "step": 10, "forwards": forwards, "dev_accuracy": dev, "dev_loss": dev_loss})
        + "\n"
    )  # fmt: skip
    results = {"status": "done", "task": task, "selected_step": 10, "forwards": forwards, "wall_time": wall,
               "test": {"metric": "accuracy", "value": test, "n": 100}}  # fmt: skip
    (d / "results.json").write_text(json.dumps(results))


def test_table_numbers_equal_hand_computed_ones(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # MeZO: lr 1e-6 has mean dev 0.70, lr 1e-5 mean dev 0.65 -> 1e-6 is chosen
    for seed, (dev, test) in enumerate([(0.70, 0.80), (0.72, 0.84), (0.68, 0.82)]):
        _fixture_run(root, "MeZO", 1e-6, seed, dev, test, 0.5)
    for seed, (dev, test) in enumerate([(0.66, 0.90), (0.64, 0.91), (0.65, 0.92)]):
        _fixture_run(root, "MeZO", 1e-5, seed, dev, test, 0.4)
    # MeZO-GV: a tie in dev (0.70 both) is broken by the lower dev loss -> 2e-6
    for seed, (dev, test) in enumerate([(0.70, 0.81), (0.70, 0.86), (0.70, 0.80)]):
        _fixture_run(root, "MeZO-GV", 1e-6, seed, dev, test, 0.6)
    for seed, (dev, test) in enumerate([(0.71, 0.86), (0.69, 0.88), (0.70, 0.79)]):
        _fixture_run(root, "MeZO-GV", 2e-6, seed, dev, test, 0.3, wall=120.0)
    _fixture_run(root, "zero-shot", None, 0, 0.5, 0.55, 0.7, forwards=0)
    table = T.table_from_dirs([root])
    mezo, gv = table["cells"]["sst2"]["MeZO"], table["cells"]["sst2"]["MeZO-GV"]
    assert mezo["lr"] == 1e-6 and gv["lr"] == 2e-6
    assert mezo["test_mean"] == pytest.approx((0.80 + 0.84 + 0.82) / 3)
    assert mezo["test_std"] == pytest.approx(0.02)  # sample std of 0.80, 0.84, 0.82
    assert gv["test_mean"] == pytest.approx((0.86 + 0.88 + 0.79) / 3)
    m = (0.86 + 0.88 + 0.79) / 3
    assert gv["test_std"] == pytest.approx(math.sqrt(((0.86 - m) ** 2 + (0.88 - m) ** 2 + (0.79 - m) ** 2) / 2))
    assert gv["wall_time"] == 120.0 and gv["forwards"] == [120]
    # paired by seed: +0.06, +0.04, -0.03
    p = table["paired"]["MeZO-GV"]["sst2"]
    assert p["mean_diff"] == pytest.approx(0.07 / 3)
    d = [0.06, 0.04, -0.03]
    sd = math.sqrt(sum((x - 0.07 / 3) ** 2 for x in d) / 2)
    assert p["se"] == pytest.approx(sd / math.sqrt(3))
    assert (p["wins"], p["losses"], p["ties"]) == (2, 1, 0)
    assert p["sign_test_p"] == pytest.approx(1.0)  # 2 * (C(3,0) + C(3,1)) / 8 = 1
    assert T.sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert table["labels"][0] == "zero-shot" and table["cells"]["sst2"]["zero-shot"]["lr"] is None
    md = T.markdown(table)
    assert "| MeZO | 82.0 ± 2.0 |" in md and "+2.3 ± 2.7 (2-1-0, p=1)" in md
    assert mezo["test_n"] == 100 and "50/√n points): sst2 100 (±5.0)" in md  # 50 / sqrt(100)
    assert "| MeZO | 1e-06: 70.0*, 1e-05: 65.0 |" in md and "| MeZO-GV | 1e-06: 70.0, 2e-06: 70.0* |" in md
    png = tmp_path / "curves.png"
    T.plot(table, png)
    assert png.stat().st_size > 1000


def test_training_loss_tails_and_their_paired_reduction_equal_hand_computed_ones(tmp_path: Path) -> None:
    root = tmp_path / "runs"

    def with_losses(label: str, seed: int, per_step: int, losses: list[float]) -> None:
        _fixture_run(root, label, 1e-6, seed, 0.7, 0.8, 0.5, forwards=per_step * len(losses))
        train = [{"event": "train", "step": i + 1, "forwards": per_step * (i + 1), "loss": x}
                 for i, x in enumerate(losses)]  # fmt: skip
        with open(root / f"sst2_{label}_1e-06_{seed}" / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in train)

    # MeZO, 8 steps of 2 forwards (F = 16): the last quarter is forwards 14 and 16
    with_losses("MeZO", 0, 2, [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 1.0, 2.0])  # tail 1.5
    with_losses("MeZO", 1, 2, [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 2.0, 2.0])  # tail 2.0
    # MeZO-GV, 4 steps of 6 forwards (F = 24): the last quarter is forward 24 alone
    with_losses("MeZO-GV", 0, 6, [9.0, 9.0, 9.0, 1.2])  # 1 - 1.2/1.5 = +0.20
    with_losses("MeZO-GV", 1, 6, [9.0, 9.0, 9.0, 2.5])  # 1 - 2.5/2.0 = -0.25
    _fixture_run(root, "FT", 1e-6, 0, 0.9, 0.9, 0.1, forwards=4)  # first order: no tail, not compared
    assert T.train_tail(T.load_run(root / "sst2_MeZO_1e-06_0").train_losses) == pytest.approx(1.5)
    assert T.train_tail(T.load_run(root / "sst2_FT_1e-06_0").train_losses) is None  # no training losses logged
    assert T.train_tail([(2, 4.0), (4, 3.0), (6, 2.0), (8, 1.0)]) == 1.0  # the docstring's example
    table = T.table_from_dirs([root])
    assert table["cells"]["sst2"]["MeZO-GV"]["train_tails"] == {0: pytest.approx(1.2), 1: pytest.approx(2.5)}
    assert table["cells"]["sst2"]["FT"]["train_tails"] == {}
    assert set(table["paired_train_loss"]) == {"MeZO-GV"}
    p = table["paired_train_loss"]["MeZO-GV"]["all"]
    assert p["mean_diff"] == pytest.approx(-0.025) and (p["wins"], p["losses"]) == (1, 1)
    assert p["se"] == pytest.approx(math.sqrt(2 * 0.225**2) / math.sqrt(2))  # sample sd / sqrt(n)
    md = T.markdown(table)
    assert "Training-loss reduction against MeZO" in md and "| MeZO-GV | -2.5 ± 22.5 (1-1-0, p=1) |" in md


def test_plot_curves_start_from_the_untrained_model_and_first_order_is_a_reference(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, dev in enumerate([0.70, 0.74]):
        _fixture_run(root, "MeZO", 1e-6, seed, dev, 0.8, 0.5, eval_before=False)
        _fixture_run(root, "zero-shot", None, seed, 0.50 + seed / 100, 0.5, 0.7, forwards=0, eval_before=False)
    _fixture_run(root, "MeZO-GV", 1e-6, 0, 0.72, 0.8, 0.5)  # evaluated before training: its own step 0
    _fixture_run(root, "FT", 1e-5, 0, 0.9, 0.9, 0.3, forwards=30, eval_before=False)
    table = T.table_from_dirs([root])
    curves = T.zo_curves(table)["sst2"]
    assert set(curves) == {"MeZO", "MeZO-GV"}  # zero-shot and FT are reference lines, not curves
    assert curves["MeZO"] == {0: ([0, 120], [0.50, 0.70]), 1: ([0, 120], [0.51, 0.74])}
    assert curves["MeZO-GV"] == {0: ([0, 120], [0.5, 0.72])}
    png = tmp_path / "curves.png"
    T.plot(table, png)
    assert png.stat().st_size > 1000


def test_loss_curves_bin_training_losses_by_forward_passes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _fixture_run(root, "MeZO", 1e-6, 0, 0.7, 0.8, 0.5, forwards=12)
    _fixture_run(root, "MeZO-GV", 1e-6, 0, 0.7, 0.8, 0.5, forwards=12)
    _fixture_run(root, "FT", 1e-5, 0, 0.9, 0.9, 0.3, forwards=3)
    train = {"MeZO": [(2 * k, 10.0 - k) for k in range(1, 7)], "MeZO-GV": [(6, 4.0), (12, 2.0)], "FT": [(1, 9.0)]}
    for label, lr in (("MeZO", 1e-6), ("MeZO-GV", 1e-6), ("FT", 1e-5)):
        with (root / f"sst2_{label}_{lr}_0" / "metrics.jsonl").open("a") as f:
            for fwd, loss in train[label]:
                f.write(json.dumps({"event": "train", "step": fwd, "forwards": fwd, "loss": loss}) + "\n")
    with (root / "sst2_MeZO_1e-06_0" / "metrics.jsonl").open("a") as f:
        f.write('{"event": "train", "step": 13, "forw')  # a crash mid-line: skipped, as read_metrics does
    table = T.table_from_dirs([root], loss_bins=3)
    curves = T.loss_curves(table)["sst2"]
    # budget 12 forwards, 3 bins of 4: MeZO's forwards 2, 4 | 6, 8 | 10, 12 -> losses 9, 8 | 7, 6 | 5, 4
    assert curves["MeZO"] == {0: ([2.0, 6.0, 10.0], [8.5, 6.5, 4.5])}
    assert curves["MeZO-GV"] == {0: ([6.0, 10.0], [4.0, 2.0])}  # forward 6 in bin 2, 12 in bin 3; bin 1 empty
    assert set(curves) == {"MeZO", "MeZO-GV"}  # first order: its steps are not forward passes
    assert T.binned_losses([(2, 4.0), (4, 3.0), (6, 2.0), (8, 1.0)], 8, 2) == ([2.0, 6.0], [3.5, 1.5])
    # the table holds the curves: its JSON has them, and plotting reads no file again
    assert json.loads(T.to_json(table))["cells"]["sst2"]["MeZO-GV"]["loss_curves"] == {"0": [[6.0, 10.0], [4.0, 2.0]]}
    for run in root.iterdir():
        (run / "metrics.jsonl").unlink()
    png = tmp_path / "curves.png"
    T.plot(table, png)
    assert png.stat().st_size > 1000


def test_only_finished_readable_runs_count(tmp_path: Path) -> None:
    from zojax.train.report import read_results

    root = tmp_path / "runs"
    _fixture_run(root, "MeZO", 1e-6, 0, 0.7, 0.8, 0.5, wall=100.0, name="done")
    _fixture_run(root, "MeZO", 1e-6, 1, 0.7, 0.8, 0.5, wall=200.0, name="stopped")
    _fixture_run(root, "MeZO", 1e-6, 2, 0.7, 0.8, 0.5, wall=300.0, name="torn")
    _fixture_run(root, "MeZO", 1e-6, 3, 0.7, 0.8, 0.5, wall=400.0, name="no_sweep")
    stopped = json.loads((root / "stopped" / "results.json").read_text()) | {"status": "stopped"}
    (root / "stopped" / "results.json").write_text(json.dumps(stopped))
    (root / "torn" / "results.json").write_text('{"status": "do')  # a partial write
    (root / "no_sweep" / "sweep_cell.json").unlink()  # a plain `zojax finetune` run
    assert [read_results(root / n) is not None for n in ("done", "stopped", "torn", "absent")] == [True] + [False] * 3
    statuses = [S.cell_status(root / n) for n in ("done", "stopped", "torn", "absent")]
    assert statuses == ["done", "started", "started", "new"]
    assert S.cell_label(root / "done") == "MeZO" and S.cell_label(root / "no_sweep") is None
    assert S.finished_wall_times(root) == {("sst2", "MeZO"): [100.0]}  # sweep cells only
    assert T.load_run(root / "stopped") is None and T.load_run(root / "torn") is None
    assert T.load_run(root / "no_sweep").label == "mezo"  # no sweep label: the method's own
    assert [r.seed for r in map(T.load_run, T.find_runs([root])) if r is not None] == [0, 3]


def test_finished_cells_time_the_remaining_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zojax.cli import sweep_main

    spec_path = _spec(tmp_path, _sst2(tmp_path / "data"))
    spec = S.load_spec(spec_path)
    mezo = [c for c in spec.cells() if c.label == "MeZO"]
    for cell, wall in zip(mezo[:2], (600.0, 1200.0), strict=True):
        _fixture_run(spec.out, "MeZO", 1e-3, 0, 0.6, 0.6, 0.5, wall=wall, name=cell.id)
    times = S.finished_wall_times(spec.out)
    assert {k: sorted(v) for k, v in times.items()} == {("sst2", "MeZO"): [600.0, 1200.0]}
    assert S.expected_seconds(times, "sst2", "MeZO") == 900.0 and S.expected_seconds(times, "sst2", "MeZO", min) == 600
    assert S.expected_seconds(times, "sst2", "MeZO-GV") is None and S.expected_seconds(times, "rte", "MeZO") is None
    assert sweep_main([str(spec_path), "--dry-run", "--only", mezo[0].id, "--only", mezo[3].id]) == 0
    assert "sweep tiny: 2 cells" in capsys.readouterr().out  # --only repeated: any of them
    assert sweep_main([str(spec_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "status: 2 done, 0 started, 6 new" in out
    # the two MeZO cells left at 900 s each; the four MeZO-GV cells have no finished twin
    assert "measured: 30m00s for 2 of the 6 remaining cells" in out and "4 have no finished twin yet" in out
    assert "; 20m00s at the fastest of them" in out  # the 600 s twin, twice


def test_table_of_a_spec_counts_only_its_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a pilot's grid (lr 1e-5, seed 0 only, the higher dev) shares the folder with the table's cells
    root = tmp_path / "runs"
    spec = {"name": "t", "out": str(root), "base": {"model.name": "random:tiny", "data.task": "sst2"},
            "grid": {"run.seed": [0, 1, 2]},
            "methods": [{"label": "MeZO", "optim.method": "mezo", "optim.lr": [1e-6]}]}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(spec))
    cells = S.load_spec(tmp_path / "t.json").cells()
    for seed, (dev, test) in enumerate([(0.70, 0.80), (0.72, 0.84), (0.68, 0.82)]):
        if seed < 2:  # seed 2 has not finished
            _fixture_run(root, "MeZO", 1e-6, seed, dev, test, 0.5, name=cells[seed].id)
    _fixture_run(root, "MeZO", 1e-5, 0, 0.99, 0.50, 0.1, name="task-sst2_MeZO_lr-1e-05_seed-0")
    assert T.table_from_dirs([root])["cells"]["sst2"]["MeZO"]["lr"] == 1e-5  # the folder: the pilot's lr wins
    dirs, n = T.spec_runs(tmp_path / "t.json")
    assert n == 3 and sorted(d.name for d in dirs) == sorted(c.id for c in cells[:2])
    from zojax.cli import table_main

    assert table_main(["--spec", str(tmp_path / "t.json"), "--json", str(tmp_path / "t_table.json")]) == 0
    assert "2 of 3 cells finished" in capsys.readouterr().err
    mezo = json.loads((tmp_path / "t_table.json").read_text())["cells"]["sst2"]["MeZO"]
    assert mezo["lr"] == 1e-6 and mezo["test_mean"] == pytest.approx(0.82)


def test_table_of_a_spec_lists_tasks_and_methods_in_the_spec_order(tmp_path: Path) -> None:
    # folder names sort copa < wic and FT < MeZO-GV < MeZO_; the spec says wic, copa and MeZO, MeZO-GV, FT
    root = tmp_path / "runs"
    spec = {"name": "t", "out": str(root), "base": {"model.name": "random:tiny"},
            "grid": {"data.task": ["wic", "copa"]},
            "methods": [{"label": "MeZO", "optim.method": "mezo", "optim.lr": [1e-6]},
                        {"label": "MeZO-GV", "optim.method": "mezo-gv", "optim.lr": [1e-6]},
                        {"label": "FT", "optim.method": "ft", "optim.lr": [1e-5]}]}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(spec))
    for i, cell in enumerate(S.load_spec(tmp_path / "t.json").cells()):
        task = cell.axes["data.task"]
        _fixture_run(root, cell.label, cell.options["optim.lr"], 0, 0.6, 0.5 + i / 100, 0.5, task=task, name=cell.id)
    table = T.table_from_dirs(T.spec_runs(tmp_path / "t.json")[0])
    assert table["tasks"] == ["wic", "copa"] and table["labels"] == ["MeZO", "MeZO-GV", "FT"]
    md = T.markdown(table)
    assert md.index("| FT |") > md.index("| MeZO-GV |") and "| method | wic | copa | mean |" in md


# ---------------------------------------------------------------------- lr_from: a pilot's choice
def _pilot_and_table(tmp: Path, **method: object) -> tuple[Path, Path]:
    root = tmp / "runs"
    base = {"model.name": "random:tiny", "optim.forward_budget": 1002}
    pilot = {"name": "pilot", "out": str(root), "base": base, "grid": {"data.task": ["sst2"], "run.seed": [0]},
             "methods": [{"label": "MeZO", "optim.method": "mezo", "optim.lr": [1e-6, 1e-5, 1e-4]}]}  # fmt: skip
    table = {"name": "table", "out": str(root), "base": base, "grid": {"data.task": ["sst2"], "run.seed": [0, 1]},
             "methods": [{"label": "MeZO", "optim.method": "mezo", "lr_from": "pilot.json", **method}]}  # fmt: skip
    (tmp / "pilot.json").write_text(json.dumps(pilot))
    (tmp / "table.json").write_text(json.dumps(table))
    return tmp / "pilot.json", tmp / "table.json"


def test_lr_from_waits_for_the_pilot_then_takes_its_choice_and_reuses_its_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pilot_path, table_path = _pilot_and_table(tmp_path)
    pilot, table = S.load_spec(pilot_path), S.load_spec(table_path)
    pilot_cells = pilot.cells()
    # nothing finished: the table cannot start; a dry run still resolves every cell and its budget
    with pytest.raises(S.TuningPending, match=r"3 of its cells unfinished.*zojax sweep"):
        table.cells()
    pending = table.cells(pending_ok=True)
    assert [c.id for c in pending] == ["task-sst2_MeZO_lr-pending_seed-0", "task-sst2_MeZO_lr-pending_seed-1"]
    assert S.budgets(S.plan(table, check_data=False)) == {"MeZO": {1002}}
    assert T.spec_runs(table_path) == ([], 2)
    for cell, dev in zip(pilot_cells[:2], [0.60, 0.70], strict=True):
        _fixture_run(pilot.out, "MeZO", cell.options["optim.lr"], 0, dev, 0.5, 0.5, name=cell.id)
    with pytest.raises(S.TuningPending, match="1 of its cells unfinished"):
        table.cells()
    _fixture_run(pilot.out, "MeZO", 1e-4, 0, 0.55, 0.5, 0.5, name=pilot_cells[2].id)
    # finished: 1e-5 has the highest dev, and the table's seed-0 cell is the pilot's (not run twice)
    choice = S.pilot_choice(pilot_path, "MeZO")
    assert choice.lr == 1e-5 and choice.grid == (1e-6, 1e-5, 1e-4) and choice.pending == ()
    cells = table.cells()
    assert [c.options["optim.lr"] for c in cells] == [1e-5, 1e-5]
    assert cells[0].id == pilot_cells[1].id and cells[1].id == "task-sst2_MeZO_lr-1e-05_seed-1"
    assert [r.status for r in S.plan(table, check_data=False)] == ["done", "new"]
    line = "MeZO: learning rate from pilot.json: 1e-05 (mean dev by rate: 1e-06: 60.0, 1e-05: 70.0*, 0.0001: 55.0)"
    assert line in S.describe_plan(table, S.plan(table, check_data=False))
    from zojax.cli import sweep_main

    capsys.readouterr()
    assert sweep_main([str(table_path), "--only", "no-such-cell", "--no-progress"]) == 0  # the log names the choice
    assert f"[zojax sweep] table: {line}" in capsys.readouterr().out


def test_a_sweep_reads_its_pilots_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a chain runs pilots beside the table: one invocation's cells, report and log use one reading
    pilot_path, table_path = _pilot_and_table(tmp_path)
    pilot = S.load_spec(pilot_path)
    snapshot = S.load_spec(table_path).with_pilot_choices()
    for cell, dev in zip(pilot.cells(), [0.60, 0.70, 0.55], strict=True):  # the pilot finishes after the reading
        _fixture_run(pilot.out, "MeZO", cell.options["optim.lr"], 0, dev, 0.5, 0.5, name=cell.id)
    with pytest.raises(S.TuningPending):
        snapshot.cells()
    assert snapshot.lr_choices()["MeZO"].lr is None
    assert S.load_spec(table_path).with_pilot_choices().lr_choices()["MeZO"].lr == 1e-5

    from zojax.cli import sweep_main
    from zojax.sweep import tuning

    reads = []
    real = tuning.pilot_choice
    monkeypatch.setattr(tuning, "pilot_choice", lambda *a, **k: reads.append(a) or real(*a, **k))
    assert sweep_main([str(table_path), "--only", "no-such-cell", "--no-progress"]) == 0
    assert sweep_main([str(table_path), "--dry-run"]) == 0
    assert len(reads) == 2  # one per invocation


def test_lr_from_refuses_a_choice_at_the_edge_of_the_grid(tmp_path: Path) -> None:
    pilot_path, table_path = _pilot_and_table(tmp_path)
    pilot = S.load_spec(pilot_path)
    for cell, dev in zip(pilot.cells(), [0.60, 0.70, 0.75], strict=True):  # the largest rate is best
        _fixture_run(pilot.out, "MeZO", cell.options["optim.lr"], 0, dev, 0.5, 0.5, name=cell.id)
    with pytest.raises(ValueError, match=r"edge of the pilot's grid.*widen"):
        S.load_spec(table_path).cells()
    from zojax.cli import sweep_main

    with pytest.raises(SystemExit) as e:
        sweep_main([str(table_path), "--print-commands"])
    assert e.value.code == 2


def test_lr_from_rejects_bad_specs(tmp_path: Path) -> None:
    _, table_path = _pilot_and_table(tmp_path, **{"optim.lr": [1e-5]})
    with pytest.raises(ValueError, match=r"optim.lr or lr_from, not both"):
        S.load_spec(table_path)
    _, table_path = _pilot_and_table(tmp_path, lr_from="no_such_pilot.json")
    with pytest.raises(ValueError, match="not a file"):
        S.load_spec(table_path)
    _, table_path = _pilot_and_table(tmp_path, label="MeZO-GV")
    with pytest.raises(ValueError, match="no method labelled 'MeZO-GV'"):
        S.load_spec(table_path).cells()


# ---------------------------------------------------------------------- committed specs
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data (present on CI)")
def test_paper_spec_dry_run() -> None:
    spec = S.load_spec(REPO / "experiments" / "sweeps" / "paper_opt13b.toml")
    os.environ.setdefault("ZOJAX_DATA_DIR", str(SHARED))
    rows = S.plan(spec, check_data=True)
    assert len(rows) == 11 * 3 * (1 + 3 + 4 + 4 + 3 + 4)
    budgets = S.budgets(rows)
    assert budgets.pop("zero-shot") == {0}
    assert len({b for v in budgets.values() for b in v}) == 1  # every method the same forward passes
    steps = {r.cell.label: r.steps for r in rows}
    assert steps["MeZO"] == steps["SubZero"] == 19998
    assert steps["MeZO-GV"] == steps["MeZO-Greedy"] == steps["SubZero-GV"] == 6666
    subspace = {r.cell.label for r in rows if r.cell.options.get("optim.perturbation") == "subspace"}
    assert subspace == {"SubZero", "SubZero-GV"}
    assert {r.cell.options["data.task"] for r in rows} == {
        "sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop"
    }  # fmt: skip


def test_cpu_spec_resolves_with_equal_zo_budgets() -> None:
    for path in sorted((REPO / "experiments" / "sweeps").glob("cpu_smollm2*.toml")):
        spec = S.load_spec(path)
        rows = S.plan(spec, check_data=False)
        zo = {label: b for label, b in S.budgets(rows).items() if label.startswith(("MeZO", "SubZero"))}
        assert zo and len({b for v in zo.values() for b in v}) == 1, (path.name, zo)
        assert all(b >= 1000 for v in zo.values() for b in v)


def test_cpu_table_runs_at_its_committed_pilots_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pilot's cells are committed: every tuned method resolves, and the table's SST-2 seed-0 cell at
    # the chosen rate is the pilot's finished cell, run with that rate
    monkeypatch.chdir(REPO)
    spec = S.load_spec(REPO / "experiments" / "sweeps" / "cpu_smollm2.toml")
    assert set(spec.lr_from) == {"MeZO", "MeZO-GV", "MeZO-Greedy", "FT"}
    for cell in spec.cells():
        if cell.label in spec.lr_from and cell.axes["data.task"] == "sst2" and cell.axes["run.seed"] == 0:
            run = spec.out / cell.id
            assert S.cell_status(run) == "done", cell.id
            assert json.loads((run / "config.json").read_text())["config"]["optim"]["lr"] == cell.options["optim.lr"]


def test_cpu_chain_runs_every_cpu_spec_after_its_pilots() -> None:
    # experiments/sweeps/cpu_smollm2.sh runs the CPU table's specs in one chain: all of them, each
    # after the pilots its lr_from names
    sweeps = REPO / "experiments" / "sweeps"
    line = next(ln for ln in (sweeps / "cpu_smollm2.sh").read_text().splitlines() if ln.startswith("for spec in"))
    order = line.removeprefix("for spec in").split(";")[0].split()
    assert sorted(order) == sorted(p.stem for p in sweeps.glob("cpu_smollm2*.toml"))
    for i, name in enumerate(order):
        for pilot in S.load_spec(sweeps / f"{name}.toml").lr_from.values():
            assert pilot.stem in order[:i], (name, pilot.name)
