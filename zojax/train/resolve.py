r"""Resolution of a :class:`~zojax.train.config.TrainConfig`: defaults that depend on other fields, and checks.

:func:`resolve` fills, in order, the protocol's split sizes and dev cadence, the task's dev size,
SubZero's rank and refresh interval, ε and the learning rate by method and tuning, and the number of
steps from a forward-pass budget (``steps = N // forwards_per_step``); then every choice and every
integer's ``minimum`` (field metadata) is checked, and the estimator is built once so that its own
checks speak with the option's flag. Every error is a ``ValueError`` whose message starts with the flag.

Example::

  >>> from zojax.train.config import TrainConfig
  >>> TrainConfig().resolve().optim.steps   # mezo-gv, M = 4: 150 forward passes // 6
  25
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from zojax import registry, specs
from zojax.train.config import (
    DEFAULT_EPS,
    DEFAULT_FORWARD_BUDGET,
    DEFAULT_FT_LR,
    DEFAULT_LR_MAX_FORWARDS,
    DEFAULT_ZO_LR,
    FO_METHOD,
    MESH_ENV,
    PROTOCOL_SIZES,
    SUBSPACE_DEFAULTS,
    TrainConfig,
    default_steps,
    fields,
    flag,
    flat_items,
    from_dict,
    is_zo,
    to_dict,
)
from zojax.train.trackers import TRACKERS, WANDB_MISSING, wandb_installed


def resolve(config: TrainConfig) -> TrainConfig:
    r"""A copy of ``config`` with every default filled in and every option checked.

    Args:
      config: a configuration as given (``None`` fields take their defaults here).

    Returns:
      the resolved config: the split sizes, ``eval.eval_every``, ``optim.lr``, ``optim.eps`` and
      ``optim.steps`` are set (``steps = forward_budget // forwards_per_step`` when a budget is given).

    Raises:
      ValueError: an invalid option; the message starts with the option's flag.
    """
    c = from_dict(to_dict(config))
    m, d, o, e, r = c.model, c.data, c.optim, c.eval, c.run
    known = fields()
    for key, value in flat_items(c).items():  # argparse checks most choices; config files and sweeps too
        if "choices" in known[key].metadata:
            _choice(flag(key), value, known[key].metadata["choices"])
    if m.master_weights and m.dtype != "bfloat16":
        raise ValueError("--master-weights: needs --dtype bfloat16 (float32 weights are already the master copy)")
    if o.update_rounding == "stochastic" and (m.dtype != "bfloat16" or m.master_weights):
        raise ValueError(
            "--update-rounding stochastic: rounds bfloat16 weights; needs --dtype bfloat16 without --master-weights"
        )
    if r.mesh.strip().lower() == "auto" and os.environ.get(MESH_ENV, "").strip():
        r.mesh = os.environ[MESH_ENV].strip()
    mesh_axis_sizes(r.mesh)
    _check_trackers(r.trackers)
    sizes = PROTOCOL_SIZES[d.protocol]
    for name in ("num_train", "num_dev", "num_test"):
        if getattr(d, name) is None:
            setattr(d, name, sizes[name])
    if e.eval_every is None:
        e.eval_every = sizes["eval_every"]
    if o.perturbation == "subspace":
        o.rank = SUBSPACE_DEFAULTS["rank"] if o.rank is None else o.rank
        o.refresh_every = SUBSPACE_DEFAULTS["refresh_every"] if o.refresh_every is None else o.refresh_every
    elif o.rank is not None or o.refresh_every is not None:
        raise ValueError("--rank and --refresh-every: only with --perturbation subspace")
    try:
        from zojax.tasks import get_task

        task = get_task(d.task)
    except KeyError as err:
        raise ValueError(f"--task: {err.args[0]}") from None
    if d.num_dev is None:
        d.num_dev = task.num_dev
    _check_objective(c, task)
    for key, value in flat_items(c).items():  # every integer with a least value (field metadata)
        if "minimum" in known[key].metadata and value is not None:
            _positive(flag(key), value, minimum=known[key].metadata["minimum"])
    if not (r.checkpoint_minutes >= 0 and math.isfinite(r.checkpoint_minutes)):
        raise ValueError(f"--checkpoint-minutes: must be a finite number >= 0, got {r.checkpoint_minutes}")
    if o.weight_decay < 0:
        raise ValueError(f"--weight-decay: must be >= 0, got {o.weight_decay}")
    if o.eps is None:
        o.eps = DEFAULT_EPS[m.tuning]
    if not (o.eps > 0 and math.isfinite(o.eps)):
        raise ValueError(f"--eps: the perturbation scale must be > 0, got {o.eps}")
    lr_defaulted = o.lr is None
    if o.lr is None:
        o.lr = (DEFAULT_FT_LR if o.method == FO_METHOD else DEFAULT_ZO_LR)[m.tuning]
    if not (o.lr >= 0 and math.isfinite(o.lr)):
        raise ValueError(f"--lr: must be a finite number >= 0, got {o.lr}")
    if is_zo(o.method):
        _check_method(c)
    _resolve_steps(c)
    forwards = o.steps * c.forwards_per_step()
    if lr_defaulted and is_zo(o.method) and m.tuning == "full" and forwards > DEFAULT_LR_MAX_FORWARDS:
        raise ValueError(
            f"--lr: required for {forwards} forward passes of full tuning; the default "
            f"{DEFAULT_ZO_LR['full']:g} was tuned for the {DEFAULT_FORWARD_BUDGET}-forward demo and is "
            f"only used up to {DEFAULT_LR_MAX_FORWARDS} (the paper's grid at 40,000 forward passes: "
            "1e-7, 2e-7, 5e-7)"
        )
    if o.method == "icl" and e.num_demos < 1:
        raise ValueError("--num-demos: icl needs at least one demonstration")
    return c


def _resolve_steps(c: TrainConfig) -> None:
    """``optim.steps`` from ``--steps``, ``--forward-budget`` or the default budget (eval-only: 0)."""
    o = c.optim
    fps = c.forwards_per_step()
    resolved = o.forward_budget is not None and fps and o.steps == o.forward_budget // fps
    if o.steps is not None and o.forward_budget is not None and not resolved:
        raise ValueError("--steps and --forward-budget: give one of them, not both")
    if not c.training:
        o.steps, o.forward_budget = 0, None
    elif o.forward_budget is not None:
        _positive("--forward-budget", o.forward_budget)
        if o.forward_budget < fps:
            raise ValueError(
                f"--forward-budget: {o.forward_budget} forward passes buy no step of {o.method} ({fps} forwards/step)"
            )
        o.steps = o.forward_budget // fps
    elif o.steps is None:
        o.steps = default_steps(o.method, fps)
    _positive("--steps", o.steps, minimum=1 if c.training else 0)


def _check_method(c: TrainConfig) -> None:
    """Builds the optimizer once: the estimator's own checks, reported with the option's flag."""
    o = c.optim
    try:
        registry.get(o.method).optimizer(o.lr, **c.method_options())
    except specs.OptionError as err:
        key = f"optim.{err.option}"
        if key not in fields():
            raise
        raise ValueError(f"{flag(key)}: {err.reason}") from None


def mesh_axis_sizes(spec: str) -> dict[str, int] | None:
    r"""The axis sizes ``--mesh data=D,fsdp=F`` names (either may be left out), or ``None`` for
    ``auto`` and ``none``; the device count is checked when the run starts
    (:func:`zojax.train.placement.parse_mesh`).

    Raises:
      ValueError: naming ``--mesh``, for anything else, a repeated axis or a size below 1.
    """
    text = spec.strip().lower()
    if text in ("auto", "none"):
        return None
    sizes: dict[str, int] = {}
    for part in text.split(","):
        m = re.fullmatch(r"\s*(data|fsdp)\s*=\s*(\d+)\s*", part)
        if m is None or m.group(1) in sizes:
            raise ValueError(f"--mesh: expected 'auto', 'none' or 'data=D,fsdp=F', got {spec!r}")
        sizes[m.group(1)] = int(m.group(2))
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"--mesh: axis sizes must be at least 1, got {spec!r}")
    return sizes


def _choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag}: invalid choice {value!r}; choose from {', '.join(choices)}")


def _check_trackers(trackers: tuple[str, ...]) -> None:
    for t in trackers:
        _choice("--trackers", t, TRACKERS)
    if len(set(trackers)) != len(trackers):
        raise ValueError(f"--trackers: {', '.join(trackers)} names a tracker twice")
    if "wandb" in trackers and not wandb_installed():
        raise ValueError(WANDB_MISSING)


def _check_objective(c: TrainConfig, task: Any) -> None:
    """``--objective``: a metric objective needs a zeroth-order method and a task with that metric;
    selection by dev loss then means the dev metric (the training objective's own dev value)."""
    o = c.optim
    if o.objective == "task":
        return
    if c.training and not is_zo(o.method):
        raise ValueError(f"--objective {o.objective}: not differentiable; train it with a zeroth-order --method")
    if o.objective == "accuracy" and task.generation:
        raise ValueError(f"--objective accuracy: {task.name} has no candidates to pick from; use --objective f1")
    if o.objective == "f1" and not task.generation:
        raise ValueError(f"--objective f1: {task.name} is scored by accuracy; use --objective accuracy")
    if c.eval.select_by == "loss":
        c.eval.select_by = "metric"


def _positive(flag: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{flag}: expected an integer >= {minimum}, got {value!r}")
