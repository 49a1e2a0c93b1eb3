"""The MeZO benchmark (11 tasks) for any causal LM: data loading, MeZO's sampling protocol,
templates, candidate scoring, objectives and zero-shot/ICL evaluation.

Quick use::

    from zojax.tasks import get_task, classification_batch, objective_for, zero_shot
    task = get_task("rte")
    splits = task.splits(seed=0)            # 1000/500/1000 per MeZO (metadata in splits.meta)
    batch = train_batch(task, splits.train[:16], tokenizer)   # fixed-shape numpy dict
    loss = objective_for(task)(logits_fn, params, batch)      # jittable
    res = zero_shot(task, splits.test.examples, tokenizer, logits_fn=logits_fn, params=params)
"""

from zojax._lazy import attach
from zojax.tasks.base import Example, RawData, Split, TaskSplits
from zojax.tasks.data import TaskDataMissingError, candidate_data_dirs, resolve_data_dir
from zojax.tasks.encode import (
    Encoded,
    TokenizerLike,
    classification_batch,
    encode_candidates,
    encode_generation_prompt,
    encode_gold,
    lm_batch,
    train_batch,
    truncate_keep_bos,
)
from zojax.tasks.metrics import accuracy, exact_match, f1_score, normalize_answer, token_f1
from zojax.tasks.registry import TASKS, Task, get_task
from zojax.tasks.sampling import carve_from_validation, icl_demo_sets, mezo_subset, split_train_dev

# Evaluation and scoring need JAX: imported on first use, so that `zojax tasks` does not load it.
_EXPORTS = {
    **dict.fromkeys(
        (
            "EvalResult",
            "EvaluationStopped",
            "evaluate",
            "evaluate_candidates",
            "evaluate_generation",
            "icl",
            "score_sequences",
            "zero_shot",
        ),
        "evaluate",
    ),
    **dict.fromkeys(
        (
            "OBJECTIVES",
            "classification_loss",
            "lm_loss",
            "objective_for",
            "sequence_scores",
            "token_logprobs",
        ),
        "scoring",
    ),
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "OBJECTIVES",
    "TASKS",
    "Encoded",
    "EvalResult",
    "EvaluationStopped",
    "Example",
    "RawData",
    "Split",
    "Task",
    "TaskDataMissingError",
    "TaskSplits",
    "TokenizerLike",
    "accuracy",
    "candidate_data_dirs",
    "carve_from_validation",
    "classification_batch",
    "classification_loss",
    "encode_candidates",
    "encode_generation_prompt",
    "encode_gold",
    "evaluate",
    "evaluate_candidates",
    "evaluate_generation",
    "exact_match",
    "f1_score",
    "get_task",
    "icl",
    "icl_demo_sets",
    "lm_batch",
    "lm_loss",
    "mezo_subset",
    "normalize_answer",
    "objective_for",
    "resolve_data_dir",
    "score_sequences",
    "sequence_scores",
    "split_train_dev",
    "token_f1",
    "token_logprobs",
    "train_batch",
    "truncate_keep_bos",
    "zero_shot",
]
