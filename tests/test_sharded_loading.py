"""Sharded loading of Hugging Face checkpoints (`zojax.models.sharded_loading`): each process reads
only its slices of the safetensors, and the result is bitwise the plain load placed on the mesh.

On 8 forced host devices (one process) and on two loopback processes (gloo, 4 devices each, one
``fsdp=8`` mesh across both; the worker of ``experiments/sharded_load_rss.py``). Everything here is
exact: slicing commutes with the transpose, the vocabulary cut and the elementwise cast, so the
tests compare bytes and count bytes read.
"""

from __future__ import annotations

import collections
import importlib.util
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import zojax.models as zm
from tests.test_golden import make_config, write_data
from tests.test_models import LLAMA_CFG, OPT_CFG, random_hf_weights, write_checkpoint, write_opt_tokenizer
from zojax.models import hf, loading, sharded_loading
from zojax.train.job import build_job
from zojax.train.placement import Placement, parse_mesh

MESH = "data=2,fsdp=4"
ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {  # name -> (config, embedding rows beyond the vocabulary, safetensors files)
    "llama": (LLAMA_CFG, 6, 3),  # a padded embedding (cut to the vocabulary), sharded index
    "llama_untied": (dict(LLAMA_CFG, tie_word_embeddings=False), 0, 1),
    "opt": (dict(OPT_CFG, vocab_size=262), 0, 1),
}


def _write(folder: Path, name: str) -> tuple[Path, dict[str, np.ndarray]]:
    cfg, pad, files = CHECKPOINTS[name]
    weights = random_hf_weights(cfg, seed=3)
    if pad:
        key = "model.embed_tokens.weight"
        extra = np.full((pad, cfg["hidden_size"]), 7.0, np.float32)  # rows that must not be loaded
        weights[key] = np.concatenate([weights[key], extra])
    write_checkpoint(str(folder), cfg, weights, shards=files)
    return folder, weights


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp(request.param), request.param)[0]


def _bytes(x: Any) -> np.ndarray:
    return np.asarray(x).view(np.uint8)


