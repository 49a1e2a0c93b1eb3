"""The ``zojax`` command's flags are derived from the configuration (:mod:`zojax.cli.args`).

Every :class:`~zojax.train.config.TrainConfig` field is exactly one flag with the field's default,
help and choices; ``--help`` lists every choice from its source (the registry, :mod:`zojax.specs`,
the config's tuples); a flag's value round-trips into the config; only the flags given are explicit
(what ``--resume`` lays over the saved run); an estimator's error names the CLI flag; and the help
and listing commands do not import JAX. No test here trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from zojax import registry, specs
from zojax.cli import args as A
from zojax.cli import config_from_args, finetune_parser, main
from zojax.train import config as C
from zojax.train import run_dir

REPO = Path(__file__).resolve().parents[1]

# the flags of zojax finetune before they were derived from the config: none may disappear
FLAGS_BEFORE = """--model --dtype --opt-bos --tuning --lora-rank --lora-alpha --lora-targets --num-virtual-tokens
--task --data-dir --protocol --num-train --num-dev --num-test --max-length --eval-max-length --max-new-tokens
--method --lr --eps --num-candidates --elite-ratio --num-queries --weighting --normalize --no-normalize
--reuse-best-loss --no-reuse-best-loss --distribution --perturbation --rank --refresh-every --weight-decay
--batch-size --steps --forward-budget --eval-every --eval-before --no-eval-before --select-by --select-initial
--no-select-initial --stop-rule --num-demos --eval-token-budget --seed --out --resume --checkpoint-every
--checkpoint-minutes --keep-checkpoints --stop-after --progress --no-progress --dry-run --compile-cache
--debug""".split()  # noqa: SIM905


def config_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest in C.fields()}


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert not e.value.code
    return capsys.readouterr().out


def test_every_field_is_exactly_one_flag() -> None:
    parser = finetune_parser()
    actions = config_actions(parser)
    assert set(actions) == set(C.fields())  # one action per field, dest "section.field"
    flags = [s for a in parser._actions for s in a.option_strings]
    assert len(flags) == len(set(flags))
    for key, action in actions.items():
        assert C.flag(key) == action.option_strings[0]
        assert action.default is argparse.SUPPRESS  # explicit flags only (see --resume)
        if isinstance(action, argparse.BooleanOptionalAction):
            assert action.option_strings == [C.flag(key), "--no-" + C.flag(key)[2:]]
    assert set(FLAGS_BEFORE) <= set(flags)
    assert (C.flag("model.name"), C.flag("eval.token_budget")) == ("--model", "--eval-token-budget")


def test_a_new_option_is_one_field() -> None:
    """A section with one more field gets its flag, help, default and choices from the field alone."""

    @dataclasses.dataclass
    class Extra:
        TITLE: typing.ClassVar[str] = "extra"
        placement: str = C.option("auto", "devices")
        precision: str = C.option("float32", "weights", choices=("float32", "bfloat16"))
        master: bool = C.option(False, "float32 master weights")

    sections = {**C.SECTIONS, "extra": Extra}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "SECTIONS", sections)
        p = argparse.ArgumentParser()
        A.add_config_arguments(p)
        ns = p.parse_args(["--placement", "data=2", "--precision", "bfloat16", "--master"])
        assert A.explicit_options(ns) == {
            "extra.placement": "data=2",
            "extra.precision": "bfloat16",
            "extra.master": True,
        }
        text = p.format_help()
    assert "--placement PLACEMENT" in text and "devices (default: auto)" in text
    assert "--precision {float32,bfloat16}" in text and "--master, --no-master" in text


def test_help_lists_every_choice_from_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(capsys, "finetune")
    sources = {
        "optim.method": (*registry.METHODS, C.FO_METHOD, *C.EVAL_METHODS),
        "optim.weighting": specs.WEIGHTINGS,
        "optim.distribution": specs.DISTRIBUTIONS,
        "optim.perturbation": specs.PERTURBATIONS,
        "optim.update_rounding": specs.ROUNDINGS,
        "optim.objective": specs.TRAINING_OBJECTIVES,
        "model.tuning": C.TUNINGS,
        "model.dtype": C.DTYPES,
        "model.opt_bos": C.OPT_BOS,
        "data.protocol": C.PROTOCOLS,
        "eval.select_by": C.SELECT_BY,
        "eval.stop_rule": C.STOP_RULES,
    }
    with_choices = {k for k, f in C.fields().items() if "choices" in f.metadata}
    assert with_choices == set(sources)
    flat = " ".join(out.split())
    for key, choices in sources.items():
        assert tuple(C.fields()[key].metadata["choices"]) == tuple(choices), key
        for choice in choices:
            assert choice in flat, (key, choice)
    assert "--weighting {mean_diff,rank}" in flat and "one of: " + ", ".join(C.method_names()) in flat
    for name, method in registry.METHODS.items():  # the epilog: the registry's cost and description
        assert f"{method.forwards_per_step()} fwd/step  {method.description}" in out, name


def test_help_shows_the_dataclass_defaults() -> None:
    d = C.TrainConfig()
    for key, f in C.fields().items():
        text = A.help_text(f)
        section, name = key.split(".")
        value = getattr(getattr(d, section), name)
        if f.metadata.get("action") == "store_true":
            assert "(default" not in text, key
        elif value is None:  # the help says what None means, if anything (--stop-after: no stop)
            if "default_help" in f.metadata:
                assert text.endswith(f"(default: {f.metadata['default_help']})"), key
            else:
                assert "(default" not in text, key
        else:
            assert text.endswith(f"(default: {A._show(value)})"), (key, text)
    assert "ZO full 3e-5 / lora 1e-4 / prefix 1e-2" in A.help_text(C.fields()["optim.lr"])  # from the tables


def non_default(f: dataclasses.Field, kind: type) -> tuple[list[str], Any]:
    """A command-line value for field ``f`` other than its default, and the config value it gives."""
    flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    if kind is bool:
        if f.metadata.get("action") == "store_true":
            return [flag], True
        return ([flag], True) if not f.default else (["--no-" + flag[2:]], False)
    if "choices" in f.metadata:
        other = next(c for c in f.metadata["choices"] if c != f.default)
        return [flag, other], other
    if kind is tuple:
        return [flag, "a, b"], ("a", "b")
    value = {int: 7, float: 0.25, str: "x"}[kind]
    return [flag, str(value)], value


def test_every_flag_round_trips_into_the_config() -> None:
    parser = finetune_parser()
    for section, cls in C.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            argv, value = non_default(f, A._base_type(hints[f.name]))
            explicit = A.explicit_options(parser.parse_args(argv))
            assert explicit == {f"{section}.{f.name}": value}, argv
            assert getattr(getattr(A.config_from_options(explicit), section), f.name) == value, argv


def test_only_the_given_flags_are_explicit() -> None:
    parser = finetune_parser()
    ns = parser.parse_args(["--lr", "0.5", "--no-progress", "--compile-cache", "none"])
    assert A.explicit_options(ns) == {"optim.lr": 0.5, "run.progress": False}
    assert ns.compile_cache == "none"  # parsed once, with the rest
    assert A.explicit_options(parser.parse_args([])) == {}
    assert parser.parse_args([]).compile_cache is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "3", "--forward-budget", "9"])  # still mutually exclusive


def test_compile_cache_folder_and_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile-cache DIR`` turns JAX's persistent cache on in DIR, storing programs that took a
    second to compile unless ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise; ``none``
    leaves the cache as it is."""
    import jax

    from zojax.train import cache

    option = "jax_persistent_cache_min_compile_time_secs"
    before = jax.config.jax_compilation_cache_dir, getattr(jax.config, option)
    try:
        monkeypatch.delenv(cache.MIN_SECONDS_ENV, raising=False)
        jax.config.update(option, 0.25)
        assert cache.enable_compile_cache(tmp_path / "a") == str(tmp_path / "a")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a") and getattr(jax.config, option) == 1.0
        monkeypatch.setenv(cache.MIN_SECONDS_ENV, "0.25")  # JAX read it at import; zojax keeps it
        jax.config.update(option, 0.25)
        assert cache.enable_compile_cache(tmp_path / "b") == str(tmp_path / "b")
        assert getattr(jax.config, option) == 0.25
        assert cache.enable_compile_cache("none") is None
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "b")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update(option, before[1])
        cache._reset()


