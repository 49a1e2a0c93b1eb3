r"""Where a batch's rows live: the interface that generation and evaluation take.

Greedy generation (:meth:`zojax.models.Model.generate_batch`) and candidate scoring
(:mod:`zojax.tasks.evaluate`) pad each batch to a multiple of :attr:`Rows.data_size` rows

.. math::

   B' = \left\lceil B / D \right\rceil D,

put it on the devices with :meth:`Rows.batch` (rows split over the ``data`` axis) and bring each
per-row result back whole, on every process, with :meth:`Rows.fetch`; padded rows are dropped
there. :data:`LOCAL` is one device (the identity);
:class:`zojax.train.placement.Placement` splits the rows over its mesh's ``data`` axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


class Rows(Protocol):
    """How a batch's rows are laid out over devices."""

    @property
    def data_size(self) -> int:
        """``D``: the number of row shards (a batch's rows must be a multiple of it)."""
        ...

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its rows (leading axis) on the devices."""
        ...

    def fetch(self, x: Any) -> np.ndarray:
        """A (row-sharded) result as one host array, the same on every process."""
        ...


@dataclasses.dataclass(frozen=True)
class Local:
    """One device: batches stay as they are, results are ``np.asarray``."""

    data_size: int = 1

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` unchanged."""
        return batch

    def fetch(self, x: Any) -> np.ndarray:
        """``np.asarray(x)``."""
        return np.asarray(x)


LOCAL = Local()


def padded_rows(n: int, multiple: int) -> int:
    r"""``⌈n / m⌉·m``: ``n`` rows padded to a multiple of ``m``.

    Args:
      n: the rows (``≥ 0``).
      multiple: ``m ≥ 1``, e.g. :attr:`Rows.data_size`.

    Returns:
      the padded row count.

    Example:
      >>> padded_rows(7, 2), padded_rows(8, 2), padded_rows(3, 1)
      (8, 8, 3)
    """
    return -(-n // multiple) * multiple
