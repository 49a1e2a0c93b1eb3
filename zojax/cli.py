"""The ``zojax`` command: ``zojax finetune``, ``sweep``, ``table``, ``methods``, ``tasks``.

``zojax finetune`` (also ``python experiments/finetune.py``) runs one fine-tuning job; with no
options it is the short default job: SmolLM2-135M-Instruct (embedded), SST-2, MeZO-GV (M = 4),
full tuning, a budget of 150 forward passes, dev accuracy printed before and after training.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zojax import registry
from zojax.train import config as C
from zojax.train import run_dir
from zojax.train.cache import enable_compile_cache

_SUPPRESS = argparse.SUPPRESS


def methods_table() -> str:
    """One line per ``--method`` choice: name, forward passes per step, description."""
    rows = []
    for name, m in registry.METHODS.items():
        rows.append((name, m.forwards_per_step(), m.description))
    rows.append(
        (
            C.FO_METHOD,
            1,
            "first-order fine-tuning: Adam on jax.grad of the same objective (1 forward + 1 backward/step)",
        )
    )
    rows.append(("zero-shot", 0, "no training: evaluate the model as it is"))
    rows.append(("icl", 0, "no training: in-context learning with --num-demos demonstrations"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {n:<{width}}  {f:>2} fwd/step  {d}" for n, f, d in rows)


def add_finetune_arguments(p: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """Adds every ``finetune`` option to ``p`` (``dest`` is ``section.field`` of TrainConfig).

    Args:
      p: the parser.
      suppress_defaults: leave unset options out of the namespace (to tell which were given).
    """
    d = C.TrainConfig()

    def add(group: Any, flag: str, dest: str, default: Any, **kw: Any) -> None:
        if suppress_defaults:
            default = _SUPPRESS
        if kw.get("action") is None and "metavar" not in kw and "choices" not in kw:
            kw["metavar"] = flag.lstrip("-").upper().replace("-", "_")
        group.add_argument(flag, dest=dest, default=default, **kw)

    def flag_pair(group: Any, flag: str, dest: str, default: bool, help: str) -> None:
        group.add_argument(
            flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=_SUPPRESS if suppress_defaults else default,
            help=help,
        )

    g = p.add_argument_group("model")
    add(
        g,
        "--model",
        "model.name",
        d.model.name,
        metavar="NAME",
        help="model: 'smollm2-135m-instruct' (embedded, default), a local HF folder or .gguf, a "
        "hub id, or random:<preset> (random weights, byte tokenizer; e.g. random:tiny)",
    )
    add(g, "--dtype", "model.dtype", d.model.dtype, choices=C.DTYPES, help="parameter dtype")
    flag_pair(
        g,
        "--master-weights",
        "model.master_weights",
        d.model.master_weights,
        "with --dtype bfloat16: float32 trained weights, bfloat16 compute (default: off)",
    )
    add(
        g,
        "--opt-bos",
        "model.opt_bos",
        d.model.opt_bos,
        choices=C.OPT_BOS,
        help="OPT only: BOS id 0 as MeZO sets it (mezo, default) or the checkpoint's </s> (checkpoint)",
    )
    add(
        g,
        "--tuning",
        "model.tuning",
        d.model.tuning,
        choices=C.TUNINGS,
        help="full fine-tuning, LoRA or prefix tuning (default: full)",
    )
    add(g, "--lora-rank", "model.lora_rank", d.model.lora_rank, type=int, help="LoRA rank r")
    add(g, "--lora-alpha", "model.lora_alpha", d.model.lora_alpha, type=float, help="LoRA alpha")
    add(
        g,
        "--lora-targets",
        "model.lora_targets",
        d.model.lora_targets,
        type=_csv,
        help="comma-separated LoRA targets (q,k,v,o,gate,up,down,fc1,fc2); default q,v",
    )
    add(
        g,
        "--num-virtual-tokens",
        "model.num_virtual_tokens",
        d.model.num_virtual_tokens,
        type=int,
        help="prefix-tuning length (default 5)",
    )

    g = p.add_argument_group("data")
    add(g, "--task", "data.task", d.data.task, help="task (see `zojax tasks`; default sst2)")
    add(
        g,
        "--data-dir",
        "data.data_dir",
        d.data.data_dir,
        help="data folder (default $ZOJAX_DATA_DIR or ../shared/data)",
    )
    add(
        g,
        "--protocol",
        "data.protocol",
        d.data.protocol,
        choices=C.PROTOCOLS,
        help="default split sizes and dev cadence: quick (1000/100/200, dev before and after; the "
        "default) or mezo (MeZO's 1000/500/1000, CB and COPA dev 100, dev every 1000 steps)",
    )
    add(
        g,
        "--num-train",
        "data.num_train",
        d.data.num_train,
        type=int,
        help="training examples (default by --protocol: 1000)",
    )
    add(
        g,
        "--num-dev",
        "data.num_dev",
        d.data.num_dev,
        type=int,
        help="dev examples (default by --protocol: quick 100, mezo 500 / CB, COPA 100)",
    )
    add(
        g,
        "--num-test",
        "data.num_test",
        d.data.num_test,
        type=int,
        help="test examples (default by --protocol: quick 200, mezo 1000)",
    )
    add(
        g,
        "--max-length",
        "data.max_length",
        d.data.max_length,
        type=int,
        help="cap on training sequence length, tokens (left truncation keeping BOS)",
    )
    add(
        g,
        "--eval-max-length",
        "data.eval_max_length",
        d.data.eval_max_length,
        type=int,
        help="cap on evaluation sequence length",
    )
    add(
        g,
        "--max-new-tokens",
        "data.max_new_tokens",
        d.data.max_new_tokens,
        type=int,
        help="generation budget of SQuAD/DROP (MeZO: 50)",
    )

    g = p.add_argument_group("method and optimisation")
    add(
        g,
        "--method",
        "optim.method",
        d.optim.method,
        metavar="METHOD",
        help="one of: " + ", ".join(C.method_names()) + " (default mezo-gv; see below)",
    )
    add(
        g,
        "--lr",
        "optim.lr",
        d.optim.lr,
        type=float,
        help="learning rate (default by method and tuning: ZO full 3e-5 / lora 1e-4 / prefix "
        f"1e-2; ft full 1e-5 / lora 1e-4 / prefix 1e-3); required for full-tuning ZO runs of more "
        f"than {C.DEFAULT_LR_MAX_FORWARDS} forward passes",
    )
    add(
        g,
        "--eps",
        "optim.eps",
        d.optim.eps,
        type=float,
        help="perturbation scale (default full 1e-3, lora 1e-2, prefix 1e-1)",
    )
    add(
        g,
        "--num-candidates",
        "optim.num_candidates",
        d.optim.num_candidates,
        type=int,
        help="M candidates of mezo-gv / mezo-greedy (default 4)",
    )
    add(
        g,
        "--elite-ratio",
        "optim.elite_ratio",
        d.optim.elite_ratio,
        type=float,
        help="alpha of mezo-gv: floor(alpha*M) low-loss candidates (default 0.5)",
    )
    add(
        g,
        "--num-queries",
        "optim.num_queries",
        d.optim.num_queries,
        type=int,
        help="q of nspsa (default 2)",
    )
    add(
        g,
        "--weighting",
        "optim.weighting",
        d.optim.weighting,
        choices=("mean_diff", "rank"),
        help="mezo-gv candidate weighting (default mean_diff, the paper's)",
    )
    flag_pair(
        g,
        "--normalize",
        "optim.normalize",
        d.optim.normalize,
        "mezo-gv: rescale the guiding vector so E|v|^2 = d",
    )
    flag_pair(
        g,
        "--reuse-best-loss",
        "optim.reuse_best_loss",
        d.optim.reuse_best_loss,
        "mezo-greedy: reuse L(theta+eps z*) (M+1 forwards)",
    )
    add(
        g,
        "--distribution",
        "optim.distribution",
        d.optim.distribution,
        choices=("gaussian", "rademacher"),
        help="perturbation distribution",
    )
    add(
        g,
        "--perturbation",
        "optim.perturbation",
        d.optim.perturbation,
        choices=C.PERTURBATIONS,
        help="iid noise (MeZO; default) or SubZero's low-rank subspace noise U Z V^T on matrix leaves",
    )
    add(g, "--rank", "optim.rank", d.optim.rank, type=int, help="subspace rank (default 32 with subspace noise)")
    add(
        g,
        "--refresh-every",
        "optim.refresh_every",
        d.optim.refresh_every,
        type=int,
        help="steps between subspace refreshes (default 1000 with --perturbation subspace)",
    )
    add(
        g,
        "--weight-decay",
        "optim.weight_decay",
        d.optim.weight_decay,
        type=float,
        help="weight decay, none on biases and norms (default 0)",
    )
    add(
        g,
        "--update-rounding",
        "optim.update_rounding",
        d.optim.update_rounding,
        choices=C.ROUNDINGS,
        help="rounding of updates into bfloat16 weights: nearest or stochastic (default nearest)",
    )
    add(
        g,
        "--batch-size",
        "optim.batch_size",
        d.optim.batch_size,
        type=int,
        help="examples per step (default 16)",
    )
    budget = g.add_mutually_exclusive_group()
    add(
        budget,
        "--steps",
        "optim.steps",
        d.optim.steps,
        type=int,
        help=f"training steps (default: a budget of {C.DEFAULT_FORWARD_BUDGET} forward passes)",
    )
    add(
        budget,
        "--forward-budget",
        "optim.forward_budget",
        d.optim.forward_budget,
        type=int,
        metavar="N",
        help="total forward passes; steps = N // forwards per step (equal-compute "
        "comparisons: mezo 2, mezo-gv/greedy M+2, nspsa 2q)",
    )

    g = p.add_argument_group("evaluation")
    add(
        g,
        "--eval-every",
        "eval.eval_every",
        d.eval.eval_every,
        type=int,
        help="dev evaluation every N steps (0: before and after training only; default by "
        "--protocol: quick 0, mezo 1000)",
    )
    flag_pair(
        g,
        "--eval-before",
        "eval.eval_before",
        d.eval.eval_before,
        "evaluate on dev before training (default on)",
    )
    add(
        g,
        "--select-by",
        "eval.select_by",
        d.eval.select_by,
        choices=C.SELECT_BY,
        help="which dev evaluation's parameters are tested: lowest dev loss of the training "
        "objective (default; MeZO's rule) or highest task metric; ties go to the later step",
    )
    flag_pair(
        g,
        "--select-initial",
        "eval.select_initial",
        d.eval.select_initial,
        "let the untrained step-0 parameters be selected (default: never)",
    )
    add(
        g,
        "--stop-rule",
        "eval.stop_rule",
        d.eval.stop_rule,
        choices=C.STOP_RULES,
        help="SQuAD/DROP generation stops when the text holds a newline (text, default) or at the "
        "exact newline token id or EOS (mezo, MeZO's rule)",
    )
    add(
        g,
        "--num-demos",
        "eval.num_demos",
        d.eval.num_demos,
        type=int,
        help="demonstrations per example for --method icl (MeZO: 32)",
    )
    add(
        g,
        "--eval-token-budget",
        "eval.token_budget",
        d.eval.token_budget,
        type=int,
        help="tokens per scoring forward pass in evaluation (default 1024)",
    )

    g = p.add_argument_group("run")
    add(
        g,
        "--mesh",
        "run.mesh",
        d.run.mesh,
        help="devices: auto (all, on the fsdp axis), none (one device) or data=D,fsdp=F (default auto)",
    )
    add(
        g,
        "--seed",
        "run.seed",
        d.run.seed,
        type=int,
        help="seed of data sampling and order, adapters and perturbations (default 0)",
    )
    add(
        g,
        "--out",
        "run.out",
        d.run.out,
        help="run directory (default runs/<task>_<method>_<tuning>_s<seed>_<time>)",
    )
    add(
        g,
        "--resume",
        "run.resume",
        d.run.resume,
        action="store_true",
        help="continue the run in --out from its latest valid checkpoint",
    )
    add(
        g,
        "--checkpoint-every",
        "run.checkpoint_every",
        d.run.checkpoint_every,
        type=int,
        help="checkpoint every N steps (default 0: by time, at the end and on Ctrl-C/SIGTERM only)",
    )
    add(
        g,
        "--checkpoint-minutes",
        "run.checkpoint_minutes",
        d.run.checkpoint_minutes,
        type=float,
        help=f"also checkpoint after this many minutes of training since the last (default "
        f"{d.run.checkpoint_minutes:g}; 0: off): a kill loses at most that much",
    )
    add(
        g,
        "--keep-checkpoints",
        "run.keep_checkpoints",
        d.run.keep_checkpoints,
        type=int,
        help="periodic checkpoints kept (default 2)",
    )
    add(
        g,
        "--stop-after",
        "run.stop_after",
        d.run.stop_after,
        type=int,
        metavar="N",
        help="checkpoint and stop after N steps in this process (resume later)",
    )
    flag_pair(g, "--progress", "run.progress", d.run.progress, "show a progress bar")
    add(
        g,
        "--dry-run",
        "run.dry_run",
        d.run.dry_run,
        action="store_true",
        help="validate the configuration, print it and exit",
    )


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def finetune_parser(prog: str = "zojax finetune") -> argparse.ArgumentParser:
    """The ``finetune`` parser (shared by ``zojax finetune`` and ``experiments/finetune.py``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a causal LM on a MeZO task with a zeroth-order method (or ft).",
        epilog="methods (--method):\n" + methods_table() + "\n\nThe default job: SmolLM2-135M-"
        "Instruct, SST-2, mezo-gv, full tuning, 150 forward passes (25 steps); prints dev accuracy before "
        "and after. MeZO's protocol: --protocol mezo --forward-budget 40000 --lr 2e-7 (the paper's "
        "full-tuning grid: 1e-7, 2e-7, 5e-7).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_finetune_arguments(p)
    p.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="persistent XLA compilation cache, so a resumed or repeated run skips compiling "
        "(default $ZOJAX_COMPILE_CACHE or ~/.cache/zojax/xla; 'none' disables)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=_SUPPRESS,
        help="show the traceback of an error (by default an error you can fix is one line)",
    )
    return p


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        sec, field = k.split(".", 1)
        out.setdefault(sec, {})[field] = v
    return out


