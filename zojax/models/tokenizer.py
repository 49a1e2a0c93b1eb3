"""A small tokenizer wrapper over ``tokenizers.Tokenizer`` / ``transformers`` tokenizers (no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


class Tokenizer:
    """``encode``/``decode`` with explicit BOS handling and the special ids.

    Attributes:
      bos_id, eos_id, pad_id: special ids (``None`` when the vocabulary has none).
      vocab_size: size of the tokenizer's vocabulary.
      add_bos_default: whether :meth:`encode` prepends BOS when ``add_bos`` is not given (the
        checkpoint's own convention: False for SmolLM2, True for Llama and OPT).
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None,
        add_bos_default: bool,
    ) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.add_bos_default = add_bos_default
        self._hf = not hasattr(backend, "encode_batch")  # transformers tokenizer vs tokenizers.Tokenizer

    @property
    def vocab_size(self) -> int:
        if self._hf:
            return len(self.backend)
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (special-token strings such as ``<|im_start|>`` are recognised).

        Args:
          text: the text.
          add_bos: prepend ``bos_id``; ``None`` follows the checkpoint's convention
            (``add_bos_default``).
        """
        if self._hf:
            ids = list(self.backend.encode(text, add_special_tokens=False))
        else:
            ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        add = self.add_bos_default if add_bos is None else add_bos
        if add and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"


def tokenizer_from_gguf(reader: Any) -> Tokenizer:
    """Rebuilds a byte-level BPE tokenizer from GGUF metadata with ``tokenizers`` (no torch)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    def field(k: str, default: Any = None) -> Any:
        return reader.fields[k].contents() if k in reader.fields else default

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer: only byte-level BPE ('gpt2') is supported, got {model!r}")
    toks = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    types = field("tokenizer.ggml.token_type")
    tok = HFTokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(toks)},
            merges=[tuple(m.split(" ", 1)) for m in merges],
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, y in zip(toks, types, strict=True) if y == 3]
    )
    return Tokenizer(
        tok,
        bos_id=field("tokenizer.ggml.bos_token_id"),
        eos_id=field("tokenizer.ggml.eos_token_id"),
        pad_id=field("tokenizer.ggml.padding_token_id"),
        add_bos_default=bool(field("tokenizer.ggml.add_bos_token", False)),
    )


OPT_BOS_RULES = ("mezo", "checkpoint")
OPT_MEZO_BOS_ID = 0


def opt_bos_id(checkpoint_bos: int | None, rule: str = "mezo") -> int | None:
    r"""The BOS id an OPT tokenizer prepends under ``rule``.

    OPT's tokenizer prepends ``</s>`` (id 2, the checkpoint's ``bos_token_id``). MeZO's
    ``run.py`` sets ``tokenizer.bos_token_id = 0`` for every OPT model ("HF tokenizer bug fix"),
    so its sequences start with ``<s>`` (id 0) instead: ``"mezo"`` returns 0, ``"checkpoint"``
    keeps ``checkpoint_bos``.
    """
    if rule not in OPT_BOS_RULES:
        raise ValueError(f"opt_bos: expected one of {OPT_BOS_RULES}, got {rule!r}")
    return OPT_MEZO_BOS_ID if rule == "mezo" else checkpoint_bos


def tokenizer_from_folder(path: str, config: Any = None, *, opt_bos: str = "mezo") -> Tokenizer | None:
    """A tokenizer from a Hugging Face folder (``tokenizer.json``) via
    ``transformers.AutoTokenizer``.

    For OPT (``config.arch == "opt"``) the BOS id follows ``opt_bos`` (:func:`opt_bos_id`):
    ``"mezo"`` (default) prepends id 0 as MeZO does, ``"checkpoint"`` the tokenizer's own ``</s>``.
    Returns ``None`` when the folder has no tokenizer files.
    """
    opt_bos_id(None, opt_bos)  # validate before loading
    files = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, f)) for f in files):
        return None
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)
    probe = hf("a")["input_ids"]
    bare = hf("a", add_special_tokens=False)["input_ids"]
    add_bos = len(probe) > len(bare) and hf.bos_token_id is not None and probe[0] == hf.bos_token_id
    bos = hf.bos_token_id if hf.bos_token_id is not None else getattr(config, "bos_id", None)
    eos = hf.eos_token_id if hf.eos_token_id is not None else getattr(config, "eos_id", None)
    if getattr(config, "arch", None) == "opt":
        bos = opt_bos_id(bos, opt_bos)
    return Tokenizer(hf, bos_id=bos, eos_id=eos, pad_id=hf.pad_token_id, add_bos_default=add_bos)