def test_resume_lays_only_explicit_flags_over_the_saved_run(tmp_path: Path) -> None:
    saved = config_from_args(["--model", "random:tiny", "--method", "mezo", "--lr", "0.25", "--seed", "3",
                              "--steps", "10", "--out", str(tmp_path)])  # fmt: skip
    run_dir.write_config(tmp_path, saved, {})
    # defaults (lr None, seed 0, method mezo-gv) do not replace saved values; given flags do
    c = config_from_args(["--out", str(tmp_path), "--resume", "--steps", "20", "--no-progress"])
    assert (c.optim.method, c.optim.lr, c.run.seed, c.model.name) == ("mezo", 0.25, 3, "random:tiny")
    assert (c.optim.steps, c.run.progress, c.run.resume) == (20, False, True)
    c = config_from_args(["--out", str(tmp_path), "--resume", "--lr", "0.5"])
    assert c.optim.lr == 0.5  # accepted here; the run-directory check rejects the change
    with pytest.raises(ValueError, match=r"^--lr: the run being resumed used 0.25, got 0.5"):
        C.check_resume_compatible(saved, c)
    other = dataclasses.replace(saved, model=dataclasses.replace(saved.model, name="random:small"))
    with pytest.raises(ValueError, match=r"^--model: the run being resumed"):  # the flag, not --name
        C.check_resume_compatible(saved, other)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nspsa", "--num-queries", "0"], "--num-queries: expected q >= 1, got 0"),
        (["--method", "mezo-greedy", "--num-candidates", "0"], "--num-candidates: expected M >= 1, got 0"),
        (["--num-candidates", "1"], "--num-candidates: guided directions need M >= 2 candidates, got 1"),
        (
            ["--method", "mezo-centred", "--num-candidates", "1"],
            "--num-candidates: centred estimates need M >= 2 candidates, got 1",
        ),
        (["--elite-ratio", "0.1"], "--elite-ratio: alpha=0.1 with num_candidates=4 puts floor(alpha*M)=0"),
    ],
)
def test_estimator_checks_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as e:
        config_from_args(argv)
    assert str(e.value).startswith(message)