def _load(folder: Path, mesh: str, dtype: str) -> tuple[dict, dict, list[tuple[str, tuple, int]]]:
    """(sharded params, the plain load placed by Placement, the sharded load's reads)."""
    placement = Placement(parse_mesh(mesh))
    config = hf.folder_config(str(folder))
    reads: list[tuple[str, tuple, int]] = []
    targets = placement.param_shardings(sharded_loading.param_shapes(config, dtype))
    sharded = sharded_loading.load_sharded(
        config, loading.open_safetensors(str(folder)), targets, dtype, on_read=lambda *r: reads.append(r)
    )
    placed = placement.params(zm.load_model(str(folder), dtype=dtype)[1])
    return sharded, placed, reads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sharded_load_equals_plain_load_bitwise(checkpoint: Path, dtype: str) -> None:
    sharded, placed, reads = _load(checkpoint, MESH, dtype)
    assert jax.tree.structure(sharded) == jax.tree.structure(placed)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(placed), strict=True):
        assert a.sharding == b.sharding and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(_bytes(a), _bytes(b))
    q = sharded["layers"]["q_proj"]["kernel"]  # [L, embed, heads]: embed over fsdp, data replicates
    assert q.sharding.spec == P(None, "fsdp", None) and q.sharding.mesh.shape == {"data": 2, "fsdp": 4}
    assert {s.data.shape for s in q.addressable_shards} == {(2, 64 // 4, 64)}
    assert sharded["embed"]["embedding"].sharding.spec == P(None, "fsdp")
    assert sharded["embed"]["embedding"].shape[0] == checkpoint_vocab(checkpoint)
    # each distinct shard is read once (not once per data row, never the whole tensor per device)
    per_leaf = collections.defaultdict(list)
    for path, index, nbytes in reads:
        per_leaf[path].append((index, nbytes))
    leaves = dict(zip(_paths(placed), jax.tree.leaves(placed), strict=True))
    assert set(per_leaf) == set(leaves)
    for path, x in leaves.items():  # 4 fsdp slices, or one read of a replicated leaf (OPT: biases of
        # q/k/v/fc1, whose dimension is not the hidden one)
        slices = 4 if "fsdp" in x.sharding.spec else 1
        assert len(per_leaf[path]) == slices and {n for _, n in per_leaf[path]} == {x.nbytes // slices}, path
    assert sum("fsdp" in x.sharding.spec for x in leaves.values()) > len(leaves) // 2
    assert sum(n for *_, n in reads) == sum(x.nbytes for x in leaves.values())


def checkpoint_vocab(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def _paths(tree: Any) -> list[str]:
    return [".".join(str(p.key) for p in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_replicated_leaves_are_read_once_and_the_vocabulary_is_cut(tmp_path: Path) -> None:
    """Hidden 60 does not divide over fsdp=8: every leaf is replicated, read once as a whole; the
    padded embedding's full-slice index must stop at the vocabulary."""
    cfg = dict(LLAMA_CFG, hidden_size=60, num_attention_heads=4, num_key_value_heads=2)
    CHECKPOINTS["llama60"] = (cfg, 6, 1)
    try:
        folder, _ = _write(tmp_path, "llama60")
    finally:
        del CHECKPOINTS["llama60"]
    sharded, placed, reads = _load(folder, "fsdp=8", "float32")
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(placed), strict=True):
        assert a.sharding.spec == P() and a.sharding == b.sharding
        assert np.array_equal(_bytes(a), _bytes(b))
    assert sorted(path for path, *_ in reads) == sorted(_paths(placed))  # one read per leaf
    assert sum(n for *_, n in reads) == sum(x.nbytes for x in jax.tree.leaves(placed))
    embed = np.asarray(sharded["embed"]["embedding"])
    assert embed.shape == (cfg["vocab_size"], 60) and not np.any(embed == 7.0)


def test_errors_name_the_tensor_before_anything_is_read(tmp_path: Path) -> None:
    weights = random_hf_weights(LLAMA_CFG)
    placement = Placement(parse_mesh(MESH))
    config = zm.config_from_hf(LLAMA_CFG)
    targets = placement.param_shardings(sharded_loading.param_shapes(config))
    reads: list[Any] = []

    def load(folder: Path) -> Any:
        getters = loading.open_safetensors(str(folder))
        return sharded_loading.load_sharded(config, getters, targets, on_read=lambda *r: reads.append(r))

    broken = dict(weights, **{"model.layers.1.mlp.up_proj.weight": np.zeros((95, 64), np.float32)})
    write_checkpoint(str(tmp_path / "shape"), LLAMA_CFG, broken)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(96, 64\).*\(95, 64\)"):
        load(tmp_path / "shape")
    missing = {k: v for k, v in weights.items() if "layers.1.mlp.gate_proj" not in k}
    write_checkpoint(str(tmp_path / "missing"), LLAMA_CFG, missing)
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.gate_proj\.weight"):
        load(tmp_path / "missing")
    assert reads == []


def test_memory_check_counts_this_process_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = _write(tmp_path, "llama")
    placement = Placement(parse_mesh(MESH))
    config = hf.folder_config(str(folder))
    shapes = sharded_loading.param_shapes(config)
    total, largest = sharded_loading.local_bytes(shapes, placement.param_shardings(shapes))
    full = config.num_params * 4
    assert total == 2 * full  # two data rows of 8 CPU devices: each holds a quarter of everything
    assert largest == 2 * max(x.size * 4 for x in jax.tree.leaves(shapes))  # the largest leaf, both data rows
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: int(1.5 * full))
    zm.load_model(str(folder))  # the plain load fits
    with pytest.raises(MemoryError, match="this process's parameter shards need"):
        zm.load_model(str(folder), shardings=placement.param_shardings)


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_trainer_loads_hf_folders_onto_the_mesh(tuning: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_job`` with ``--mesh`` reads an HF folder through the sharded loader (trained and frozen
    parameters bitwise the plain load's, with the Placement's shardings); without a mesh it does not."""
    folder, _ = _write(tmp_path / "opt", "opt")
    write_opt_tokenizer(str(folder))
    calls = []
    real = sharded_loading.load_sharded
    monkeypatch.setattr(sharded_loading, "load_sharded", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = write_data(tmp_path / "data")
    over = {"model__name": str(folder), "model__tuning": tuning}
    if tuning == "lora":
        over.update(optim__lr=None, optim__eps=None)
    job, params = build_job(make_config(data, tmp_path / "run", run__mesh=MESH, **over).resolve())
    assert calls == [1]
    _, plain = zm.load_model(str(folder))
    got = params if tuning == "full" else job.tuned.frozen  # LoRA: the base model is frozen
    shardings = job.placement.param_shardings(got)
    for a, b, s in zip(jax.tree.leaves(got), jax.tree.leaves(plain), jax.tree.leaves(shardings), strict=True):
        assert a.sharding == s and np.array_equal(_bytes(a), _bytes(b))
    build_job(make_config(data, tmp_path / "run1", run__mesh="none", **over).resolve())
    assert calls == [1]


def _experiment() -> Any:
    spec = importlib.util.spec_from_file_location("sharded_load_rss", ROOT / "experiments" / "sharded_load_rss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_each_read_only_their_half(tmp_path: Path) -> None:
    """Two loopback processes, 4 devices each, one ``data=1,fsdp=8`` mesh: each reads exactly half
    of every leaf (all leaves have a hidden dimension), and their shards together are the plain load."""
    folder, _ = _write(tmp_path / "ckpt", "llama_untied")
    rows = _experiment().run_workers(
        str(folder), "sharded", 2, 4, "data=1,fsdp=8", "float32",
        str(tmp_path / "r.json"), dump=str(tmp_path / "shards.npz"), timeout=240,
    )  # fmt: skip
    _, plain = zm.load_model(str(folder))
    leaves = dict(zip(_paths(plain), jax.tree.leaves(plain), strict=True))
    total = sum(x.nbytes for x in leaves.values())
    assert [r["process"] for r in rows] == [0, 1] and all(r["processes"] == 2 for r in rows)
    for r in rows:
        assert r["bytes_read_mib"] * 2**20 == pytest.approx(total / 2, abs=0.5)
        assert r["local_shard_mib"] * 2**20 == pytest.approx(total / 2, abs=0.5)
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for p in (0, 1):
        with np.load(tmp_path / f"shards.p{p}.npz") as shards:
            for key in shards.files:
                path, index = key.split("|")
                bounds = [tuple(int(v) for v in b.split(":")) for b in index.split(";")]
                want = np.ascontiguousarray(np.asarray(leaves[path])[tuple(slice(a, b) for a, b in bounds)])
                assert np.array_equal(shards[key], _bytes(want)), key
                seen[path].append(want.size)
    for path, x in leaves.items():  # 8 disjoint fsdp slices, 4 per process, cover each leaf
        assert len(seen[path]) == 8 and sum(seen[path]) == x.size, path
