r"""Seed-regenerated perturbations over parameter pytrees.

A perturbation is never stored as an array. It is described by a :class:`Direction`, a handful of
PRNG keys and one weight per key, and every consumer (the perturbed forward, the update) regenerates
the noise it needs from that description, one leaf (or one layer of a leaf) at a time:

.. math::

   v(\text{leaf}) = \sum_{i=1}^{K} w_i \, z_i(\text{leaf}), \qquad
   z_i(\text{leaf}) \sim \mathcal{N}(0, I) \text{ drawn from } \mathrm{fold\_in}(k_i, \mathrm{id(leaf)}).

Definition of the noise (the contract every code path follows, so that a materialised copy, a
per-layer draw inside ``lax.scan`` and a sharded draw give bitwise the same values):

* keys are ``uint32[4]`` data of ``threefry4x32`` JAX keys, derived with a ``threefry`` ``fold_in``
  (:func:`fold_in`); the bulk noise of a leaf is a counter-based hash of (leaf key, element index)
  (:func:`counter_bits`): cheap, fused into whatever consumes it and partitioned like any
  elementwise op, so the values do not depend on the sharding or the device count;
* leaf key = ``fold_in(candidate_key, crc32(keystr(path)))``, so a leaf's noise depends on its path only
  and is stable when unrelated leaves are added, removed or reordered;
* leaves under a top-level ``"layers"`` entry carry a leading layer axis (models stack their layers and
  run them under ``lax.scan``); slice ``l`` of such a leaf is drawn from ``fold_in(leaf_key, l)`` with the
  slice's shape, so a model can regenerate one layer's noise inside its scan body;
* values are drawn in float32 and cast to the leaf dtype at the end; Gaussian noise is
  ``√2 · erfinv(u)`` of a uniform ``u`` from the word's top 23 bits (``jax.random.normal``'s
  transform), Rademacher noise unpacks 32 signs from each 32-bit word along the leaf's last axis
  (:func:`_packed_signs`).

Subspace perturbations (SubZero, Yu et al. ICCV 2025; :class:`Subspace`): when a direction carries a
``subspace``, each *matrix* leaf (per layer for stacked leaves) draws

.. math::

   z = \sqrt{\frac{mn}{r_U r_V}} \, U Z V^\top, \qquad U = \mathrm{qr}(G_U) \in \mathbb{R}^{m×r_U},\;
   V = \mathrm{qr}(G_V) \in \mathbb{R}^{n×r_V},\; Z \in \mathbb{R}^{r_U×r_V},

with ``G_U, G_V`` Gaussian drawn from ``fold_in(fold_in(subspace.key, id(leaf)) [, layer], 0 / 1)``
(the basis: shared by every candidate and every step until the transform refreshes the subspace key)
and ``Z`` drawn like an i.i.d. leaf of shape ``[r_U, r_V]`` from the candidate key. ``r_U = min(rank, m)``,
``r_V = min(rank, n)`` as SubZero's reduced QR; a side of dimension ``≤ rank`` uses ``I`` for its basis
(:func:`subspace_ranks`), so a matrix with both sides ``≤ rank`` gets i.i.d. noise.
A leaf is a matrix when its per-layer shape has at least two axes of size > 1: ``[m, n]`` (unit axes
dropped, as SubZero's ``squeeze``); a ``[m, n1, n2, …]`` leaf is matricised as ``[m, n1·n2·…]``. Every
other leaf (biases, norm scales) keeps the i.i.d. noise, as in SubZero. The ``√(mn/(r_U r_V))`` factor
is SubZero's: ``E‖z‖² = mn``, the same as an i.i.d. Gaussian leaf. The direction's weighted sum over
keys is taken on the ``r_U×r_V`` cores, ``v = c U (Σ_i w_i Z_i) Vᵀ``. ``U, V`` are regenerated
(QR) wherever the noise is needed: nothing but keys is stored; every consumer orthonormalises the
bases of all the matrices it needs at once (:func:`leaves_noise`, :func:`subspace_factors_many`).

Which leaves are perturbed (the non-float rule): **every leaf of a perturbed or updated pytree must
have a real floating-point dtype** (``float64``, ``float32``, ``bfloat16``, ``float16``, ...).
An integer, boolean or complex leaf raises a ``ValueError`` that names the leaf's path, at
``tx.init``, at the first ``update`` and in every path that adds noise (:func:`perturb`,
:func:`perturb_subtree` inside a model's layer scan, :func:`scaled_direction_tree` for the update);
nothing is rounded or skipped silently. Why raise rather than skip: ``jax.grad`` rejects
integer inputs the same way, and skipping could not keep such a leaf intact anyway, because the
optax transformations chained after an estimator are outside zojax's control
(``optax.apply_updates`` adds a float32 update to an ``int32`` leaf in float32, which changes
values above ``2**24`` even for a zero update, and ``optax.adamw``'s decay moves it). Complex leaves
are rejected because the noise is real (casting ``θ`` to float32 would drop the imaginary part).
Keep such state out of the trained pytree and close over it in the loss, as one would with
``jax.grad``: ``value_fn=lambda p: loss({**p, **frozen})``.
"""

from __future__ import annotations

from zojax.perturb.direction import (
    UNROLL_MAX,
    Direction,
    PerturbableLoss,
    Perturbation,
    as_perturbation,
    direction_tree,
    evaluate,
    leaves_noise,
    perturb,
    perturb_subtree,
    scaled_direction_tree,
)
from zojax.perturb.noise import (
    KEY_IMPL,
    STACKED_ENTRY,
    Distribution,
    KeyPath,
    PyTree,
    candidate_keys,
    check_float_leaf,
    check_float_leaves,
    counter_bits,
    fold_in,
    is_stacked,
    key_data,
    leaf_noise,
    path_id,
    wrap,
)
from zojax.perturb.subspace import (
    LeafSpec,
    Subspace,
    matrix_shape,
    subspace_basis,
    subspace_factors,
    subspace_factors_many,
    subspace_key,
    subspace_noise,
    subspace_ranks,
)
from zojax.specs import DISTRIBUTIONS, PERTURBATIONS

__all__ = [
    "DISTRIBUTIONS",
    "KEY_IMPL",
    "PERTURBATIONS",
    "STACKED_ENTRY",
    "UNROLL_MAX",
    "Direction",
    "Distribution",
    "KeyPath",
    "LeafSpec",
    "PerturbableLoss",
    "Perturbation",
    "PyTree",
    "Subspace",
    "as_perturbation",
    "candidate_keys",
    "check_float_leaf",
    "check_float_leaves",
    "counter_bits",
    "direction_tree",
    "evaluate",
    "fold_in",
    "is_stacked",
    "key_data",
    "leaf_noise",
    "leaves_noise",
    "matrix_shape",
    "path_id",
    "perturb",
    "perturb_subtree",
    "scaled_direction_tree",
    "subspace_basis",
    "subspace_factors",
    "subspace_factors_many",
    "subspace_key",
    "subspace_noise",
    "subspace_ranks",
    "wrap",
]
