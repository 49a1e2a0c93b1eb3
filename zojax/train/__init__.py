"""Fine-tuning runs: configuration, fixed-shape batches, task losses, the loop, checkpoints, logs.

Quick use::

    from zojax.train import TrainConfig, Trainer
    cfg = TrainConfig()                        # SmolLM2-135M, SST-2, MeZO-GV, 150 forward passes
    cfg.optim.method, cfg.run.out = "mezo", "runs/sst2_mezo"
    report = Trainer(cfg).run()                # dev before/after, best-by-dev, test

or ``zojax finetune --method mezo --out runs/sst2_mezo`` (see :mod:`zojax.cli`).
"""

from zojax.tasks.scoring import classification_from_logprobs, lm_from_logprobs
from zojax.train.checkpoint import Checkpoints, CheckpointWarning
from zojax.train.config import (
    DataArgs,
    EvalArgs,
    ModelArgs,
    OptimArgs,
    RunArgs,
    TrainConfig,
    method_names,
)
from zojax.train.data import ByteTokenizer, TrainBatches, step_indices
from zojax.train.logging import MetricsLogger, Tracker, read_events, read_metrics, strip_timing
from zojax.train.loop import Trainer
from zojax.train.loss import task_loss
from zojax.train.models import build_model
from zojax.train.step import build_optimizer, build_step, prepare_tuning

__all__ = [
    "ByteTokenizer",
    "CheckpointWarning",
    "Checkpoints",
    "DataArgs",
    "EvalArgs",
    "MetricsLogger",
    "ModelArgs",
    "OptimArgs",
    "RunArgs",
    "Tracker",
    "TrainBatches",
    "TrainConfig",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_step",
    "classification_from_logprobs",
    "lm_from_logprobs",
    "method_names",
    "prepare_tuning",
    "read_events",
    "read_metrics",
    "step_indices",
    "strip_timing",
    "task_loss",
]
