r"""The Hugging Face checkpoint layout: ``config.json`` and HF tensor names -> our parameter pytree.

Our parameters are a plain pytree with the decoder layers stacked under ``"layers"`` (Llama-2/3,
SmolLM2, OPT-125m..13B); an HF checkpoint names one tensor per layer. For ``L`` layers::

    embed.embedding          = E_hf[:V]                       (model[.decoder].embed_tokens.weight, cut to V rows)
    <module>.kernel          = W_hf.T                         (a Linear: HF stores (out, in), we use (in, out))
    layers.<module>.<leaf>   = stack([t_0, ..., t_{L-1}])     (model.layers.{l}.* / model.decoder.layers.{l}.*)
    norms, biases            = t                              (as stored)

:func:`hf_layout` names the tensors, :func:`expected_shape` gives each leaf's shape from the config
(every tensor is checked against it, naming the tensor), :func:`params_from_hf_tensors` builds the
pytree from lazy tensor getters (safetensors views, :mod:`zojax.models.safetensors`, or the
dequantised GGUF tensors, :mod:`zojax.models.gguf`), and :func:`folder_config` reads a folder's
``config.json``. :mod:`zojax.models.sharded_loading` builds the same pytree slice by slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np

from zojax.errors import UserError, UserFileNotFoundError, UserKeyError
from zojax.models.config import ModelConfig, config_from_hf
from zojax.models.forward import OPT_POSITION_OFFSET, resolve_dtype


def hf_layout(
    config: ModelConfig,
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(top-level HF name -> our path, per-layer HF suffix -> our path inside "layers")."""
    if config.arch == "llama":
        top = {
            "model.embed_tokens.weight": ("embed", "embedding"),
            "model.norm.weight": ("final_norm", "scale"),
        }
        if not config.tie_embeddings:
            top["lm_head.weight"] = ("lm_head", "kernel")
        layer = {
            "input_layernorm.weight": ("input_norm", "scale"),
            "post_attention_layernorm.weight": ("post_norm", "scale"),
        }
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layer[f"self_attn.{p}.weight"] = (p, "kernel")
        for p in ("gate_proj", "up_proj", "down_proj"):
            layer[f"mlp.{p}.weight"] = (p, "kernel")
        return top, layer
    top = {
        "model.decoder.embed_tokens.weight": ("embed", "embedding"),
        "model.decoder.embed_positions.weight": ("pos_embed", "embedding"),
        "model.decoder.final_layer_norm.weight": ("final_norm", "scale"),
        "model.decoder.final_layer_norm.bias": ("final_norm", "bias"),
    }
    if not config.tie_embeddings:
        top["lm_head.weight"] = ("lm_head", "kernel")
    layer = {}
    for hf, ours in (
        ("q_proj", "q_proj"),
        ("k_proj", "k_proj"),
        ("v_proj", "v_proj"),
        ("out_proj", "o_proj"),
    ):
        layer[f"self_attn.{hf}.weight"] = (ours, "kernel")
        layer[f"self_attn.{hf}.bias"] = (ours, "bias")
    for hf, ours in (("self_attn_layer_norm", "input_norm"), ("final_layer_norm", "post_norm")):
        layer[f"{hf}.weight"] = (ours, "scale")
        layer[f"{hf}.bias"] = (ours, "bias")
    for p in ("fc1", "fc2"):
        layer[f"{p}.weight"] = (p, "kernel")
        layer[f"{p}.bias"] = (p, "bias")
    return top, layer


def expected_shape(config: ModelConfig, path: tuple[str, ...]) -> tuple[int, ...]:
    """Our (per-layer, unstacked) shape of a leaf."""
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    module, leaf = path
    io = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, f),
        "up_proj": (h, f),
        "down_proj": (f, h),
        "fc1": (h, f),
        "fc2": (f, h),
    }
    if module == "embed":
        return (v, h)
    if module == "pos_embed":
        return (config.max_position_embeddings + OPT_POSITION_OFFSET, h)
    if module == "lm_head":
        return (h, v)
    if module in io:
        return io[module] if leaf == "kernel" else (io[module][1],)
    return (h,)


