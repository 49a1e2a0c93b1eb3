"""MeZO's seeded sampling protocol (``Dataset.sample_subset`` / ``sample_train_sets``).

* train+dev: ``np.random.RandomState(seed).permutation(len(train_pool))[:num_train + num_dev]``;
  dev = the last ``num_dev`` of that sample, train = the rest (so CB/COPA with dev 100 get
  "the rest" as train).
* test: ``RandomState(seed).permutation(len(validation))[:num_test]`` (all of it when smaller).
* When the train split is absent (BoolQ, SQuAD offline) train/dev/test are carved disjointly from
  validation: test is MeZO's test sample from validation (identical indices), the remaining
  validation rows form the train pool, and train/dev are sampled from it as above. ``meta`` says so.
* ICL: MeZO's default draws one demonstration set per test example: seeds
  ``RandomState(0).randint(0, 10000, num_eval)``, each set ``permutation(len(pool))[:num_demos]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def mezo_subset(n: int, seed: int, num: int) -> list[int]:
    """Indices MeZO's ``sample_subset`` picks: seeded permutation of ``range(n)``, first ``num``."""
    return np.random.RandomState(seed).permutation(n)[:num].tolist()


def split_train_dev(pool_size: int, seed: int, num_train: int, num_dev: int) -> tuple[list[int], list[int]]:
    """MeZO's train/dev indices into a train pool: dev is the last ``num_dev`` of the sample.

    When the pool is no larger than ``num_dev`` (e.g. ``--num-dev 500`` on CB's 250 train rows),
    dev takes half the pool so that a train set remains; otherwise MeZO's rule is unchanged (WSC's
    554 rows give 54 train / 500 dev, as in MeZO)."""
    if num_dev >= pool_size:
        num_dev = pool_size // 2
    idx = mezo_subset(pool_size, seed, num_train + num_dev)
    if num_dev <= 0:
        return idx, []
    return idx[:-num_dev], idx[-num_dev:]


def carve_from_validation(
    n_valid: int, seed: int, num_train: int, num_dev: int, num_test: int
) -> tuple[list[int], list[int], list[int]]:
    """Disjoint (train, dev, test) indices into validation when the train split is absent.

    Test is MeZO's test sample (first ``num_test`` of the seeded permutation; at most half of the
    rows so a train pool remains); the rest, in index order, is the train pool from which
    train/dev are sampled with :func:`split_train_dev`."""
    n_test = min(num_test, (n_valid + 1) // 2)
    perm = np.random.RandomState(seed).permutation(n_valid)
    test = perm[:n_test].tolist()
    pool = sorted(perm[n_test:].tolist())
    tr, dv = split_train_dev(len(pool), seed, num_train, num_dev)
    return [pool[i] for i in tr], [pool[i] for i in dv], test


def icl_demo_sets(pool: Sequence[T], num_eval: int, num_demos: int = 32) -> list[list[T]]:
    """MeZO's default ICL demonstrations: one seeded set of ``num_demos`` per test example."""
    seeds = np.random.RandomState(0).randint(0, 10000, num_eval)
    return [[pool[i] for i in mezo_subset(len(pool), int(s), num_demos)] for s in seeds]
