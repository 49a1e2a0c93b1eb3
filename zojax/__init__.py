"""zojax: memory-efficient zeroth-order fine-tuning of LLMs in JAX.

The estimators (MeZO's SPSA, n-SPSA, MeZO-GV, MeZO-Greedy) are pure functions over parameter pytrees
(:mod:`zojax.estimators`) exposed as optax transformations (:mod:`zojax.transforms`) that regenerate
their perturbations from PRNG keys (:mod:`zojax.perturb`).
"""

from zojax import estimators, perturb, registry
from zojax.estimators import Estimate
from zojax.perturb import Direction, PerturbableLoss
from zojax.registry import METHODS, Method
from zojax.transforms import (
    SkipNonfiniteState,
    ZOState,
    decay_mask,
    greedy,
    guided,
    mezo,
    mezo_greedy,
    mezo_gv,
    mezo_nspsa,
    nspsa,
    skip_nonfinite,
    spsa,
    zeroth_order,
    zo_state,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Direction",
    "Estimate",
    "Method",
    "PerturbableLoss",
    "SkipNonfiniteState",
    "ZOState",
    "decay_mask",
    "estimators",
    "greedy",
    "guided",
    "mezo",
    "mezo_greedy",
    "mezo_gv",
    "mezo_nspsa",
    "nspsa",
    "perturb",
    "registry",
    "skip_nonfinite",
    "spsa",
    "zeroth_order",
    "zo_state",
]
