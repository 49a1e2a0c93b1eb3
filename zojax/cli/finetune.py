"""``zojax finetune`` (also ``python experiments/finetune.py``): one fine-tuning job.

With no options it is the short default job: SmolLM2-135M-Instruct (embedded), SST-2, MeZO-GV
(M = 4), full tuning, a budget of 150 forward passes, dev accuracy printed before and after training.
Every configuration flag comes from :mod:`zojax.cli.args`; JAX is imported once a run starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from zojax.cli import args as A
from zojax.cli.info import methods_table
from zojax.train import config as C


def finetune_parser(prog: str = "zojax finetune") -> argparse.ArgumentParser:
    """The ``finetune`` parser (shared by ``zojax finetune`` and ``experiments/finetune.py``).

    Configuration flags have ``dest="section.field"`` and no default (only the flags given are in
    the namespace); ``--compile-cache`` (default ``None``) and ``--debug`` are not configuration.
    """
    d = C.TrainConfig()
    steps = C.default_steps(d.optim.method, d.forwards_per_step())
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a causal LM on a MeZO task with a zeroth-order method (or ft).",
        epilog="methods (--method):\n" + methods_table() + f"\n\nThe default job: {d.model.name}, "
        f"{d.data.task}, {d.optim.method}, {d.model.tuning} tuning, {C.DEFAULT_FORWARD_BUDGET} forward passes "
        f"({steps} steps); prints dev accuracy before and after. MeZO's protocol: --protocol mezo "
        "--forward-budget 40000 --lr 2e-7 (the paper's full-tuning grid: 1e-7, 2e-7, 5e-7).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    A.add_config_arguments(p)
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
        default=argparse.SUPPRESS,
        help="show the traceback of an error (by default an error you can fix is one line)",
    )
    return p


def parse(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple[C.TrainConfig, argparse.Namespace]:
    """``argv`` parsed once: the resolved config (the saved one with the given flags on top, when
    resuming) and the namespace (``compile_cache``).

    Raises:
      SystemExit: argparse errors (exit status 2, message names the option).
      ValueError: invalid values (the message starts with the option).
    """
    ns = parser.parse_args(argv)
    explicit = A.explicit_options(ns)
    if explicit.get("run.resume"):
        from zojax.train import run_dir

        cfg = run_dir.saved_with_flags(explicit.get("run.out"), explicit)
    else:
        cfg = A.config_from_options(explicit)
    return cfg.resolve(), ns


def config_from_args(argv: Sequence[str], prog: str = "zojax finetune") -> C.TrainConfig:
    """Parses ``argv`` into a resolved :class:`TrainConfig` (the saved one, when resuming).

    Raises:
      SystemExit: argparse errors (exit status 2, message names the option).
      ValueError: invalid values (the message starts with the option).
    """
    return parse(argv, finetune_parser(prog))[0]


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


DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "ZOJAX_DISTRIBUTED")


def join_processes() -> None:
    """Joins a multi-process job when the environment describes one (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or ``ZOJAX_DISTRIBUTED=auto``; see
    :func:`zojax.distributed.initialize`), before anything touches a device. Nothing otherwise
    (``--help`` stays free of JAX)."""

    if any(os.environ.get(k, "").strip() for k in DISTRIBUTED_ENV):
        from zojax import distributed

        distributed.initialize()


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
        join_processes()
        cfg, ns = parse(argv, parser)
        if cfg.run.dry_run:
            plan = dry_run(cfg)
            print(json.dumps(plan, indent=2))
            print(
                f"dry run OK: {cfg.optim.method} on {cfg.data.task}, {plan['steps']} steps x "
                f"{plan['forwards_per_step']} forwards = {plan['forwards']} forward passes"
            )
            return 0
        from zojax.models.loading import check_model_files
        from zojax.train.cache import enable_compile_cache
        from zojax.train.loop import Trainer, check_model_name
        from zojax.train.preflight import check_out_writable

        # as --dry-run does (less the GGUF header): a missing or non-model file fails now, not after the data
        try:
            check_model_files(cfg.model.name, headers=False)
        except UserError as e:
            raise UserError(f"--model: {e}") from e
        check_model_name(cfg.model.name)
        enable_compile_cache(ns.compile_cache)
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
    except Exception as e:
        import jax

        if jax.process_count() == 1:
            raise
        # Several processes: a collective failed, most likely because another process died. Say so
        # in one line and leave at once: a normal exit would wait for JAX's shutdown barrier (the
        # heartbeat timeout, ~100 s) and then abort with a C++ stack dump.
        user_error(
            e,
            1,
            f"process {jax.process_index()} of {jax.process_count()}: {one_line(e)}. If another process "
            f"died, restart every process with: zojax finetune --out {trainer.run_dir} --resume",
        )
        sys.stdout.flush()
        os._exit(1)
    if report.get("status") == "interrupted" and report.get("signal"):
        return 128 + int(report["signal"])
    return 0
