"""Flax causal LMs (Llama family incl. SmolLM2, OPT) for zeroth-order fine-tuning.

* :func:`load_model` / :func:`init_model` give ``(model, params)``: a :class:`Model` (config,
  tokenizer, pure functions of the parameters) and its plain-pytree parameters (layers stacked under
  ``"layers"``); ``model.logits(params, ids, mask, perturbation=(direction, scale))`` perturbs on
  the fly inside the layer scan.
* :class:`PerturbableModelLoss` / :func:`next_token_loss` turn them into
  :class:`zojax.perturb.PerturbableLoss` objects for the estimators.
* :mod:`zojax.models.lora` and :mod:`zojax.models.prefix`: parameter-efficient parameterisations.
"""

from zojax.models import adapters, lora, prefix, sharding
from zojax.models.adapters import Adapted
from zojax.models.config import ModelConfig, config_from_hf, llama_config, opt_config
from zojax.models.loading import available_memory_bytes, check_memory, load_model, smollm2_gguf_path
from zojax.models.loss import PerturbableModelLoss, masked_mean_nll, next_token_loss
from zojax.models.model import Model, init_model, init_params, num_params, param_bytes, positions_from_mask
from zojax.models.tokenizer import Tokenizer
from zojax.step import ZO_COMPILER_OPTIONS  # re-exported (defined next to zojax.jit_step)

__all__ = [
    "ZO_COMPILER_OPTIONS",
    "Adapted",
    "Model",
    "ModelConfig",
    "PerturbableModelLoss",
    "Tokenizer",
    "adapters",
    "available_memory_bytes",
    "check_memory",
    "config_from_hf",
    "init_model",
    "init_params",
    "llama_config",
    "load_model",
    "lora",
    "masked_mean_nll",
    "next_token_loss",
    "num_params",
    "opt_config",
    "param_bytes",
    "positions_from_mask",
    "prefix",
    "sharding",
    "smollm2_gguf_path",
]
