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
from typing import Any, ClassVar

from zojax import registry, specs
from zojax.specs import STOP_RULES
from zojax.train.trackers import TRACKERS

FO_METHOD = "ft"
EVAL_METHODS = ("zero-shot", "icl")
TUNINGS = ("full", "lora", "prefix")
SELECT_BY = ("loss", "metric")
PROTOCOLS = ("quick", "mezo")
SUBSPACE_DEFAULTS = {"rank": 32, "refresh_every": 1000}
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
DEFAULT_FORWARD_BUDGET = 150
"""Forward passes of the default job (25 MeZO-GV steps with M = 4, 75 MeZO steps; see
:func:`default_steps`)."""

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


# ---------------------------------------------------------------------- fields and their flags
def option(default: Any, help: str, **cli: Any) -> Any:
    """A configuration field with what its command-line flag needs (``dataclasses.field`` metadata).

    :mod:`zojax.cli.args` turns every field into a flag, so a new option is one such field.

    Args:
      default: the default value; the help shows it (``(default: X)``).
      help: the flag's help text, without the default.
      **cli: ``flag`` (default ``--`` + the name with ``-``), ``choices`` (checked by
        :meth:`TrainConfig.resolve`; listed in the usage, or after "one of:" when a ``metavar`` is
        given), ``metavar``, ``parse`` (text to value; a tuple field is comma-separated),
        ``default_help`` (what a ``None`` default means), ``exclusive`` (a mutually exclusive
        group's name), ``action="store_true"`` (a bool flag without its ``--no-`` form) and
        ``minimum`` (an integer field's least value, checked by :meth:`TrainConfig.resolve` once the
        defaults are filled; ``None`` is left to the resolution).
    """
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def _by_tuning(table: dict[str, float]) -> str:
    def short(v: float) -> str:  # 3e-5, not 3e-05
        mantissa, exponent = f"{v:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    return " / ".join(f"{k} {short(v)}" for k, v in table.items())


def _by_protocol(name: str, unset: str = "") -> str:
    sizes = (f"{p} {unset if s[name] is None else s[name]}" for p, s in PROTOCOL_SIZES.items())
    return "by --protocol: " + ", ".join(sizes)


def _sizes(protocol: str) -> str:
    s = PROTOCOL_SIZES[protocol]
    return "/".join("the task's" if s[k] is None else str(s[k]) for k in ("num_train", "num_dev", "num_test"))


@dataclasses.dataclass
class ModelArgs:
    """Which model and which parameters are tuned (the fields' help: ``zojax finetune --help``)."""

    TITLE: ClassVar[str] = "model"
    name: str = option("smollm2-135m-instruct", "the embedded SmolLM2-135M-Instruct, a local HF folder or .gguf, a hub "
                       "id, or random:<preset> (random weights, byte tokenizer; e.g. random:tiny)",
                       flag="--model", metavar="NAME")  # fmt: skip
    dtype: str = option("float32", "parameter and compute dtype", choices=DTYPES)
    master_weights: bool = option(False, "with --dtype bfloat16: float32 trained weights (their memory), bfloat16 "
                                  "compute, so updates below half a bfloat16 ulp are kept")  # fmt: skip
    tuning: str = option("full", "full fine-tuning, LoRA or prefix tuning", choices=TUNINGS)
    lora_rank: int = option(8, "LoRA rank r", minimum=1)
    lora_alpha: float = option(16.0, "LoRA alpha")
    lora_targets: tuple[str, ...] = option(("q", "v"), "comma-separated LoRA targets (q,k,v,o,gate,up,down,fc1,fc2 "
                                           "or full module names)")  # fmt: skip
    num_virtual_tokens: int = option(5, "prefix-tuning length", minimum=1)
    opt_bos: str = option("mezo", "OPT checkpoints only: BOS id 0 as MeZO's run.py sets it (mezo) or the tokenizer's "
                          "own </s>, id 2 (checkpoint)", choices=OPT_BOS)  # fmt: skip