def normalise_names(names: Iterable[str], config: ModelConfig) -> dict[str, str]:
    """Maps canonical HF names to the names present (adds/removes a ``model.`` prefix as needed)."""
    present = set(names)
    out = {}
    for n in present:
        out[n] = n
        if config.arch == "opt" and n.startswith("decoder."):
            out["model." + n] = n
        if config.arch == "llama" and n.startswith(("layers.", "embed_tokens.", "norm.")):
            out["model." + n] = n
    return out


def hf_tensor(
    config: ModelConfig,
    getters: dict[str, Callable[[], np.ndarray]],
    names: dict[str, str],
    hf_name: str,
    path: tuple[str, ...],
) -> np.ndarray:
    """One HF tensor in our orientation, checked: ``W.T`` for a Linear kernel, the embedding cut to
    ``config.vocab_size`` rows; a view (no data read) when the getter returns a memory map.

    Args:
      names: :func:`normalise_names` of the getters.
      hf_name: the canonical HF name; path: our ``(module, leaf)``.

    Raises:
      KeyError: the tensor is missing (named).
      ValueError: it has the wrong shape (named, with both shapes).
    """
    if hf_name not in names:
        raise UserKeyError(f"checkpoint: tensor {hf_name!r} is missing (needed for {'.'.join(path)})")
    arr = np.asarray(getters[names[hf_name]]())
    want = expected_shape(config, path)
    got = arr.T.shape if path[1] == "kernel" else arr.shape
    if path[0] == "embed" and arr.shape[0] > config.vocab_size and arr.shape[1:] == want[1:]:
        arr = arr[: config.vocab_size]
        got = arr.shape
    if tuple(got) != tuple(want):
        hf_want = want[::-1] if path[1] == "kernel" else want
        raise UserError(
            f"checkpoint: shape mismatch for tensor {hf_name!r}: expected {tuple(hf_want)} "
            f"from config.json, got {tuple(arr.shape)}"
        )
    return arr.T if path[1] == "kernel" else arr


def hf_layer_prefix(config: ModelConfig) -> str:
    """``"model.layers"`` (Llama) or ``"model.decoder.layers"`` (OPT)."""
    return "model.layers" if config.arch == "llama" else "model.decoder.layers"


PARAM_ORDER = ("embed", "pos_embed", "layers", "final_norm", "lm_head")


def params_from_hf_tensors(
    config: ModelConfig, getters: dict[str, Callable[[], np.ndarray]], dtype: str = "float32"
) -> dict[str, Any]:
    """Our parameter pytree from HF-named tensors (``(out, in)`` Linear weights transposed to
    ``(in, out)``).

    Raises:
      KeyError: a required tensor is missing (named).
      ValueError: a tensor has the wrong shape (named, with both shapes).
    """
    dt = resolve_dtype(dtype)
    names = normalise_names(getters, config)
    top, layer = hf_layout(config)

    def fetch(hf_name: str, path: tuple[str, ...]) -> np.ndarray:
        return hf_tensor(config, getters, names, hf_name, path)

    params: dict[str, Any] = {}
    for hf_name, path in top.items():
        params.setdefault(path[0], {})[path[1]] = jnp.asarray(fetch(hf_name, path).astype(dt))
    layers: dict[str, Any] = {}
    prefix = hf_layer_prefix(config)
    for suffix, path in layer.items():
        shape = expected_shape(config, path)
        buf = np.empty((config.num_layers, *shape), dt)
        for i in range(config.num_layers):
            buf[i] = fetch(f"{prefix}.{i}.{suffix}", path)
        layers.setdefault(path[0], {})[path[1]] = jnp.asarray(buf)
        del buf
    params["layers"] = layers
    return {k: params[k] for k in PARAM_ORDER if k in params}


def folder_config(folder: str) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face folder's ``config.json``."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise UserFileNotFoundError(f"{folder}: config.json is missing (not a Hugging Face checkpoint folder?)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}, line {e.lineno}: not valid JSON ({e.msg}); fix or download it again") from None
    except UnicodeDecodeError:
        raise UserError(f"{cfg_path}: not valid UTF-8; fix or download it again") from None
    try:
        return config_from_hf(raw)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UserError(f"{cfg_path}: {msg}") from e


__all__ = [
    "PARAM_ORDER",
    "expected_shape",
    "folder_config",
    "hf_layer_prefix",
    "hf_layout",
    "hf_tensor",
    "normalise_names",
    "params_from_hf_tensors",
]
