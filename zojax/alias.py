r"""The paper's optimizers: a zeroth-order estimator, MeZO's weight decay, then SGD (as optax's ``alias``).

.. math::

    \theta \leftarrow \theta - \eta\,(\hat g + \lambda\, \theta \odot \mathrm{mask})

where :math:`\hat g` is the estimate of :func:`zojax.spsa` (MeZO), :func:`zojax.nspsa` (n-SPSA),
:func:`zojax.guided` (MeZO-GV), :func:`zojax.greedy` (MeZO-Greedy) or :func:`zojax.centred` (the
centred-loss estimate, beyond the paper) and the mask
(:func:`decay_mask`) exempts biases and normalisation parameters, as MeZO does. Each is
``optax.chain(estimator, optax.add_decayed_weights(λ, mask), optax.sgd(η))``; chain the estimator
with another optax optimizer for ZO-Adam and the like (see :mod:`zojax.transforms`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

from zojax.transforms import centred, greedy, guided, nspsa, spsa

PyTree = Any


_NO_DECAY = re.compile(r"bias|norm|(^|[^a-z])ln([^a-z]|$)", re.IGNORECASE)


def decay_mask(params: PyTree) -> PyTree:
    """MeZO's weight-decay mask: ``False`` for biases and normalisation parameters, ``True`` elsewhere.

    A leaf is exempt when any entry of its key path contains ``bias`` or ``norm`` or is ``ln``-like
    (MeZO skips names with ``bias``, ``layer_norm`` or ``layernorm``). Embeddings are decayed, as in MeZO.
    """

    def keep(path: Any, _: Any) -> bool:
        return not _NO_DECAY.search(jax.tree_util.keystr(tuple(path)))

    return jax.tree_util.tree_map_with_path(keep, params)


def _with_sgd(
    estimator: optax.GradientTransformationExtraArgs,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float,
) -> optax.GradientTransformationExtraArgs:
    parts: list[optax.GradientTransformation] = [estimator]
    # Under optax.inject_hyperparams the decay is a traced array: keep the term unless it is a
    # literal zero.
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.sgd(learning_rate))
    return optax.chain(*parts)


def mezo(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    *,
    weight_decay: float = 0.0,
    one_sided: bool = False,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO: SPSA estimate, MeZO's weight decay (none on biases and norms), then SGD.

    ``θ ← θ − η (g z + λ θ ⊙ mask)``, ``g = (L(θ+εz) − L(θ−εz)) / 2ε``.

    Example:
      >>> tx = mezo(learning_rate=1e-2, eps=1e-3)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params, value_fn=lambda p: jnp.sum(p["w"] ** 2))
      >>> params = optax.apply_updates(params, updates)
    """
    return _with_sgd(
        spsa(
            eps,
            one_sided=one_sided,
            distribution=distribution,
            perturbation=perturbation,
            rank=rank,
            refresh_every=refresh_every,
            key=key,
        ),
        learning_rate,
        weight_decay,
    )


def mezo_nspsa(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    num_queries: int = 2,
    *,
    weight_decay: float = 0.0,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """n-SPSA with SGD (the paper's Table X baseline), ``2q`` forwards per step."""
    return _with_sgd(
        nspsa(
            eps,
            num_queries,
            distribution=distribution,
            perturbation=perturbation,
            rank=rank,
            refresh_every=refresh_every,
            key=key,
        ),
        learning_rate,
        weight_decay,
    )


def mezo_gv(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    num_candidates: int = 4,
    elite_ratio: float = 0.5,
    *,
    weighting: str = "mean_diff",
    normalize: bool = False,
    weight_decay: float = 0.0,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO-GV: guided estimate then SGD, ``M + 2`` forwards per step (see :func:`guided`)."""
    est = guided(
        eps,
        num_candidates,
        elite_ratio,
        weighting=weighting,
        normalize=normalize,
        distribution=distribution,
        perturbation=perturbation,
        rank=rank,
        refresh_every=refresh_every,
        key=key,
    )
    return _with_sgd(est, learning_rate, weight_decay)


def mezo_greedy(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    num_candidates: int = 4,
    *,
    reuse_best_loss: bool = False,
    weight_decay: float = 0.0,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """MeZO-Greedy: step along the best of ``M`` candidates with SGD (see :func:`greedy`)."""
    est = greedy(
        eps,
        num_candidates,
        reuse_best_loss=reuse_best_loss,
        distribution=distribution,
        perturbation=perturbation,
        rank=rank,
        refresh_every=refresh_every,
        key=key,
    )
    return _with_sgd(est, learning_rate, weight_decay)


def mezo_centred(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-3,
    num_candidates: int = 4,
    *,
    weight_decay: float = 0.0,
    distribution: str = "gaussian",
    perturbation: str = "iid",
    rank: int | None = None,
    refresh_every: int | None = None,
    key: int | jax.Array = 0,
) -> optax.GradientTransformationExtraArgs:
    """The centred-loss estimate of ``M`` candidates then SGD, ``M`` forwards per step (see :func:`centred`)."""
    est = centred(
        eps,
        num_candidates,
        distribution=distribution,
        perturbation=perturbation,
        rank=rank,
        refresh_every=refresh_every,
        key=key,
    )
    return _with_sgd(est, learning_rate, weight_decay)
