r"""The run directory: where a run goes, whether ``--out`` / ``--resume`` fit it, the saved config.

Every check and merge between a requested configuration and the one saved in
``<out>/config.json`` lives here:

* :func:`check` refuses a new run in a directory that holds one, a resume without a run, options
  that would change the resumed trajectory, and ``--steps`` below the latest checkpoint;
* :func:`saved_with_flags` is what ``zojax finetune --resume`` means: the saved configuration with
  the flags given on the command line on top (``--stop-after`` never carried over);
* :func:`resumed` is the configuration a resumed run actually uses: the saved one with this
  invocation's length (``steps`` / ``forward_budget``), ``run`` section and data folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zojax.train import checkpoint as ckpt_lib
from zojax.train.config import TrainConfig, check_resume_compatible, from_dict, to_dict

CONFIG = "config.json"


def default_out(config: TrainConfig) -> str:
    """``runs/<task>_<method>_<tuning>_s<seed>_<timestamp>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    c = config
    return f"runs/{c.data.task}_{c.optim.method}_{c.model.tuning}_s{c.run.seed}_{stamp}"


def load_saved(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The configuration saved in ``run_dir`` (``ValueError`` naming ``--resume`` when absent)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"--resume: no run to resume in {run_dir} (no config.json)")
    return from_dict(json.loads(path.read_text())["config"])


def check(config: TrainConfig) -> TrainConfig | None:
    """Checks ``config.run.out`` against ``config.run.resume``; returns the saved config when resuming.

    Raises:
      ValueError: a new run in a directory that holds one, a resume without a run, changed
        options, or ``--steps`` below the step of the latest checkpoint.
    """
    run_dir = Path(config.run.out)
    if config.run.resume:
        saved = load_saved(run_dir)
        check_resume_compatible(saved, config)
        present = ckpt_lib.Checkpoints(run_dir / "checkpoints").steps()
        if present and config.training and present[-1] > config.optim.steps:
            raise ValueError(
                f"--steps: the run in {run_dir} is at step {present[-1]} already; resume with "
                f"--steps >= {present[-1]} (or a larger --forward-budget)"
            )
        return saved
    if (run_dir / CONFIG).exists() or (run_dir / "checkpoints").exists():
        raise ValueError(f"--out: {run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return None


def resumed(saved: TrainConfig, requested: TrainConfig) -> TrainConfig:
    """``saved`` with ``requested``'s length, ``run`` section and data folder."""
    return dataclasses.replace(
        saved,
        optim=dataclasses.replace(
            saved.optim, steps=requested.optim.steps, forward_budget=requested.optim.forward_budget
        ),
        run=requested.run,
        data=dataclasses.replace(saved.data, data_dir=requested.data.data_dir),
    )


def saved_with_flags(out: str | None, explicit: Mapping[str, Any]) -> TrainConfig:
    """The saved configuration of ``out`` with the explicitly given flags on top (unresolved).

    Args:
      out: the run directory (``--out``).
      explicit: ``{"section.field": value}`` of the flags given on the command line.
    """
    if out is None:
        raise ValueError("--resume: give the run directory with --out")
    saved = to_dict(load_saved(out))
    saved["run"]["stop_after"] = None  # per invocation: never carried into a resume
    if saved["optim"]["forward_budget"] is not None:
        saved["optim"]["steps"] = None
    if "optim.steps" in explicit:
        saved["optim"]["forward_budget"] = None
    if "optim.forward_budget" in explicit:
        saved["optim"]["steps"] = None
    for k, v in explicit.items():
        sec, field = k.split(".", 1)
        saved[sec][field] = list(v) if isinstance(v, tuple) else v
    return from_dict(saved)


def write_config(run_dir: Path, config: TrainConfig, extra: Mapping[str, Any]) -> None:
    """Writes ``<run_dir>/config.json`` (the config plus ``extra``) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"config": to_dict(config), **extra}
    tmp = run_dir / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, run_dir / CONFIG)
