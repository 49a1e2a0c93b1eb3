"""Model configurations for the Llama-family and OPT decoders, with named presets.

A :class:`ModelConfig` describes the architecture only (no weights). ``arch`` selects the block:

* ``"llama"``: RMSNorm, rotary position embeddings (HF ``rotate_half`` layout), grouped-query
  attention, SwiGLU MLP, no biases, optional tied input/output embeddings (SmolLM2, Llama-2/3).
* ``"opt"``: learned absolute positions (index offset 2), pre-LN LayerNorm, ReLU MLP, biases
  everywhere, tied output embedding (OPT-125m ... OPT-13B with ``do_layer_norm_before=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Arch = Literal["llama", "opt"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters of a decoder-only causal LM.

    Attributes:
      arch: ``"llama"`` or ``"opt"``.
      vocab_size: number of token embeddings ``V``.
      hidden_size: model width ``H``.
      intermediate_size: MLP width ``F``.
      num_layers: number of decoder blocks ``L``.
      num_heads: query heads.
      num_kv_heads: key/value heads (``num_heads`` for multi-head attention; fewer for GQA).
      head_dim: per-head width ``D`` (``H // num_heads`` unless given).
      rope_theta: RoPE base (llama).
      rope_scaling: HF ``rope_scaling`` dict (only ``rope_type="llama3"`` is supported) or ``None``.
      norm_eps: epsilon of RMSNorm / LayerNorm.
      tie_embeddings: the LM head reuses the input embedding (``logits = h Eᵀ``).
      max_position_embeddings: context length (OPT: size of the learned table minus the offset 2).
      bos_id, eos_id, pad_id: special token ids (informational; tokenizers carry their own).
      name: a label for logs.
    """

    arch: Arch = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position_embeddings: int = 2048
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "opt"):
            raise ValueError(f"arch: unsupported architecture {self.arch!r}; expected 'llama' or 'opt'")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.arch == "opt" and self.num_kv_heads != self.num_heads:
            raise ValueError("opt: num_kv_heads must equal num_heads")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Number of parameters (the tied head counted once)."""
        h, f, v, nl = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        if self.arch == "llama":
            layer = h * (q + 2 * kv) + q * h + 3 * h * f + 2 * h
            top = v * h + h + (0 if self.tie_embeddings else h * v)
        else:
            layer = h * (q + 2 * kv) + (q + 2 * kv) + q * h + h + 2 * h * f + f + h + 4 * h
            top = v * h + (self.max_position_embeddings + 2) * h + 2 * h
            top += 0 if self.tie_embeddings else h * v
        return nl * layer + top


_LLAMA_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=256,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=8192,
        bos_id=1,
        eos_id=2,
        pad_id=2,
    ),
    "smollm2-360m": dict(
        vocab_size=49152,
        hidden_size=960,
        intermediate_size=2560,
        num_layers=32,
        num_heads=15,
        num_kv_heads=5,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=8192,
        bos_id=1,
        eos_id=2,
        pad_id=2,
    ),
    "smollm2-1.7b": dict(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=24,
        num_heads=32,
        num_kv_heads=32,
        rope_theta=130000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=8192,
        bos_id=1,
        eos_id=2,
        pad_id=2,
    ),
    "llama-1b": dict(  # Llama-3.2-1B shape
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        rope_theta=500000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=131072,
        bos_id=128000,
        eos_id=128001,
        pad_id=128001,
        rope_scaling=(
            ("factor", 32.0),
            ("high_freq_factor", 4.0),
            ("low_freq_factor", 1.0),
            ("original_max_position_embeddings", 8192),
            ("rope_type", "llama3"),
        ),
    ),
    "llama2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        rope_theta=10000.0,
        norm_eps=1e-5,
        tie_embeddings=False,
        max_position_embeddings=4096,
        bos_id=1,
        eos_id=2,
        pad_id=0,
    ),
}

_OPT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=256,
    ),
    "opt-125m": dict(vocab_size=50272, hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12),
    "opt-1.3b": dict(vocab_size=50272, hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=32),
    "opt-2.7b": dict(vocab_size=50272, hidden_size=2560, intermediate_size=10240, num_layers=32, num_heads=32),
    "opt-6.7b": dict(vocab_size=50272, hidden_size=4096, intermediate_size=16384, num_layers=32, num_heads=32),
    "opt-13b": dict(vocab_size=50272, hidden_size=5120, intermediate_size=20480, num_layers=40, num_heads=40),
}

_OPT_DEFAULTS = dict(
    arch="opt",
    norm_eps=1e-5,
    tie_embeddings=True,
    max_position_embeddings=2048,
    bos_id=2,
    eos_id=2,
    pad_id=1,
)


def llama_config(name: str = "tiny", **overrides: Any) -> ModelConfig:
    """A Llama-architecture preset; ``overrides`` replace fields.

    Presets: ``"tiny"`` (tests), ``"smollm2-135m"``, ``"smollm2-360m"``, ``"smollm2-1.7b"``,
    ``"llama-1b"`` (Llama-3.2-1B shape), ``"llama2-7b"``.
    """
    key = name.lower()
    if key not in _LLAMA_PRESETS:
        raise ValueError(f"llama_config: unknown preset {name!r}; choose from {sorted(_LLAMA_PRESETS)}")
    kw = {"arch": "llama", "name": key, **_LLAMA_PRESETS[key]}
    kw.update(overrides)
    return ModelConfig(**kw)


def opt_config(name: str = "tiny", **overrides: Any) -> ModelConfig:
    """An OPT preset: ``"tiny"``, ``"opt-125m"``, ``"opt-1.3b"``, ``"opt-2.7b"``, ``"opt-6.7b"``,
    ``"opt-13b"``."""
    key = name.lower()
    if key not in _OPT_PRESETS:
        raise ValueError(f"opt_config: unknown preset {name!r}; choose from {sorted(_OPT_PRESETS)}")
    kw = {**_OPT_DEFAULTS, "name": key, **_OPT_PRESETS[key]}
    kw.update(overrides)
    kw["num_kv_heads"] = kw["num_heads"]
    return ModelConfig(**kw)


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """Builds a :class:`ModelConfig` from a Hugging Face ``config.json`` dict.

    Raises:
      ValueError: for an unsupported ``model_type``/architecture or OPT variants this port does not
        implement (``do_layer_norm_before=False``, ``word_embed_proj_dim != hidden_size``,
        non-ReLU).
    """
    model_type = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    name = cfg.get("_name_or_path", model_type) or model_type
    if model_type == "llama" or any("Llama" in a for a in archs):
        n_heads = cfg["num_attention_heads"]
        scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        if scaling is not None:
            rtype = scaling.get("rope_type", scaling.get("type", "default"))
            if rtype == "default":
                scaling = None
            elif rtype != "llama3":
                raise ValueError(f"config.json: unsupported rope_scaling type {rtype!r} (supported: llama3)")
        theta = cfg.get("rope_theta")
        if theta is None and isinstance(cfg.get("rope_parameters"), dict):
            theta = cfg["rope_parameters"].get("rope_theta")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("config.json: Llama variants with attention_bias/mlp_bias are not supported")
        eos = cfg.get("eos_token_id", 2)
        return ModelConfig(
            arch="llama",
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=n_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
            rope_theta=float(theta if theta is not None else 10000.0),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            bos_id=cfg.get("bos_token_id") if cfg.get("bos_token_id") is not None else 1,
            eos_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 2,
            pad_id=cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 0,
            name=str(name),
        )
    if model_type == "opt" or any("OPT" in a for a in archs):
        if not cfg.get("do_layer_norm_before", True):
            raise ValueError(
                "config.json: OPT with do_layer_norm_before=False (opt-350m) is not supported; "
                "supported: OPT-125m..13B style pre-LN models"
            )
        if cfg.get("word_embed_proj_dim", cfg["hidden_size"]) != cfg["hidden_size"]:
            raise ValueError("config.json: OPT with word_embed_proj_dim != hidden_size is not supported")
        if cfg.get("activation_function", "relu") != "relu":
            raise ValueError(f"config.json: unsupported OPT activation {cfg.get('activation_function')!r}")
        if not cfg.get("enable_bias", True) or not cfg.get("layer_norm_elementwise_affine", True):
            raise ValueError("config.json: OPT without biases / affine LayerNorm is not supported")
        return ModelConfig(
            arch="opt",
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["ffn_dim"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg["num_attention_heads"],
            norm_eps=1e-5,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            bos_id=cfg.get("bos_token_id", 2),
            eos_id=cfg.get("eos_token_id", 2),
            pad_id=cfg.get("pad_token_id", 1),
            name=str(name),
        )
    raise ValueError(
        f"config.json: unsupported architecture model_type={model_type!r} architectures={archs}; "
        "supported: llama (Llama-2/3, SmolLM2) and opt"
    )
