"""A tiny stand-in model for the task tests (no real LM), and the byte tokenizer they use.

* :data:`TOK`: :class:`zojax.train.data.ByteTokenizer` (ids 0..255, BOS 256, PAD 257, EOS 258).
* :func:`tiny_logits_fn`: embedding + position embedding (positions counted from the first real
  token, so left padding does not change the output) + causal masked-mean mixing + MLP head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zojax.train.data import ByteTokenizer

TOK = ByteTokenizer()
VOCAB = TOK.vocab_size


def tiny_params(seed: int = 0, d: int = 16, max_pos: int = 4096) -> dict[str, jax.Array]:
    """Random parameters of the tiny model."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "emb": jax.random.normal(k[0], (VOCAB, d)),
        "pos": 0.1 * jax.random.normal(k[1], (max_pos, d)),
        "w1": jax.random.normal(k[2], (d, d)) / np.sqrt(d),
        "out": jax.random.normal(k[3], (d, VOCAB)),
    }


def tiny_logits_fn(params: dict[str, jax.Array], input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """float32[B, T, V] logits of a tiny causal model that supports left padding."""
    m = attention_mask.astype(jnp.float32)
    pos = jnp.clip(jnp.cumsum(attention_mask, axis=-1) - 1, 0, None)
    x = (params["emb"][input_ids] + params["pos"][pos]) * m[..., None]
    h = jnp.cumsum(x, axis=1) / jnp.maximum(jnp.cumsum(m, axis=1), 1.0)[..., None]
    return jnp.tanh(h @ params["w1"]) @ params["out"]


def numpy_logits(params: dict[str, jax.Array], ids: list[int]) -> np.ndarray:
    """Independent float64 numpy implementation of the tiny model on one unpadded sequence."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = p["emb"][ids] + p["pos"][np.arange(len(ids))]
    h = np.cumsum(x, axis=0) / np.arange(1, len(ids) + 1)[:, None]
    return np.tanh(h @ p["w1"]) @ p["out"]


def brute_force_option_score(params: dict[str, jax.Array], ids: list[int], option_len: int) -> float:
    """Reference: one unpadded sequence, numpy log-softmax, mean log-prob of the last
    ``option_len`` tokens."""
    logits = numpy_logits(params, ids)
    mx = logits.max(-1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(-1, keepdims=True))
    lps = [logp[t - 1, ids[t]] for t in range(len(ids) - option_len, len(ids))]
    return float(np.mean(lps))