@dataclasses.dataclass
class DataArgs:
    """Task, data and MeZO's sampling protocol (the fields' help: ``zojax finetune --help``)."""

    TITLE: ClassVar[str] = "data"
    task: str = option("sst2", "task (`zojax tasks` lists them)")
    data_dir: str | None = option(None, "data folder", default_help="$ZOJAX_DATA_DIR or ../shared/data")
    protocol: str = option("quick", f"default split sizes and dev cadence: quick ({_sizes('quick')} train/dev/"
                           f"test, dev before and after) or mezo (MeZO's {_sizes('mezo')}, dev every "
                           f"{PROTOCOL_SIZES['mezo']['eval_every']} steps)", choices=PROTOCOLS)  # fmt: skip
    num_train: int | None = option(None, "training examples sampled from the train pool",
                                   default_help=_by_protocol("num_train"), minimum=1)  # fmt: skip
    num_dev: int | None = option(None, "dev examples sampled from the train pool; when the pool cannot hold them and "
                                 "a train set, dev takes half the pool (said in the run's notes)",
                                 default_help=_by_protocol("num_dev", "the task's (`zojax tasks`)"),
                                 minimum=0)  # fmt: skip
    num_test: int | None = option(None, "test examples from validation, all when fewer",
                                  default_help=_by_protocol("num_test"), minimum=0)  # fmt: skip
    max_length: int = option(2048, "cap on training sequence length in tokens (left truncation keeping BOS, as "
                             "MeZO does); batches are padded to the longest capped sequence: one compile",
                             minimum=2)  # fmt: skip
    eval_max_length: int = option(2048, "the same cap for dev/test scoring and generation prompts", minimum=2)
    max_new_tokens: int = option(50, "generation budget of SQuAD/DROP in tokens (MeZO's)", minimum=1)


@dataclasses.dataclass
class OptimArgs:
    """Method, optimiser and budget (the fields' help: ``zojax finetune --help``)."""

    TITLE: ClassVar[str] = "method and optimisation"
    method: str = option("mezo-gv", "the method (see below)", choices=method_names(), metavar="METHOD")
    objective: str = option("task", "the training loss: the task's own (cross-entropy over candidates, or the LM loss "
                            "of the gold answer), or minus the metric itself, non-differentiable, for zeroth-order "
                            "methods: accuracy (tasks with candidates) or f1 of greedy answers (SQuAD, DROP; "
                            "--max-new-tokens forwards per loss); dev selection then uses the metric",
                            choices=specs.TRAINING_OBJECTIVES)  # fmt: skip
    lr: float | None = option(None, f"learning rate; required for full-tuning ZO runs of more than "
                              f"{DEFAULT_LR_MAX_FORWARDS} forward passes", default_help=f"by method and tuning: ZO "
                              f"{_by_tuning(DEFAULT_ZO_LR)}; ft {_by_tuning(DEFAULT_FT_LR)}")  # fmt: skip
    eps: float | None = option(None, "perturbation scale epsilon",
                               default_help=f"by --tuning: {_by_tuning(DEFAULT_EPS)}")  # fmt: skip
    num_candidates: int = option(4, "M candidates of mezo-gv / mezo-greedy / mezo-centred")
    elite_ratio: float = option(0.5, "alpha of mezo-gv: floor(alpha*M) low-loss candidates")
    num_queries: int = option(2, "q of nspsa")
    weighting: str = option("mean_diff", "mezo-gv candidate weighting (mean_diff: the paper's)",
                            choices=specs.WEIGHTINGS)  # fmt: skip
    normalize: bool = option(False, "mezo-gv: rescale the guiding vector so E|v|^2 = d")
    reuse_best_loss: bool = option(False, "mezo-greedy: reuse L(theta+eps z*) (M+1 forwards)")
    distribution: str = option("gaussian", "perturbation distribution", choices=specs.DISTRIBUTIONS)
    perturbation: str = option("iid", "iid noise (MeZO) or SubZero's low-rank subspace noise U Z V^T on matrix leaves "
                               "(SubZero, SubZero-GV, SubZero-Greedy with the matching method)",
                               choices=specs.PERTURBATIONS)  # fmt: skip
    rank: int | None = option(None, "subspace rank (the paper's grid: 32, 64 for full and LoRA tuning, 8, 16 "
                              "for prefix)", default_help=f"{SUBSPACE_DEFAULTS['rank']} with --perturbation "
                              "subspace", minimum=1)  # fmt: skip
    refresh_every: int | None = option(None, "steps between subspace refreshes (the paper's grid: 500, 1000, 2000)",
                                       default_help=f"{SUBSPACE_DEFAULTS['refresh_every']} with --perturbation "
                                       "subspace", minimum=1)  # fmt: skip
    weight_decay: float = option(0.0, "MeZO's decoupled weight decay, none on biases and norms")
    update_rounding: str = option("nearest", "rounding of updates into bfloat16 weights (stochastic: unbiased, no "
                                  "extra memory)", choices=specs.ROUNDINGS)  # fmt: skip
    batch_size: int = option(16, "examples per step (the paper's)", minimum=1)
    steps: int | None = option(None, "training steps", exclusive="budget",
                               default_help=f"a budget of {DEFAULT_FORWARD_BUDGET} forward passes")  # fmt: skip
    forward_budget: int | None = option(None, "total forward passes; steps = N // forwards per step, so "
                                        "methods compare at equal cost (`zojax methods`)", metavar="N",
                                        exclusive="budget")  # fmt: skip


