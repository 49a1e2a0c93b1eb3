r"""Padded sizes: how many rows and tokens a batch is padded to (few shapes, few compilations).

Pure integer arithmetic, free of JAX and numpy, shared by the data pipeline
(:mod:`zojax.tasks.encode`) and the device layout of a batch (:mod:`zojax.models.rows`).
"""

from __future__ import annotations


def padded_rows(n: int, multiple: int) -> int:
    r"""``⌈n / m⌉·m``: ``n`` rows padded to a multiple of ``m``.

    Args:
      n: the rows (``≥ 0``).
      multiple: ``m ≥ 1``, e.g. :attr:`zojax.models.rows.Rows.data_size`.

    Returns:
      the padded row count.

    Example:
      >>> padded_rows(7, 2), padded_rows(8, 2), padded_rows(3, 1)
      (8, 8, 3)
    """
    return -(-n // multiple) * multiple


def padded_length(n: int, multiple_of: int = 8, geometric: bool = False) -> int:
    r"""``max(m, ⌈n′ / m⌉·m)``: a sequence length rounded up to a multiple of ``m``.

    With ``geometric``, ``n′`` is first ``n`` rounded up to the next ``2^k`` or ``1.5·2^k``
    (``n′ = n`` otherwise), so that evaluation batches of many lengths share few shapes.

    Args:
      n: the longest sequence of the batch.
      multiple_of: ``m`` (values below 1 count as 1).
      geometric: round to ``{2^k, 1.5·2^k}`` first.

    Returns:
      the padded length, at least ``m``.

    Example:
      >>> padded_length(13), padded_length(13, 8, geometric=True), padded_length(40, 8, True)
      (16, 16, 48)
    """
    m = max(1, multiple_of)
    if geometric and n > m:
        p = 1 << (n - 1).bit_length()  # next power of two >= n
        n = 3 * p // 4 if 3 * p // 4 >= n else p
    return max(m, padded_rows(n, m))