def config_from_args(argv: Sequence[str], prog: str = "zojax finetune") -> C.TrainConfig:
    """Parses ``argv`` into a resolved :class:`TrainConfig` (the saved one, when resuming).

    Raises:
      SystemExit: argparse errors (exit status 2, message names the option).
      ValueError: invalid values (the message starts with the option).
    """
    ns = vars(finetune_parser(prog).parse_args(argv))
    ns.pop("compile_cache", None)
    explicit_p = argparse.ArgumentParser(add_help=False)
    add_finetune_arguments(explicit_p, suppress_defaults=True)
    explicit_p.add_argument("--compile-cache", default=_SUPPRESS)
    explicit = vars(explicit_p.parse_args(argv))
    explicit.pop("compile_cache", None)
    cfg = C.from_dict(_nest(ns))
    if cfg.run.resume:
        cfg = run_dir.saved_with_flags(cfg.run.out, explicit)
    return cfg.resolve()


def dry_run(cfg: C.TrainConfig) -> dict[str, Any]:
    """Checks what a real run would reject before training, without loading weights; returns the plan.

    The model name and files (a ``.gguf``'s header and size, a folder's ``config.json`` and
    safetensors headers), the run directory (``--out`` / ``--resume``, writable), the task's data
    and, for a training method, a non-empty training split.

    Raises:
      ValueError: an option that does not fit (the message starts with it); a
        :class:`~zojax.errors.UserError` for a bad file or folder.
    """
    from zojax.errors import UserError
    from zojax.models.loading import check_model_files
    from zojax.tasks import TaskDataMissingError
    from zojax.train.job import load_splits
    from zojax.train.loop import Trainer
    from zojax.train.models import check_model_name
    from zojax.train.preflight import check_out_writable, check_train_split

    try:
        check_model_files(cfg.model.name)
    except UserError as e:
        raise UserError(f"--model: {e}") from e
    check_model_name(cfg.model.name)
    trainer = Trainer(cfg)  # the run directory a real run would use (the default one too)
    trainer.check_run_dir()
    check_out_writable(trainer.run_dir)
    try:
        splits = load_splits(cfg)
    except TaskDataMissingError as e:
        raise ValueError(f"--task: {e}") from None
    check_train_split(cfg, splits)
    fps = cfg.forwards_per_step()
    return {
        "config": C.to_dict(cfg),
        "forwards_per_step": fps,
        "steps": cfg.optim.steps,
        "forwards": cfg.optim.steps * fps,
        "splits": splits.describe(),
    }


