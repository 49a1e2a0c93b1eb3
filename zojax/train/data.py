"""Training batches that are a pure function of ``(seed, step)``, with fixed shapes.

The data order is stateless: the training set is shuffled once per epoch with
``np.random.default_rng([seed, epoch]).permutation(n)`` and step ``t`` takes positions
``t·B … t·B + B − 1`` of the concatenated epochs. A resumed run therefore sees exactly the batches
of an uninterrupted one, with nothing to checkpoint.

Every batch has the same shape (the longest capped sequence of the training set and the largest
candidate count), so a jitted step compiles once.

With ``--objective f1`` (SQuAD/DROP) a batch holds the generation prompts and each example's
index into the training set (``example_index``), whose answers score the generations; with
``--objective accuracy`` every task with candidates (COPA and ReCoRD too) gets candidate batches.

Classification batches come in two layouts: one row per (example, candidate) (``input_ids
[B, C, T]``, :func:`zojax.tasks.classification_batch`), or, when every candidate of every training
example is the same prompt plus one option token, one row per example (``input_ids [B, T]`` with
``candidate_ids [B, C]``), which costs ``C`` times fewer tokens per forward pass for the same loss
(see :mod:`zojax.train.loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zojax.tasks import Encoded, Example, Task, encode_candidates, encode_gold
from zojax.tasks.encode import (
    classification_batch,
    encode_generation_prompt,
    left_pad,
    lm_batch,
    pad_id,
    padded_length,
)


class ByteTokenizer:
    """Byte-level tokenizer for randomly initialised test models: ids 0..255, BOS 256, PAD 257,
    EOS 258 (vocabulary 259)."""

    vocab_size = 259
    bos_id = 256
    pad_id = 257
    eos_id = 258

    def encode(self, text: str, add_bos: bool | None = True) -> list[int]:
        """UTF-8 bytes of ``text``, after a BOS unless ``add_bos`` is False."""
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos is not False else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the byte ids (special ids dropped)."""
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="ignore")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``: ``default_rng([seed, epoch])``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def step_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Indices (into the training set) of the examples of ``step``.

    Args:
      seed: the run's seed.
      step: the 0-based step.
      batch_size: ``B``.
      n: the training-set size.

    Returns:
      ``int64[B]``: positions ``step·B + j`` of the concatenation of per-epoch permutations.
    """
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs = pos // n
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = epoch_permutation(seed, int(e), n)[pos[sel] % n]
    return out


class TrainBatches:
    """Fixed-shape training batches of ``task`` for any step.

    Attributes:
      task: the task.
      examples: the training examples.
      tokenizer: the tokenizer.
      batch_size: ``B``.
      seed: the data-order seed.
      seq_len: the padded sequence length of every batch.
      num_candidates: the candidate count of classification batches (``None`` for ``lm``).
      shared_prompt: classification batches hold each prompt once plus the candidates' single
        option tokens.
      truncated: how many training sequences exceed ``max_length`` and are left-truncated.
      layout: ``"candidates"`` (one row per example and candidate, or shared prompts), ``"gold"``
        (each example with its gold answer, the ``lm`` objective) or ``"prompts"`` (generation
        prompts with ``example_index``, the ``f1`` objective).
    """

    def __init__(
        self,
        task: Task,
        examples: Sequence[Example],
        tokenizer: Any,
        batch_size: int,
        seed: int,
        max_length: int = 2048,
        max_new_tokens: int = 50,
        share_prompts: bool = True,
        objective: str = "task",
    ) -> None:
        """Encodes the training set once to fix the shapes.

        Args:
          task: the task.
          examples: the training examples.
          tokenizer: the tokenizer.
          batch_size: examples per step.
          seed: the data-order seed.
          max_length: cap on sequence length (left truncation keeping BOS).
          max_new_tokens: generation budget (generation tasks' training sequences leave room).
          share_prompts: use the shared-prompt layout when the task allows it.
          objective: ``"task"`` (the task's own loss), ``"accuracy"`` or ``"f1"`` (``--objective``).
        """
        if not examples:
            raise ValueError(f"{task.name}: the training split is empty")
        self.task = task
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.max_length = int(max_length)
        self.max_new_tokens = int(max_new_tokens)
        self.shared_prompt = False
        self.num_candidates: int | None = None
        if objective == "f1":
            self.layout = "prompts"
        elif task.objective == "classification" or objective == "accuracy":
            self.layout = "candidates"
        else:
            self.layout = "gold"
        if self.layout == "candidates":
            enc = [encode_candidates(task, ex, tokenizer) for ex in self.examples]
            lengths = [len(s.ids) for e in enc for s in e]
            self.num_candidates = max(len(e) for e in enc)
            self.shared_prompt = share_prompts and all(_single_token_options(e) for e in enc)
        elif self.layout == "prompts":
            lengths = [len(self._prompt(ex, 10**9)) for ex in self.examples]
        else:
            lengths = [len(encode_gold(task, ex, tokenizer, 10**9, max_new_tokens).ids) for ex in self.examples]
        # a shared prompt is fed without its option token; a generation prompt leaves room for the answer
        drop = 1 if self.shared_prompt else 0
        cap = self.max_length - (self.max_new_tokens if self.layout == "prompts" else drop)
        self.truncated = sum(n - drop > cap for n in lengths)
        self.seq_len = min(padded_length(max(lengths) - drop, 8), cap)

    def __len__(self) -> int:
        return len(self.examples)

    def indices(self, step: int) -> np.ndarray:
        """Training-set indices of ``step``'s examples (see :func:`step_indices`)."""
        return step_indices(self.seed, step, self.batch_size, len(self.examples))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The numpy batch of ``step`` (``zojax.tasks.train_batch`` with fixed shapes)."""
        indices = self.indices(step)
        if self.layout == "prompts":
            return self._prompt_batch(indices)
        return self.batch_of([self.examples[i] for i in indices])

    def _prompt(self, ex: Example, max_length: int) -> list[int]:
        return encode_generation_prompt(self.task, ex, self.tokenizer, (), max_length, self.max_new_tokens)

    def _prompt_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Left-padded generation prompts and their examples' indices (the ``f1`` objective)."""
        prompts = [Encoded(self._prompt(self.examples[i], self.max_length), 1) for i in indices]
        ids, mask, _ = left_pad(prompts, pad_id(self.tokenizer), self.seq_len, self.tokenizer.bos_id)
        return {"input_ids": ids, "attention_mask": mask, "example_index": np.asarray(indices, np.int32)}

    def batch_of(self, exs: Sequence[Example]) -> dict[str, np.ndarray]:
        """The numpy batch of the examples ``exs`` (any of this task), with this object's fixed shapes."""
        if self.layout == "prompts":
            raise ValueError("batch_of: prompt batches are built by step (they carry training-set indices)")
        if self.shared_prompt:
            return self._shared_batch(exs)
        kw: dict[str, Any] = {"max_length": self.max_length, "seq_len": self.seq_len}
        if self.layout == "candidates":
            return classification_batch(self.task, exs, self.tokenizer, num_candidates=self.num_candidates, **kw)
        return lm_batch(self.task, exs, self.tokenizer, max_new_tokens=self.max_new_tokens, **kw)

    def _shared_batch(self, exs: Sequence[Example]) -> dict[str, np.ndarray]:
        """One row per example: the common prompt, and each candidate's option token."""
        assert self.num_candidates is not None
        b, c = len(exs), self.num_candidates
        prompts: list[Encoded] = []
        cand_ids = np.zeros((b, c), np.int32)
        cand_mask = np.zeros((b, c), np.float32)
        gold_mask = np.zeros((b, c), np.float32)
        labels = np.zeros((b,), np.int32)
        for i, ex in enumerate(exs):
            enc = encode_candidates(self.task, ex, self.tokenizer, (), self.max_length)
            prompts.append(Encoded(enc[0].ids[:-1], 1))
            toks = [e.ids[-1] for e in enc]
            cand_ids[i] = toks + [toks[0]] * (c - len(toks))
            cand_mask[i, : len(toks)] = 1.0
            gold_mask[i, list(ex.gold)] = 1.0
            labels[i] = ex.label
        ids, mask, _ = left_pad(prompts, pad_id(self.tokenizer), self.seq_len,
                                self.tokenizer.bos_id)  # fmt: skip
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "candidate_ids": cand_ids,
            "candidate_mask": cand_mask,
            "labels": labels,
            "gold_mask": gold_mask,
        }


def _single_token_options(candidates: Sequence[Encoded]) -> bool:
    """Whether the candidates are one prompt followed by one distinct option token each."""
    first = candidates[0].ids
    return all(e.option_len == 1 and len(e.ids) == len(first) and e.ids[:-1] == first[:-1] for e in candidates)
