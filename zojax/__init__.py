"""zojax: memory-efficient zeroth-order fine-tuning of LLMs in JAX.

The estimators (MeZO's SPSA, n-SPSA, MeZO-GV, MeZO-Greedy and the centred-loss estimate) are pure
functions over parameter pytrees (:mod:`zojax.estimators`) exposed as optax transformations
(:mod:`zojax.transforms`) that regenerate their perturbations from PRNG keys (:mod:`zojax.perturb`),
and the paper's optimizers, each an estimator followed by SGD (:mod:`zojax.alias`);
:func:`zojax.jit_step` compiles a step of one (donated, with the compiler options that keep it
within a forward's memory).

The names below are imported on first use (:mod:`zojax._lazy`), so that the ``zojax`` command's help
and listings do not wait for JAX.
"""

from zojax._lazy import attach

__version__ = "0.1.0"

_EXPORTS = {
    "Estimate": "estimators",
    "Direction": "perturb",
    "PerturbableLoss": "perturb",
    "METHODS": "registry",
    "Method": "registry",
    "ZO_COMPILER_OPTIONS": "step",
    **dict.fromkeys(("decay_mask", "mezo", "mezo_centred", "mezo_greedy", "mezo_gv", "mezo_nspsa"), "alias"),
    "jit_options": "step",
    "jit_step": "step",
    **dict.fromkeys(
        (
            "SkipNonfiniteState",
            "ZOState",
            "centred",
            "greedy",
            "guided",
            "nspsa",
            "skip_nonfinite",
            "spsa",
            "zeroth_order",
            "zo_state",
        ),
        "transforms",
    ),
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "alias", "estimators", "perturb", "registry", "transforms"])