def test_config_files_are_checked_against_the_same_choices() -> None:
    """A sweep or a saved config skips argparse; resolve() checks every choice field."""
    for key, f in C.fields().items():
        if "choices" not in f.metadata:
            continue
        section, name = key.split(".")
        with pytest.raises(ValueError, match=rf"^{C.flag(key)}: invalid choice 'bogus'"):
            C.from_dict({section: {name: "bogus"}}).resolve()


# integers checked elsewhere: the budget pair when steps are resolved, M and q by their estimators
INTEGERS_WITHOUT_MINIMUM = {"optim.steps", "optim.forward_budget", "optim.num_candidates", "optim.num_queries"}


def test_every_integer_option_has_a_least_value_or_its_own_check() -> None:
    hints = {f"{s}.{f.name}": typing.get_type_hints(cls)[f.name] for s, cls in C.SECTIONS.items()
             for f in dataclasses.fields(cls)}  # fmt: skip
    integers = {k for k, t in hints.items() if t in (int, int | None)}
    assert integers - INTEGERS_WITHOUT_MINIMUM == {k for k, f in C.fields().items() if "minimum" in f.metadata}


@pytest.mark.parametrize("key", sorted(k for k, f in C.fields().items() if "minimum" in f.metadata))
def test_an_integer_below_its_minimum_names_the_flag(key: str) -> None:
    """Config files and sweeps skip argparse; resolve() checks each field's ``minimum`` metadata."""
    least = C.fields()[key].metadata["minimum"]
    section, name = key.split(".")
    nested: dict[str, dict[str, Any]] = {section: {name: least - 1}}
    if key in ("optim.rank", "optim.refresh_every"):
        nested[section]["perturbation"] = "subspace"
    with pytest.raises(ValueError, match=rf"^{C.flag(key)}: expected an integer >= {least}, got {least - 1}$"):
        C.from_dict(nested).resolve()
    nested[section][name] = least  # and the least value itself is accepted
    C.from_dict(nested).resolve()


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["tasks", "--help"], ["finetune", "--help"]])
def test_help_and_listings_do_not_import_jax(argv: list[str]) -> None:
    code = (
        "import sys\nfrom zojax.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


def test_python_m_zojax_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "zojax.cli", "methods"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "mezo-gv" in proc.stdout and "fwd/step" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "zojax.cli"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "finetune" in proc.stdout


@pytest.mark.parametrize("package", ["zojax", "zojax.train", "zojax.tasks"])
def test_every_lazy_public_name_resolves(package: str) -> None:
    """Each name a package lists (and loads on first use) exists in the submodule it points to."""
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_tasks_listing_is_cached_until_the_data_or_the_code_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import zojax.tasks.__main__ as listing
    from zojax.cli.info import tasks_main
    from zojax.paths import resolve_data_dir

    shared = resolve_data_dir()
    assert shared is not None
    data = tmp_path / "data"
    shutil.copytree(shared, data)
    monkeypatch.setenv("ZOJAX_CACHE_DIR", str(tmp_path / "cache"))
    assert tasks_main(["--data-dir", str(data)]) == 0
    fresh = capsys.readouterr().out
    assert "11/11 tasks available" in fresh and len(list((tmp_path / "cache").iterdir())) == 1
    calls = []
    real = listing.list_tasks
    monkeypatch.setattr(listing, "list_tasks", lambda *a: calls.append(1) or real(*a))
    assert tasks_main(["--data-dir", str(data)]) == 0
    assert capsys.readouterr().out == fresh and calls == []  # from the cache, the data not read
    some = next(p for p in data.rglob("*") if p.is_file())
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 10**9))
    assert tasks_main(["--data-dir", str(data)]) == 0
    assert capsys.readouterr().out == fresh and calls == [1]  # a changed file: recomputed
    assert tasks_main(["--data-dir", str(data), "--no-cache"]) == 0
    assert calls == [1, 1]
