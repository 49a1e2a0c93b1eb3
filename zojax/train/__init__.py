"""Fine-tuning runs: configuration, fixed-shape batches, task losses, the loop, checkpoints, logs.

Quick use::

    from zojax.train import TrainConfig, Trainer
    cfg = TrainConfig()                        # SmolLM2-135M, SST-2, MeZO-GV, 150 forward passes
    cfg.optim.method, cfg.run.out = "mezo", "runs/sst2_mezo"
    report = Trainer(cfg).run()                # dev before/after, best-by-dev, test

or ``zojax finetune --method mezo --out runs/sst2_mezo`` (see :mod:`zojax.cli`).

The names below are imported on first use (:mod:`zojax._lazy`): the CLI reads the configuration
without loading JAX, orbax or the models.
"""

from zojax._lazy import attach

_EXPORTS = {
    "Checkpoints": "checkpoint",
    "CheckpointWarning": "checkpoint",
    **dict.fromkeys(
        ("DataArgs", "EvalArgs", "ModelArgs", "OptimArgs", "RunArgs", "TrainConfig", "method_names"), "config"
    ),
    **dict.fromkeys(("ByteTokenizer", "TrainBatches", "step_indices"), "data"),
    **dict.fromkeys(("MetricsLogger", "read_metrics", "strip_timing"), "logging"),
    **dict.fromkeys(("Tracker", "read_events"), "trackers"),
    "Trainer": "loop",
    **dict.fromkeys(("task_loss", "training_loss"), "loss"),
    "build_model": "models",
    **dict.fromkeys(("build_optimizer", "build_step", "prepare_tuning"), "step"),
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
