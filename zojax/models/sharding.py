"""Logical sharding annotations for every parameter.

Every leaf gets a tuple of logical axis names (one per dimension), from the leaf's key path:

==============================  ======================================
leaf                            logical axes
==============================  ======================================
embed.embedding                 ("vocab", "embed")
pos_embed.embedding             ("positions", "embed")
lm_head.kernel                  ("embed", "vocab")
*_norm.scale / .bias            ("embed",)
q/k/v_proj.kernel               ("embed", "heads")
o_proj.kernel                   ("heads", "embed")
gate/up_proj, fc1 .kernel       ("embed", "mlp")
down_proj, fc2 .kernel          ("mlp", "embed")
LoRA a / b                      ("embed"|"heads"|"mlp", "rank") / ("rank", ...)
prefix keys / values            ("prefix", "kv_heads", "head_dim")
==============================  ======================================

Leaves under ``"layers"`` get a leading ``"layers"`` axis. :func:`shardings` maps them onto a mesh
with ``flax.linen.logical_to_mesh_sharding`` and a rule list (default: FSDP over the hidden
dimension).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec

PyTree = Any

_IN_OUT = {
    "q_proj": ("embed", "heads"),
    "k_proj": ("embed", "heads"),
    "v_proj": ("embed", "heads"),
    "o_proj": ("heads", "embed"),
    "gate_proj": ("embed", "mlp"),
    "up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
    "fc1": ("embed", "mlp"),
    "fc2": ("mlp", "embed"),
}

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("layers", None),
    ("vocab", None),
    ("positions", None),
    ("embed", "fsdp"),
    ("heads", None),
    ("kv_heads", None),
    ("head_dim", None),
    ("mlp", None),
    ("rank", None),
    ("prefix", None),
)


def _names(path: Sequence[Any]) -> list[str]:
    return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def leaf_axes(path: Sequence[Any], ndim: int) -> tuple[str | None, ...]:
    """Logical axes of one leaf from its key path."""
    names = _names(path)
    stacked = bool(names) and names[0] == "layers"
    core = ndim - (1 if stacked else 0)
    last = names[-1] if names else ""
    module = names[-2] if len(names) >= 2 else ""
    axes: tuple[str | None, ...]
    if module == "embed":
        axes = ("vocab", "embed")
    elif module == "pos_embed":
        axes = ("positions", "embed")
    elif module == "lm_head":
        axes = ("embed", "vocab")
    elif module in _IN_OUT and last == "kernel":
        axes = _IN_OUT[module]
    elif module in _IN_OUT and last == "bias":
        axes = (_IN_OUT[module][1],)
    elif module in _IN_OUT and last in ("a", "b"):  # LoRA factors
        i, o = _IN_OUT[module]
        axes = (i, "rank") if last == "a" else ("rank", o)
    elif last in ("keys", "values"):
        axes = ("prefix", "kv_heads", "head_dim")
    elif last in ("scale", "bias"):
        axes = ("embed",)
    else:
        axes = (None,) * core
    if len(axes) != core:
        axes = (None,) * core
    return (("layers",) if stacked else ()) + axes


def logical_axes(params: PyTree) -> PyTree:
    """A pytree of ``PartitionSpec`` of logical axis names, shaped like ``params``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: PartitionSpec(*leaf_axes(p, x.ndim)), params)


def shardings(params: PyTree, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> PyTree:
    """``NamedSharding``s for ``params`` on ``mesh`` from the logical axes and ``rules``."""
    import flax.linen as nn

    specs = logical_axes(params)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))