def finetune_main(argv: Sequence[str] | None = None, prog: str = "zojax finetune") -> int:
    """``zojax finetune``: parse, validate, run; returns the exit status.

    0: done (or stopped by ``--stop-after``, or a dry run); 1: an error you can fix stopped the run
    (a bad data or model file, a full disk: one line, see :class:`zojax.errors.UserError`); 2: bad
    arguments, or such an error found before the run started (a missing model, an unwritable
    ``--out``); 128 + signal number: interrupted by SIGINT/SIGTERM after checkpointing. Any other
    exception is a bug and propagates with its traceback; ``--debug`` also prints the traceback of
    the errors above.
    """
    import traceback

    from zojax.errors import UserError, disk_full_reason, one_line

    def is_debug(a: str) -> bool:  # --debug, or an abbreviation argparse would accept
        return len(a) >= 5 and "--debug".startswith(a)

    def user_error(e: BaseException, status: int, message: str | None = None) -> int:
        if debug:
            traceback.print_exception(e)
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"{prog}: error: {one_line(message or e)}{hint}", file=sys.stderr, flush=True)
        return status

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = any(is_debug(a) for a in argv)
    argv = [a for a in argv if not is_debug(a)]
    parser = finetune_parser(prog)
    try:
        cfg = config_from_args(argv, prog)
        if cfg.run.dry_run:
            plan = dry_run(cfg)
            print(json.dumps(plan, indent=2))
            print(
                f"dry run OK: {cfg.optim.method} on {cfg.data.task}, {plan['steps']} steps x "
                f"{plan['forwards_per_step']} forwards = {plan['forwards']} forward passes"
            )
            return 0
        from zojax.models.loading import check_model_files
        from zojax.train.loop import Trainer, check_model_name
        from zojax.train.preflight import check_out_writable

        # as --dry-run does (less the GGUF header): a missing or non-model file fails now, not after the data
        try:
            check_model_files(cfg.model.name, headers=False)
        except UserError as e:
            raise UserError(f"--model: {e}") from e
        check_model_name(cfg.model.name)
        cache = argparse.ArgumentParser(add_help=False)
        cache.add_argument("--compile-cache", default=None)
        enable_compile_cache(cache.parse_known_args(argv)[0].compile_cache)
        trainer = Trainer(cfg)
        trainer.check_run_dir()
        check_out_writable(trainer.run_dir)  # before the data and the model are loaded
    except UserError as e:  # a bad file or folder: one line
        return user_error(e, 2)
    except ValueError as e:  # bad options
        if debug:
            traceback.print_exc()
        parser.error(str(e))
    try:
        report = trainer.run()
    except KeyboardInterrupt:
        print("\n[zojax] aborted", file=sys.stderr)
        return 128 + signal.SIGINT
    except UserError as e:  # raised deep inside (data, model, checkpoints): one line
        return user_error(e, 1)
    except OSError as e:  # a full disk outside the checkpoints (logs, results): one line too
        reason = disk_full_reason(e)
        if reason is None:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return user_error(
            e,
            1,
            f"the disk is full ({reason}){where}: free some space, then continue with: "
            f"zojax finetune --out {trainer.run_dir} --resume",
        )
    if report.get("status") == "interrupted" and report.get("signal"):
        return 128 + int(report["signal"])
    return 0