@dataclasses.dataclass
class EvalArgs:
    """Dev evaluation, model selection and the final test (the fields' help: ``zojax finetune --help``)."""

    TITLE: ClassVar[str] = "evaluation"
    eval_every: int | None = option(None, "dev evaluation every N steps (0: before and after training only)",
                                    default_help=_by_protocol("eval_every"), minimum=0)  # fmt: skip
    eval_before: bool = option(True, "evaluate on dev before the first step")
    select_by: str = option("loss", "which dev evaluation's parameters are tested: the lowest dev loss of the "
                            "training objective (MeZO's rule) or the highest task metric; ties go to the later "
                            "step", choices=SELECT_BY)  # fmt: skip
    select_initial: bool = option(False, "let the untrained step-0 parameters be selected")
    num_demos: int = option(32, "demonstrations per example for --method icl (MeZO's number)", minimum=0)
    token_budget: int = option(1024, "tokens per evaluation forward pass (candidate scoring) or generation batch "
                               "(prompt + new tokens), over all data shards", flag="--eval-token-budget",
                               minimum=1)  # fmt: skip
    stop_rule: str = option("text", "SQuAD/DROP generation stops when the text holds a newline (text) or at the "
                            "exact newline token id or EOS (mezo, MeZO's rule)", choices=STOP_RULES)  # fmt: skip


@dataclasses.dataclass
class RunArgs:
    """Seed, outputs, checkpoints and control (the fields' help: ``zojax finetune --help``)."""

    TITLE: ClassVar[str] = "run"
    mesh: str = option("auto", "devices: auto (all, on the fsdp axis; $ZOJAX_MESH when set), none (one device) or "
                       "data=D,fsdp=F")  # fmt: skip
    seed: int = option(0, "seed of data sampling and order, adapters and perturbations", minimum=0)
    out: str | None = option(None, "run directory (metrics, TensorBoard events, checkpoints, results)",
                             default_help="runs/<task>_<method>_<tuning>_s<seed>_<time>")  # fmt: skip
    resume: bool = option(False, "continue the run in --out from its latest valid checkpoint", action="store_true")
    checkpoint_every: int = option(0, "checkpoint every N steps (0: only by time, at the end and on Ctrl-C/SIGTERM)",
                                    minimum=0)  # fmt: skip
    checkpoint_minutes: float = option(10.0, "also checkpoint after this many minutes of training since the last "
                                       "(0: off): a kill loses at most that much")  # fmt: skip
    keep_checkpoints: int = option(2, "periodic checkpoints kept (the best-by-dev one is separate)", minimum=1)
    progress: bool = option(True, "show a progress bar")
    dry_run: bool = option(False, "validate the configuration, print it and exit", action="store_true")
    stop_after: int | None = option(None, "checkpoint and stop after N steps in this process (resume later; never "
                                    "carried into a --resume)", metavar="N", minimum=1)  # fmt: skip
    trackers: tuple[str, ...] = option(("tensorboard",), "comma-separated trackers besides metrics.jsonl: "
                                       + ", ".join(TRACKERS) + " (W&B: pip install 'zojax[wandb]')")  # fmt: skip


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
        method = registry.get(self.optim.method)
        opts = {k: getattr(self.optim, k) for k in ("eps", *method.options) if hasattr(self.optim, k)}
        return registry.select_options(method, opts)

    def forwards_per_step(self) -> int:
        """Forward passes per training step (``ft``: 1, plus a backward pass; eval-only: 0)."""
        if is_zo(self.optim.method):
            return int(registry.get(self.optim.method).forwards_per_step(**self.method_options()))
        return 1 if self.optim.method == FO_METHOD else 0

    # ------------------------------------------------------------------ resolution
    def resolve(self) -> TrainConfig:
        """A copy with every default filled in and every option checked (:func:`zojax.train.resolve.resolve`).

        Returns:
          the resolved config: ``optim.lr``, ``optim.eps`` and ``optim.steps`` are set.

        Raises:
          ValueError: an invalid option; the message starts with the option's name.
        """
        from zojax.train.resolve import resolve

        return resolve(self)


def default_steps(method: str, forwards_per_step: int) -> int:
    """Steps when neither ``--steps`` nor ``--forward-budget`` is given: the default budget."""
    return max(1, DEFAULT_FORWARD_BUDGET // max(1, forwards_per_step))


# ---------------------------------------------------------------------- JSON round trip
SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "optim": OptimArgs,
    "eval": EvalArgs,
    "run": RunArgs,
}


def fields() -> dict[str, dataclasses.Field]:
    """Every option as ``{"section.field": its dataclasses.Field}``, in section and field order."""
    return {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def flag(key: str) -> str:
    """The command-line flag of ``"section.field"`` (``--`` + the field name with ``-``, unless
    its metadata names another: ``model.name`` is ``--model``)."""
    f = fields()[key]
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


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
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
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
        raise ValueError(
            f"{flag(key)}: the run being resumed used {a[key]!r}, got {b.get(key)!r}; resuming must "
            "not change the trajectory (start a new --out instead)"
        )
