r"""The trainer on several processes (hosts): who writes, and how the processes agree.

``zojax finetune`` runs the same command on every process (JAX's multi-controller model; see
:func:`zojax.distributed.initialize`). Every process computes the same steps, evaluations and
decisions from the same data, so the run needs only three rules:

* process 0 alone writes the run directory's files (``config.json``, ``metrics.jsonl``, TensorBoard
  events, ``results.json``, checkpoint metadata) and prints; every process writes its own shards of
  a checkpoint (orbax) into the same folder, which must be on a file system all processes share;
* a decision that depends on one process's clock or signals (stop after SIGTERM, a time-based
  checkpoint) is agreed every step with :func:`agree` (the maximum over processes), so that no
  process waits in a collective the others never enter;
* folder changes that others read (a finished checkpoint's rename) are fenced by :func:`barrier`.

On a single process every function here is the trivial one (no collective, no cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def count() -> int:
    """The number of processes in the job."""
    return jax.process_count()


def is_main() -> bool:
    """Whether this is process 0 (the one that writes files and prints)."""
    return jax.process_index() == 0


def agree(values: Sequence[int]) -> tuple[int, ...]:
    """The element-wise maximum of ``values`` over all processes (the same on every process).

    Args:
      values: small integers, e.g. ``(signal number or -1, checkpoint due)``.

    Returns:
      ``values`` itself on a single process.
    """
    if jax.process_count() == 1:
        return tuple(int(v) for v in values)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, np.int32))
    return tuple(int(v) for v in np.asarray(gathered).reshape(-1, len(values)).max(axis=0))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