def methods_main(argv: Sequence[str] | None = None) -> int:
    """``zojax methods``: the registry with forward passes per step."""
    argparse.ArgumentParser(prog="zojax methods", description=methods_main.__doc__).parse_args(argv)
    print("method (--method), forward passes per step with default options, description")
    print(methods_table())
    return 0


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``zojax sweep SPEC``: run (or check, or print) the cells of a sweep spec."""
    from zojax import sweep as S

    p = argparse.ArgumentParser(
        prog="zojax sweep",
        description="Run the cells of a sweep spec (TOML/JSON; see zojax.sweep) as zojax finetune runs, "
        "each in its own run directory. Resumable: finished cells are skipped, started ones resume "
        "from their checkpoint.",
    )
    p.add_argument("spec", help="the spec file (or a folder holding one)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every cell (options and data) and print the cell count, each method's "
                   "forward budget, and a time estimate")  # fmt: skip
    p.add_argument("--measure", action="store_true",
                   help="with --dry-run: time one training-shaped forward pass per task on this machine "
                   "(loads the model) for the estimate")  # fmt: skip
    p.add_argument("--forward-seconds", type=float, default=None, metavar="S",
                   help="with --dry-run: seconds per forward pass for the estimate (instead of --measure)")  # fmt: skip
    p.add_argument("--print-commands", action="store_true",
                   help="print one zojax finetune line per unfinished cell (for SLURM arrays, GNU parallel, "
                   "or a pod's hosts) and exit")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="cells run at once (default 1)")
    p.add_argument("--only", default=None, metavar="TEXT", help="only cells whose id contains TEXT")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args, extra = p.parse_known_args(argv)
    try:
        spec = S.load_spec(args.spec)
        cells = [c for c in spec.cells() if args.only is None or args.only in c.id]
        if args.print_commands:
            for c in cells:
                if S.cell_status(spec.out / c.id) != "done":
                    argv_c = S.finetune_argv(c.config(spec.out))
                    if S.cell_status(spec.out / c.id) == "started":
                        argv_c.append("--resume")
                    print(S.shell_line(argv_c + extra))
            return 0
        if args.dry_run:
            fwd = None
            if args.forward_seconds is not None:
                fwd = {c.options.get("data.task", C.DataArgs().task): args.forward_seconds for c in cells}
            elif args.measure:
                fwd = S.measure_forward_seconds(spec)
                for task, sec in fwd.items():
                    print(f"measured forward pass: {task} {sec:.3f} s")
            ids = {c.id for c in cells}
            rows = [r for r in S.plan(spec, forward_seconds=fwd) if r.cell.id in ids]
            print(S.describe_plan(spec, rows))
            return 0
    except ValueError as e:
        p.error(str(e))
    result = S.SweepRunner(spec, jobs=args.jobs, extra_args=extra, progress=args.progress).run(cells)
    failed = {k: v for k, v in result.items() if v.startswith("failed")}
    counts = {s: sum(v == s for v in result.values()) for s in ("done", "skipped", "interrupted", "not started")}
    print(
        f"[zojax sweep] {spec.name}: {counts['done']} done now, {counts['skipped']} already done, "
        f"{counts['interrupted']} interrupted, {counts['not started']} not started, {len(failed)} failed"
    )
    for k, v in failed.items():
        print(f"[zojax sweep] {k}: {v}")
    if counts["interrupted"] or counts["not started"]:
        return 128 + signal.SIGTERM
    return 1 if failed else 0


def table_main(argv: Sequence[str] | None = None) -> int:
    """``zojax table RUN_DIRS…``: MeZO's protocol over finished runs (lr by dev, test mean ± std)."""
    from zojax import table as T

    p = argparse.ArgumentParser(
        prog="zojax table",
        description="Per task and method: the learning rate chosen by mean dev metric over seeds, test mean "
        "± std over seeds, forward passes and wall time; the paired comparison with MeZO.",
    )
    p.add_argument("runs", nargs="+", help="run directories or folders holding them (e.g. a sweep's out)")
    p.add_argument("--baseline", default=T.BASELINE, help="the row others are compared with (default MeZO)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the Markdown to FILE")
    p.add_argument("--plot", default=None, metavar="PNG", help="dev metric vs forward passes, seed bands")
    args = p.parse_args(argv)
    try:
        table = T.table_from_dirs(args.runs, args.baseline)
    except ValueError as e:
        p.error(str(e))
    md = T.markdown(table)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(T.to_json(table) + "\n")
    if args.plot:
        T.plot(table, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zojax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "finetune": "fine-tune a model (see zojax finetune --help)",
        "sweep": "run, check or print the cells of a sweep spec (zojax sweep --help)",
        "table": "MeZO-protocol table from finished runs (zojax table --help)",
        "methods": "list the methods with forward passes per step",
        "tasks": "list the tasks with their data source and split sizes",
    }
    p = argparse.ArgumentParser(
        prog="zojax",
        description="Zeroth-order fine-tuning of LLMs in JAX.",
        epilog="commands:\n"
        + "\n".join(f"  {k:<9} {v}" for k, v in commands.items())
        + "\n\nmethods:\n"
        + methods_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=tuple(commands), metavar="command", help="one of: " + ", ".join(commands))
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    args, rest = p.parse_known_args(argv[:1])
    rest = argv[1:]
    if args.command == "finetune":
        return finetune_main(rest)
    if args.command == "methods":
        return methods_main(rest)
    if args.command == "sweep":
        return sweep_main(rest)
    if args.command == "table":
        return table_main(rest)
    from zojax.tasks.__main__ import main as tasks_main

    return tasks_main(rest)


if __name__ == "__main__":
    sys.exit(main())
