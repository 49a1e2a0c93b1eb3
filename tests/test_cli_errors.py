"""Errors a user can cause end ``zojax finetune`` in one line (issue 16, section 2).

Each one: a non-zero exit status, no traceback (it stays behind ``--debug``), and one line that
names the thing (file and line, tensor, option) and the fix. Cases: a missing model path in a real
run, a truncated GGUF, a file that is not a GGUF, a data folder without the task's files, a malformed
JSON line and invalid UTF-8 in a data file, an unwritable ``--out`` (checked before the data and the
model are loaded), a disk that fills up while checkpointing (the last good checkpoint kept, the
partial folder removed, ``--resume`` then finishes the run), and ``--dry-run`` rejecting an empty
training split that a real run would reject.

All runs use ``random:tiny`` or fail before any model is built, on small fixture data in tmp.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zojax.cli import finetune_main
from zojax.errors import DiskFullError, UserError
from zojax.models import loading
from zojax.tasks import data as task_data
from zojax.train import checkpoint as ckpt_lib

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- helpers and fixtures
def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``zojax finetune argv`` in this process: (exit status, stdout, stderr)."""
    try:
        code = finetune_main([*argv, "--no-progress"])
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line of ``err`` (and no traceback before it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


def assert_one_line(err: str, *needles: str) -> str:
    """``err`` is exactly one line, holding every needle."""
    line = error_line(err)
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert line.startswith("zojax finetune: error: "), line
    for n in needles:
        assert n in line, (n, line)
    return line


def sst2_rows(n: int) -> str:
    words = ["good", "great", "bad", "awful", "fine", "dull"]
    return "sentence\tlabel\n" + "".join(
        f"a {words[i % 6]} film\t{int(words[i % 6] in ('good', 'great', 'fine'))}\n" for i in range(n)
    )


@pytest.fixture
def sst2(tmp_path: Path) -> Path:
    """A data folder with a small SST-2 (GLUE layout)."""
    d = tmp_path / "data"
    (d / "SST-2").mkdir(parents=True)
    (d / "SST-2" / "train.tsv").write_text(sst2_rows(24))
    (d / "SST-2" / "dev.tsv").write_text(sst2_rows(12))
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub fallback: a missing task folder is reported at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task_data.hub_reachable.cache_clear()


def tiny(data: Path, out: Path, *extra: str) -> list[str]:
    """argv of a tiny real run."""
    return ["--model", "random:tiny", "--data-dir", str(data), "--out", str(out), "--method", "mezo",
            "--num-train", "8", "--num-dev", "0", "--num-test", "4", "--batch-size", "4", "--lr", "1e-3",
            "--no-eval-before", "--compile-cache", "none", *extra]  # fmt: skip


def write_gguf(path: Path) -> None:
    """A small GGUF file (llama metadata, two F32 tensors)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_tensor("token_embd.weight", np.ones((16, 8), np.float32))
    w.add_tensor("output_norm.weight", np.ones((8,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------- the model
def test_missing_model_path_is_rejected_before_the_run(capsys, sst2: Path, tmp_path: Path) -> None:
    """A real run checks the model path as --dry-run does (it used to load the data, then fail
    with a FileNotFoundError traceback)."""
    missing = tmp_path / "models" / "nothing.gguf"
    code, _, err = run(capsys, *tiny(sst2, tmp_path / "run"), "--model", str(missing))
    assert code == 2
    assert_one_line(err, "--model: model", "not found", str(missing), ".gguf file, a Hugging Face folder")
    assert not (tmp_path / "run").exists()


def test_truncated_gguf_names_the_file_and_tensor(capsys, sst2: Path, tmp_path: Path) -> None:
    """It used to fail with "cannot reshape array of size 126 into shape (16,8)"."""
    path = tmp_path / "model.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(UserError, match=r"model\.gguf: the file is truncated: .*'token_embd\.weight'.*download"):
        loading.load_model(str(path))
    # a real run: one line (the header is fine, so this is found when the model is loaded)
    code, _, err = run(capsys, *tiny(sst2, tmp_path / "run"), "--model", str(path))
    assert code == 1
    assert_one_line(err, str(path), "truncated", "'token_embd.weight'", "download the file again", "--debug")
    # --dry-run finds it too
    code, _, err = run(capsys, *tiny(sst2, tmp_path / "run2"), "--model", str(path), "--dry-run")
    assert code == 2
    assert_one_line(err, "--model:", "truncated", "'token_embd.weight'")
    # a file cut inside its header
    path.write_bytes(data[:30])
    with pytest.raises(UserError, match=r"unreadable GGUF header: the file \(30 bytes\) is truncated or corrupt"):
        loading.load_model(str(path))


@pytest.mark.parametrize("name", ["model.gguf", "pytorch_model.bin"])
def test_a_file_that_is_not_gguf(capsys, name: str, sst2: Path, tmp_path: Path) -> None:
    """A non-GGUF file used to give "GGUF magic invalid" (.gguf) or "neither a known name ..."
    (any other file), as tracebacks after the data was loaded."""
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(UserError, match=r"not a GGUF file \(it starts with b'PK"):
        loading.load_model(str(path))
    code, _, err = run(capsys, *tiny(sst2, tmp_path / "run"), "--model", str(path))
    assert code == 2
    assert_one_line(err, f"--model: {path}: not a GGUF file", "pass a .gguf file")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- the data
def test_data_dir_without_the_task_files(capsys, tmp_path: Path) -> None:
    """The message was already good, but under a traceback."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, *tiny(empty, tmp_path / "run"))
    assert code == 1
    assert_one_line(err, "Task 'SST-2': no data found", str(empty / "SST-2"), "Expected files there: train.tsv")


RTE_ROW = {"premise": "A cat sat.", "hypothesis": "A cat is sitting.", "label": "entailment"}


def rte_lines(n: int) -> list[bytes]:
    return [json.dumps({**RTE_ROW, "idx": i}).encode() + b"\n" for i in range(n)]


@pytest.mark.parametrize(
    ("task", "folder", "file", "bad_line", "content", "needles"),
    [
        ("rte", "RTE", "train.jsonl", 3, b'{"premise": "A cat sat.", "hypothesis": \n', ["not valid JSON"]),
        ("rte", "RTE", "val.jsonl", 2, b'{"premise": "caf\xe9", "hypothesis": "x", "label": "entailment"}\n',
         ["not valid UTF-8", "0xe9"]),
        ("rte", "RTE", "train.jsonl", 4, b'["a", "list"]\n', ["expected a JSON object"]),
        ("sst2", "SST-2", "train.tsv", 4, b"a caf\xe9 film\t1\n", ["not valid UTF-8"]),
        ("sst2", "SST-2", "dev.tsv", 3, b"a film\tpositive\n", ["the label must be an integer"]),
    ],
)  # fmt: skip
def test_bad_data_file_names_the_file_and_line(
    capsys, task: str, folder: str, file: str, bad_line: int, content: bytes, needles: list[str], tmp_path: Path
) -> None:
    d = tmp_path / "data" / folder
    d.mkdir(parents=True)
    if task == "rte":
        for name in ("train.jsonl", "val.jsonl"):
            (d / name).write_bytes(b"".join(rte_lines(10)))
    else:
        (d / "train.tsv").write_text(sst2_rows(10))
        (d / "dev.tsv").write_text(sst2_rows(10))
    lines = (d / file).read_bytes().splitlines(keepends=True)
    lines[bad_line - 1] = content
    (d / file).write_bytes(b"".join(lines))
    code, _, err = run(capsys, *tiny(d.parent, tmp_path / "run"), "--task", task)
    assert code == 1
    assert_one_line(err, f"{d / file}, line {bad_line}:", *needles)


def test_bad_squad_json_names_the_line(capsys, tmp_path: Path) -> None:
    """A whole-file JSON (SQuAD's, DROP's): the line of the syntax error or the invalid byte."""
    d = tmp_path / "data" / "SQuAD"
    d.mkdir(parents=True)
    path = d / "dev-v1.1.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}\n')
    code, _, err = run(capsys, *tiny(d.parent, tmp_path / "run"), "--task", "squad")
    assert code == 1
    assert_one_line(err, f"{path}, line 3: not valid JSON")
    path.write_bytes(b'{"data": [\n "\xff"]}\n')
    code, _, err = run(capsys, *tiny(d.parent, tmp_path / "run"), "--task", "squad")
    assert code == 1
    assert_one_line(err, f"{path}, line 2: not valid UTF-8 (byte 0xff at byte 3 of the line)")


def test_real_run_rejects_an_empty_training_split(capsys, tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "SST-2").mkdir(parents=True)
    (d / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    (d / "SST-2" / "dev.tsv").write_text(sst2_rows(8))
    code, _, err = run(capsys, *tiny(d, tmp_path / "run"))
    assert code == 1
    assert_one_line(err, "--task: sst2 has an empty training split")


# ---------------------------------------------------------------------- --out
def unwritable_outs(tmp_path: Path) -> list[tuple[Path, str]]:
    """``(--out, what the message says)`` that no process can write, root included, plus a
    read-only folder where permissions apply (not root)."""
    afile = tmp_path / "a_file"
    afile.write_text("x")
    cases = [(afile / "run", "is a file, not a folder"), (afile, "is a file, not a folder")]
    try:  # sysfs takes no new files, whoever asks
        open("/sys/zojax-probe", "w").close()
        os.unlink("/sys/zojax-probe")
    except OSError:
        if os.path.isdir("/sys"):
            cases.append((Path("/sys/zojax-run"), "is not writable"))
    if os.geteuid() != 0:
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((ro / "run", "is not writable (Permission denied)"))
    return cases


def test_unwritable_out_is_checked_before_data_and_model(capsys, tmp_path: Path) -> None:
    """Before, the data and the model were loaded and the first write failed with a traceback.
    The data folder here lacks the task: the --out error must come first."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for out, says in unwritable_outs(tmp_path):
        code, _, err = run(capsys, *tiny(empty, out))
        assert code == 2, (out, err)
        assert_one_line(err, "--out:", str(out), says, "choose a writable --out" if "writable" in says else "--out")
        # --dry-run finds it too
        code, _, err = run(capsys, *tiny(empty, out), "--dry-run")
        assert code == 2
        assert_one_line(err, "--out:", says)


def test_writable_out_check_leaves_nothing(tmp_path: Path) -> None:
    from zojax.train.preflight import check_out_writable

    check_out_writable(tmp_path / "a" / "b")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    check_out_writable(tmp_path / "run")
    assert not (tmp_path / "a").exists()
    assert [p.name for p in tmp_path.rglob("*")] == ["run", "checkpoints"]


# ---------------------------------------------------------------------- a full disk
def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _tensorstore_enospc(*_args, **_kw):
    raise ValueError('OUT_OF_RANGE: Error writing local file "x/d/abc": [OS error 28: No space left on device]')


@pytest.mark.parametrize("where", ["manifest", "orbax"])
def test_full_disk_keeps_the_last_checkpoint(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpts = ckpt_lib.Checkpoints(tmp_path / "run" / "checkpoints", keep=1)
    state = {"params": {"w": np.arange(4, dtype=np.float32)}}
    ckpts.save(1, state, {"x": 1})
    if where == "manifest":  # after the state was written: a partial folder exists
        monkeypatch.setattr(ckpt_lib, "write_manifest", _enospc)
    else:  # inside orbax / tensorstore, which report ENOSPC as text

        def partial_then_fail(path, *a, **kw):
            Path(path).mkdir(parents=True)
            (Path(path) / "half").write_bytes(b"x" * 10)
            _tensorstore_enospc()

        monkeypatch.setattr(ckpts._ckpt, "save", partial_then_fail)
    with pytest.raises(DiskFullError, match=r"checkpoint step_00000002: the disk is full \(No space left on device\)"
                       r".*the last complete checkpoint, step 1, is kept.*--resume") as ei:  # fmt: skip
        ckpts.save(2, state, {"x": 2})
    assert isinstance(ei.value, OSError) and isinstance(ei.value, UserError)
    assert sorted(p.name for p in ckpts.directory.iterdir()) == ["step_00000001"]
    monkeypatch.undo()
    restored, meta = ckpts.restore_latest({"params": {"w": np.zeros(4, np.float32)}})
    assert meta["step"] == 1
    np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])


def test_resume_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    ckpts = ckpt_lib.Checkpoints(tmp_path / "checkpoints")
    state = {"params": {"w": np.ones(3, np.float32)}}
    ckpts.save(1, state, {})
    ckpts.save(2, state, {})
    (ckpts.directory / "tmp.step_00000003.999999" / "state").mkdir(parents=True)  # killed mid-save
    (ckpts.directory / "old.step_00000002.999999").mkdir()  # killed after a re-save's rename
    os.replace(ckpts.directory / "step_00000001", ckpts.directory / "old.step_00000001.999999")  # ... before it
    _, meta = ckpts.restore_latest({"params": {"w": np.zeros(3, np.float32)}})
    assert meta["step"] == 2
    assert sorted(p.name for p in ckpts.directory.iterdir()) == ["step_00000001", "step_00000002"]


def test_full_disk_while_training_then_resume(capsys, sst2: Path, tmp_path: Path, monkeypatch) -> None:
    """The disk fills up at the step-2 checkpoint: one line, step 1 kept, nothing partial left;
    after "freeing space" --resume finishes the run and leaves no stale folder."""
    out = tmp_path / "run"
    real = ckpt_lib.write_manifest

    def full_at_step_2(folder: Path) -> None:
        if "step_00000002" in folder.name:
            _enospc()
        real(folder)

    monkeypatch.setattr(ckpt_lib, "write_manifest", full_at_step_2)
    argv = tiny(sst2, out, "--steps", "3", "--checkpoint-every", "1")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_line(err, "the disk is full", "step 1, is kept", f"zojax finetune --out {out} --resume")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]
    monkeypatch.setattr(ckpt_lib, "write_manifest", real)
    code, out_text, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert "resumed" in out_text and "at step 1" in out_text
    assert json.loads((out / "results.json").read_text())["status"] == "done"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000003"], names


# ---------------------------------------------------------------------- --dry-run
def record_val(n_rows: int) -> str:
    rows = []
    for i in range(n_rows):
        text = "Alice met Bob in Paris. @highlight Alice and Bob"
        rows.append({
            "idx": i,
            "passage": {"text": text, "entities": [{"start": 0, "end": 4}, {"start": 10, "end": 12}]},
            "qas": [{"idx": 0, "query": "@placeholder met Bob.", "answers": [{"start": 0, "end": 4, "text": "Alice"}]}],
        })  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_dry_run_rejects_an_empty_training_split(capsys, tmp_path: Path) -> None:
    """--dry-run approved these; the real run then failed ("the training split is empty")."""
    d = tmp_path / "data"
    (d / "ReCoRD").mkdir(parents=True)
    (d / "ReCoRD" / "val.jsonl").write_text(record_val(1))  # 1 query: the test split takes it
    (d / "SST-2").mkdir()
    (d / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")  # a train file without rows
    (d / "SST-2" / "dev.tsv").write_text(sst2_rows(8))
    for task in ("record", "sst2"):
        code, _, err = run(capsys, *tiny(d, tmp_path / task), "--task", task, "--dry-run")
        assert code == 2, err
        assert_one_line(err, f"--task: {task} has an empty training split", "--method mezo", "zero-shot")
        code, out, err = run(capsys, *tiny(d, tmp_path / task), "--task", task, "--method", "zero-shot", "--dry-run")
        assert code == 0 and "dry run OK" in out, err


def test_dry_run_rejects_an_existing_run(capsys, sst2: Path, tmp_path: Path) -> None:
    """--dry-run checks --out as a real run does (a new run where one exists)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    code, _, err = run(capsys, *tiny(sst2, out), "--dry-run")
    assert code == 2 and error_line(err).endswith(
        "already holds a run; pass --resume to continue it or choose another --out"
    )


# ---------------------------------------------------------------------- --debug and the real process
def test_debug_shows_the_traceback(capsys, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, *tiny(empty, tmp_path / "run"), "--debug")
    assert code == 1
    assert "Traceback" in err and "TaskDataMissingError" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("zojax finetune: error: Task 'SST-2': no data found") and "--debug" not in last


def test_the_process_prints_one_line(tmp_path: Path) -> None:
    """The real command: exit status 1, stderr one line, nothing on stdout."""
    path = tmp_path / "model.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:-40])
    d = tmp_path / "data"
    (d / "SST-2").mkdir(parents=True)
    (d / "SST-2" / "train.tsv").write_text(sst2_rows(8))
    (d / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\nok\t1\n\xff\t0\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "zojax.cli", "finetune", *tiny(d, tmp_path / "run"), "--model", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert_one_line(proc.stderr, f"{d / 'SST-2' / 'dev.tsv'}, line 3: not valid UTF-8")
