"""Typed configuration of a fine-tuning run, its defaults, validation and JSON round trip.

A :class:`TrainConfig` groups five sections (:class:`ModelArgs`, :class:`DataArgs`,
:class:`OptimArgs`, :class:`EvalArgs`, :class:`RunArgs`). :meth:`TrainConfig.resolve` fills the
defaults that depend on other fields (learning rate and ε per method and tuning, the number of steps
from a forward-pass budget) and raises ``ValueError`` naming the offending option. The resolved
config is what a run saves (``config.json``) and what ``--resume`` checks against.

Protocols: ``--protocol quick`` (the default) sizes the splits for a short run on a laptop (1000
train / 100 dev / 200 test, dev only before and after training); ``--protocol mezo`` reproduces
MeZO's (1000 train / 500 dev, CB and COPA 100 / 1000 test, dev every 1000 steps). Explicit
``--num-*`` and ``--eval-every`` flags override either.

Learning rates: the full-tuning zeroth-order default (:data:`DEFAULT_ZO_LR`) was tuned for the
150-forward demo; a run of more than :data:`DEFAULT_LR_MAX_FORWARDS` forward passes must give
``--lr`` (the paper's grid for full tuning is 1e-7 to 5e-7 at 40,000 forward passes).

Forward-pass budgets: a step of method ``m`` costs ``forwards_per_step(m)`` forward passes (MeZO 2,
n-SPSA ``2q``, MeZO-GV and MeZO-Greedy ``M + 2``, ``ft`` 1 forward plus its backward pass), and
``--forward-budget N`` runs ``N // forwards_per_step`` steps, so methods compare at equal cost.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from zojax import registry
from zojax.precision import ROUNDINGS
from zojax.train.logging import TRACKERS, WANDB_MISSING, wandb_installed

FO_METHOD = "ft"
EVAL_METHODS = ("zero-shot", "icl")
TUNINGS = ("full", "lora", "prefix")
SELECT_BY = ("loss", "metric")
PROTOCOLS = ("quick", "mezo")
PERTURBATIONS = ("iid", "subspace")
SUBSPACE_DEFAULTS = {"rank": 32, "refresh_every": 1000}
STOP_RULES = ("text", "mezo")
OPT_BOS = ("mezo", "checkpoint")
DTYPES = ("float32", "bfloat16")
MESH_ENV = "ZOJAX_MESH"
"""Environment variable that replaces ``--mesh auto`` (e.g. ``none`` for a test suite)."""

# Defaults by tuning. ε and the LoRA / prefix rates are MeZO's (and the paper's Table III). The
# full-tuning ZO rate is for short runs of a small model: 3e-5 moves SmolLM2-135M's SST-2 dev
# accuracy within the default job's 25 MeZO-GV steps; the paper's grid for 10^4 steps on 1.3B-13B
# models is 1e-7 to 5e-7 (MeZO's code default 1e-6). ft: Adam's usual fine-tuning rates.
DEFAULT_EPS = {"full": 1e-3, "lora": 1e-2, "prefix": 1e-1}
DEFAULT_ZO_LR = {"full": 3e-5, "lora": 1e-4, "prefix": 1e-2}
DEFAULT_FT_LR = {"full": 1e-5, "lora": 1e-4, "prefix": 1e-3}
DEFAULT_LR_MAX_FORWARDS = 1000
"""Above this many forward passes a full-tuning ZO run must give ``--lr`` (the default was tuned at 150)."""

# Split sizes and dev cadence by protocol (``None`` num_dev: the task's MeZO dev size).
PROTOCOL_SIZES: dict[str, dict[str, int | None]] = {
    "quick": {"num_train": 1000, "num_dev": 100, "num_test": 200, "eval_every": 0},
    "mezo": {"num_train": 1000, "num_dev": None, "num_test": 1000, "eval_every": 1000},
}

# Settings that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = (
    "optim.steps",
    "optim.forward_budget",
    "run.out",
    "run.resume",
    "run.checkpoint_every",
    "run.checkpoint_minutes",
    "run.keep_checkpoints",
    "run.progress",
    "run.dry_run",
    "run.stop_after",
    "run.mesh",
    "data.data_dir",
)


def method_names() -> tuple[str, ...]:
    """Every ``--method`` choice: the registered estimators, ``ft``, ``zero-shot`` and ``icl``."""
    return (*registry.METHODS, FO_METHOD, *EVAL_METHODS)


def is_zo(method: str) -> bool:
    """Whether ``method`` is a registered zeroth-order estimator."""
    return method in registry.METHODS


@dataclasses.dataclass
class ModelArgs:
    """Which model and which parameters are tuned.

    Attributes:
      name: ``zojax.models.load_model`` name or path (default: the embedded SmolLM2-135M-Instruct),
        or ``random:<preset>`` for a randomly initialised model with a byte tokenizer (tests).
      dtype: ``float32`` or ``bfloat16`` parameters and compute.
      master_weights: with ``dtype=bfloat16``: keep the trained parameters in float32 and compute
        in bfloat16 (the float32 parameter memory; a frozen base stays bfloat16), so that updates
        below half a bfloat16 ulp are not lost.
      tuning: ``full``, ``lora`` or ``prefix``.
      lora_rank: LoRA rank ``r``.
      lora_alpha: LoRA ``α``.
      lora_targets: LoRA target projections (short names ``q k v o gate up down fc1 fc2``).
      num_virtual_tokens: prefix-tuning length.
      opt_bos: OPT checkpoints only: ``mezo`` (BOS id 0, as MeZO's ``run.py`` sets it) or
        ``checkpoint`` (the tokenizer's own ``</s>``, id 2).
    """

    name: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    master_weights: bool = False
    tuning: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    num_virtual_tokens: int = 5
    opt_bos: str = "mezo"


@dataclasses.dataclass
class DataArgs:
    """Task, data and MeZO's sampling protocol.

    Attributes:
      task: task name (``python -m zojax.tasks`` lists them).
      data_dir: data folder (default: ``$ZOJAX_DATA_DIR`` or ``../shared/data``).
      protocol: default split sizes and dev cadence: ``quick`` (1000 / 100 / 200, dev before and
        after) or ``mezo`` (MeZO's 1000 / 500 (CB, COPA: 100) / 1000, dev every 1000 steps).
      num_train: training examples sampled from the train pool (``None``: by protocol).
      num_dev: dev examples sampled from the train pool (``None``: by protocol); when the pool
        cannot hold them and a train set, dev takes half the pool (said in the run's notes).
      num_test: test examples from validation, all when fewer (``None``: by protocol).
      max_length: cap on training-sequence length in tokens (left truncation keeping BOS, as MeZO
        does at 2048); every training batch is padded to the longest capped sequence of the train
        split, so one step compiles once.
      eval_max_length: the same cap for dev/test scoring and generation prompts.
      max_new_tokens: generation budget of generation tasks (MeZO: 50).
    """

    task: str = "sst2"
    data_dir: str | None = None
    protocol: str = "quick"
    num_train: int | None = None
    num_dev: int | None = None
    num_test: int | None = None
    max_length: int = 2048
    eval_max_length: int = 2048
    max_new_tokens: int = 50


@dataclasses.dataclass
class OptimArgs:
    """Method, optimiser and budget.

    Attributes:
      method: a registered estimator (``mezo``, ``nspsa``, ``mezo-gv``, ``mezo-greedy``), ``ft``
        (first-order Adam through ``jax.grad``), ``zero-shot`` or ``icl`` (evaluation only).
      lr: learning rate; ``None``: by method family and tuning (:data:`DEFAULT_ZO_LR`,
        :data:`DEFAULT_FT_LR`).
      eps: perturbation scale ``ε``; ``None``: by tuning (:data:`DEFAULT_EPS`).
      num_candidates: ``M`` for MeZO-GV / MeZO-Greedy.
      elite_ratio: ``α`` for MeZO-GV.
      num_queries: ``q`` for n-SPSA.
      weighting: MeZO-GV's candidate weighting (``mean_diff`` = the paper's, or ``rank``).
      normalize: rescale MeZO-GV's guiding vector so that ``E‖v‖² = d``.
      reuse_best_loss: MeZO-Greedy reuses ``L(θ+εz*)`` (``M + 1`` forwards instead of ``M + 2``).
      distribution: ``gaussian`` or ``rademacher`` perturbations.
      perturbation: ``iid`` (MeZO) or ``subspace`` (SubZero's low-rank ``U Z Vᵀ`` noise on matrix
        leaves: SubZero, SubZero-GV, SubZero-Greedy with the matching method).
      rank: the subspace rank (``None``: 32 with ``subspace``; the paper's grid {32, 64} for full
        and LoRA tuning, {8, 16} for prefix).
      refresh_every: steps between subspace refreshes (``None``: 1000 with ``subspace``; the
        paper's grid {500, 1000, 2000}).
      weight_decay: MeZO's decoupled weight decay (none on biases and norms).
      update_rounding: how an update is rounded into bfloat16 weights: ``nearest`` (plain) or
        ``stochastic`` (unbiased, :func:`zojax.precision.stochastic_rounding`; no extra memory).
      batch_size: examples per step (the paper: 16).
      steps: number of steps (exclusive with ``forward_budget``).
      forward_budget: total forward passes; ``steps = forward_budget // forwards_per_step``.
    """

    method: str = "mezo-gv"
    lr: float | None = None
    eps: float | None = None
    num_candidates: int = 4
    elite_ratio: float = 0.5
    num_queries: int = 2
    weighting: str = "mean_diff"
    normalize: bool = False
    reuse_best_loss: bool = False
    distribution: str = "gaussian"
    perturbation: str = "iid"
    rank: int | None = None
    refresh_every: int | None = None
    weight_decay: float = 0.0
    update_rounding: str = "nearest"
    batch_size: int = 16
    steps: int | None = None
    forward_budget: int | None = None


@dataclasses.dataclass
class EvalArgs:
    """Dev evaluation, model selection and the final test.

    Attributes:
      eval_every: evaluate on dev every this many steps (0: only before and after training;
        ``None``: by protocol).
      eval_before: evaluate on dev before the first step.
      select_by: which dev evaluation's parameters are tested: the lowest dev ``loss`` of the
        training objective (MeZO's rule, the default: candidate cross-entropy for classification,
        LM loss on the gold answer for COPA, ReCoRD, SQuAD and DROP) or the highest task
        ``metric`` (accuracy / F1). Ties go to the later step.
      select_initial: let the untrained step-0 parameters be selected (off: a trained run always
        tests trained parameters).
      num_demos: demonstrations per test example for ``icl`` (MeZO: 32).
      token_budget: tokens per scoring forward pass during evaluation.
      stop_rule: when SQuAD/DROP generation stops: ``text`` (the decoded text contains a newline;
        the default) or ``mezo`` (MeZO's rule: the exact newline token id or EOS; a merged token
        such as SmolLM2's ``"\n\n"`` does not stop it).
    """

    eval_every: int | None = None
    eval_before: bool = True
    select_by: str = "loss"
    select_initial: bool = False
    num_demos: int = 32
    token_budget: int = 1024
    stop_rule: str = "text"


@dataclasses.dataclass
class RunArgs:
    """Seed, outputs, checkpoints and control.

    Attributes:
      mesh: devices of the run (:func:`zojax.train.placement.parse_mesh`): ``auto`` (every device
        on the ``fsdp`` axis; nothing on one device; ``$ZOJAX_MESH`` when set), ``none``, or
        ``data=D,fsdp=F``.
      seed: seeds the data sampling (MeZO's ``train_set_seed``), the data order, the adapters'
        initialisation and the perturbations.
      out: run directory (metrics, TensorBoard events, checkpoints, results).
      resume: continue the run in ``out`` from its latest valid checkpoint.
      checkpoint_every: save a checkpoint every this many steps (0: only by time, at the end and on
        interruption).
      checkpoint_minutes: also save one once this many minutes of training have passed since the
        last (0: off), so that a ``kill -9`` or a pre-emption loses at most that much work.
      keep_checkpoints: how many periodic checkpoints to keep (the best-by-dev one is separate).
      progress: show a progress bar.
      dry_run: validate the configuration and exit.
      stop_after: stop (checkpointing, as on Ctrl-C) once this many steps have run in this
        process; for tests and time-sliced jobs.
      trackers: where the metrics go besides ``metrics.jsonl`` (always written): any of
        ``"tensorboard"`` (event files in ``out/tb``) and ``"wandb"`` (Weights & Biases; needs
        ``pip install 'zojax[wandb]'``; ``WANDB_MODE=offline`` keeps it on disk); see
        :mod:`zojax.train.logging`.
    """

    mesh: str = "auto"
    seed: int = 0
    out: str | None = None
    resume: bool = False
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    progress: bool = True
    dry_run: bool = False
    stop_after: int | None = None
    trackers: tuple[str, ...] = ("tensorboard",)


@dataclasses.dataclass
class TrainConfig:
    """A whole run: ``model``, ``data``, ``optim``, ``eval`` and ``run`` sections."""

    model: ModelArgs = dataclasses.field(default_factory=ModelArgs)
    data: DataArgs = dataclasses.field(default_factory=DataArgs)
    optim: OptimArgs = dataclasses.field(default_factory=OptimArgs)
    eval: EvalArgs = dataclasses.field(default_factory=EvalArgs)
    run: RunArgs = dataclasses.field(default_factory=RunArgs)

    # ------------------------------------------------------------------ derived quantities
    @property
    def training(self) -> bool:
        """Whether the method trains (``zero-shot`` and ``icl`` only evaluate)."""
        return self.optim.method not in EVAL_METHODS

    def method_options(self) -> dict[str, Any]:
        """Options of the zeroth-order method (what ``Method.optimizer`` accepts)."""
        o = self.optim
        method = registry.get(o.method)
        opts = {
            "eps": o.eps,
            "num_candidates": o.num_candidates,
            "elite_ratio": o.elite_ratio,
            "num_queries": o.num_queries,
            "weighting": o.weighting,
            "normalize": o.normalize,
            "reuse_best_loss": o.reuse_best_loss,
            "distribution": o.distribution,
            "perturbation": o.perturbation,
            "rank": o.rank,
            "refresh_every": o.refresh_every,
        }
        return registry.select_options(method, opts)

    def forwards_per_step(self) -> int:
        """Forward passes per training step (``ft``: 1, plus a backward pass; eval-only: 0)."""
        if is_zo(self.optim.method):
            return int(registry.get(self.optim.method).forwards_per_step(**self.method_options()))
        return 1 if self.optim.method == FO_METHOD else 0

    # ------------------------------------------------------------------ resolution
    def resolve(self) -> TrainConfig:
        """A copy with every default filled in and every option checked.

        Returns:
          the resolved config: ``optim.lr``, ``optim.eps`` and ``optim.steps`` are set.

        Raises:
          ValueError: an invalid option; the message starts with the option's name.
        """
        c = from_dict(to_dict(self))
        m, d, o, e, r = c.model, c.data, c.optim, c.eval, c.run
        _choice("--method", o.method, method_names())
        _choice("--tuning", m.tuning, TUNINGS)
        _choice("--dtype", m.dtype, DTYPES)
        _choice("--select-by", e.select_by, SELECT_BY)
        _choice("--protocol", d.protocol, PROTOCOLS)
        _choice("--stop-rule", e.stop_rule, STOP_RULES)
        _choice("--opt-bos", m.opt_bos, OPT_BOS)
        _choice("--update-rounding", o.update_rounding, ROUNDINGS)
        if m.master_weights and m.dtype != "bfloat16":
            raise ValueError("--master-weights: needs --dtype bfloat16 (float32 weights are already the master copy)")
        if o.update_rounding == "stochastic" and (m.dtype != "bfloat16" or m.master_weights):
            raise ValueError(
                "--update-rounding stochastic: rounds bfloat16 weights; needs --dtype bfloat16 "
                "without --master-weights"
            )
        if r.mesh.strip().lower() == "auto" and os.environ.get(MESH_ENV, "").strip():
            r.mesh = os.environ[MESH_ENV].strip()
        _check_mesh_spec(r.mesh)
        sizes = PROTOCOL_SIZES[d.protocol]
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(d, name) is None:
                setattr(d, name, sizes[name])
        if e.eval_every is None:
            e.eval_every = sizes["eval_every"]
        _choice("--distribution", o.distribution, ("gaussian", "rademacher"))
        _choice("--perturbation", o.perturbation, PERTURBATIONS)
        if o.perturbation == "subspace":
            o.rank = SUBSPACE_DEFAULTS["rank"] if o.rank is None else o.rank
            o.refresh_every = SUBSPACE_DEFAULTS["refresh_every"] if o.refresh_every is None else o.refresh_every
            _positive("--rank", o.rank)
            _positive("--refresh-every", o.refresh_every)
        elif o.rank is not None or o.refresh_every is not None:
            raise ValueError("--rank and --refresh-every: only with --perturbation subspace")
        _choice("--weighting", o.weighting, ("mean_diff", "rank"))
        try:
            from zojax.tasks import get_task

            task = get_task(d.task)
        except KeyError as err:
            raise ValueError(f"--task: {err.args[0]}") from None
        if d.num_dev is None:
            d.num_dev = task.num_dev
        _positive("--batch-size", o.batch_size)
        _positive("--num-train", d.num_train)
        _positive("--max-length", d.max_length, minimum=2)
        _positive("--eval-max-length", d.eval_max_length, minimum=2)
        _positive("--max-new-tokens", d.max_new_tokens)
        _positive("--eval-token-budget", e.token_budget)
        _positive("--num-test", d.num_test, minimum=0)
        if d.num_dev is not None:
            _positive("--num-dev", d.num_dev, minimum=0)
        _positive("--eval-every", e.eval_every, minimum=0)
        _positive("--checkpoint-every", r.checkpoint_every, minimum=0)
        _positive("--keep-checkpoints", r.keep_checkpoints)
        _positive("--lora-rank", m.lora_rank)
        _positive("--num-virtual-tokens", m.num_virtual_tokens)
        _positive("--num-demos", e.num_demos, minimum=0)
        if r.stop_after is not None:
            _positive("--stop-after", r.stop_after)
        _check_trackers(r.trackers)
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
            table = DEFAULT_FT_LR if o.method == FO_METHOD else DEFAULT_ZO_LR
            o.lr = table[m.tuning]
        if not (o.lr >= 0 and math.isfinite(o.lr)):
            raise ValueError(f"--lr: must be a finite number >= 0, got {o.lr}")
        if is_zo(o.method):
            self._check_method(c)
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
                    f"--forward-budget: {o.forward_budget} forward passes buy no step of "
                    f"{o.method} ({fps} forwards/step)"
                )
            o.steps = o.forward_budget // fps
        elif o.steps is None:
            o.steps = default_steps(o.method, fps)
        _positive("--steps", o.steps, minimum=0 if not c.training else 1)
        forwards = o.steps * fps
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

    @staticmethod
    def _check_method(c: TrainConfig) -> None:
        """Builds the optimizer once so that the estimator's own checks name the option."""
        o = c.optim
        try:
            registry.get(o.method).optimizer(o.lr, **c.method_options())
        except ValueError as err:
            msg = str(err)
            for name in ("num_candidates", "elite_ratio", "num_queries", "eps", "weighting"):
                if msg.startswith(name + ":"):
                    flag = "--" + name.replace("_", "-")
                    raise ValueError(flag + msg[len(name) :]) from None
            raise


def _check_mesh_spec(spec: str) -> None:
    """Checks the syntax of ``--mesh`` (the device count is checked when the run starts)."""
    import re

    text = spec.strip().lower()
    part = r"(data|fsdp)=\d+"
    if text not in ("auto", "none") and not re.fullmatch(rf"{part}(,{part})?", text.replace(" ", "")):
        raise ValueError(f"--mesh: expected 'auto', 'none' or 'data=D,fsdp=F', got {spec!r}")


DEFAULT_FORWARD_BUDGET = 150
"""Forward passes of the default job (25 MeZO-GV steps with M = 4, 75 MeZO steps; see
:func:`default_steps`)."""


def default_steps(method: str, forwards_per_step: int) -> int:
    """Steps when neither ``--steps`` nor ``--forward-budget`` is given: the default budget."""
    return max(1, DEFAULT_FORWARD_BUDGET // max(1, forwards_per_step))


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


def _positive(flag: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{flag}: expected an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------- JSON round trip
SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "optim": OptimArgs,
    "eval": EvalArgs,
    "run": RunArgs,
}


def to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """The config as nested JSON-able dicts (tuples become lists)."""
    out = dataclasses.asdict(config)
    for sec in out.values():
        for k, v in sec.items():
            if isinstance(v, tuple):
                sec[k] = list(v)
    return out


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict`; unknown keys raise ``ValueError``."""
    sections = {}
    for name, cls in SECTIONS.items():
        raw = dict(data.get(name, {}))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(fields)
        if unknown:
            raise ValueError(f"config: unknown {name} option(s) {sorted(unknown)}")
        for k, v in raw.items():
            if isinstance(v, list):
                raw[k] = tuple(v)
        sections[name] = cls(**raw)
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"config: unknown section(s) {sorted(unknown)}")
    return TrainConfig(**sections)


def flat_items(config: TrainConfig) -> dict[str, Any]:
    """``{"section.field": value}`` for every option."""
    return {f"{s}.{k}": v for s, sec in to_dict(config).items() for k, v in sec.items()}


def check_resume_compatible(saved: TrainConfig, requested: TrainConfig) -> None:
    """Raises ``ValueError`` when ``requested`` would change the trajectory of ``saved``.

    Only the options in :data:`RESUMABLE_CHANGES` may differ (e.g. more ``--steps``).
    """
    a, b = flat_items(saved), flat_items(requested)
    for key in sorted(a):
        if key in RESUMABLE_CHANGES or a[key] == b.get(key):
            continue
        flag = "--" + key.split(".", 1)[1].replace("_", "-")
        raise ValueError(
            f"{flag}: the run being resumed used {a[key]!r}, got {b.get(key)!r}; resuming must "
            "not change the trajectory (start a new --out instead)"
        )
