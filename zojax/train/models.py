r"""Model resolution: what a ``--model`` name means (a checkpoint to load or a random preset).

``random:<preset>`` is a randomly initialised Llama (``random:tiny``) or OPT (``random:opt-tiny``)
with a 259-token byte vocabulary and :class:`~zojax.train.data.ByteTokenizer`, for tests and smoke
runs; every other name goes to :func:`zojax.models.load_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from zojax.models import Model
from zojax.train.data import ByteTokenizer

PyTree = Any


def build_model(
    name: str, dtype: str = "float32", opt_bos: str = "mezo", shardings: Callable[[Any], Any] | None = None
) -> tuple[Model, PyTree]:
    """Loads ``name`` (see ``zojax.models.load_model``) or builds ``random:<preset>``: ``(model, params)``.

    ``random:<preset>`` is a randomly initialised Llama (``random:tiny``) or OPT
    (``random:opt-tiny``) preset with a 259-token byte vocabulary and :class:`ByteTokenizer`,
    for tests and smoke runs.

    ``shardings`` (parameter shapes -> shardings): a Hugging Face checkpoint is loaded straight
    onto them, each process reading only its slices; random presets and GGUF files ignore it.
    """
    from zojax import models as zm

    if name.startswith("random:"):
        preset = name.split(":", 1)[1]
        tok = ByteTokenizer()
        ids = {
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
        }
        try:
            opt = preset.startswith("opt-")
            cfg = zm.opt_config(preset[4:], **ids) if opt else zm.llama_config(preset, **ids)
        except ValueError as e:
            raise ValueError(f"--model: {e}") from None
        model, params = zm.init_model(cfg, 0, dtype)
        return model.replace(tokenizer=tok), params
    return zm.load_model(name, dtype=dtype, opt_bos=opt_bos, shardings=shardings)


def check_model_name(name: str) -> None:
    """Cheap existence check of ``--model`` (no weights are read); raises ``ValueError``."""
    from zojax.models import loading

    if name.startswith("random:"):
        build_model_config_only(name)
        return
    if name.lower().strip() in loading.SMOLLM2_ALIASES:
        try:
            loading.smollm2_gguf_path()
        except FileNotFoundError as e:
            raise ValueError(f"--model: {e}") from None
        return
    p = os.path.expanduser(name)
    if os.path.exists(p):
        return
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return  # a hub id; only checkable online
    raise ValueError(f"--model: {name!r} is neither a known name, a local path nor a hub id")


def build_model_config_only(name: str) -> None:
    """Validates a ``random:<preset>`` name."""
    from zojax import models as zm

    preset = name.split(":", 1)[1]
    try:
        if preset.startswith("opt-"):
            zm.opt_config(preset[4:])
        else:
            zm.llama_config(preset)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None
