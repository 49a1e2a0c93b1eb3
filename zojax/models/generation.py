r"""Greedy decoding with a KV cache: jitted prefill, jitted decode chunks, MeZO's stop rules.

:func:`generate_batch` left-pads the prompts to a power-of-two bucket, runs :func:`_prefill` once and
:func:`_decode` in chunks of ``chunk`` steps until every row has stopped; :func:`generate` is one
row of it. :meth:`zojax.models.Model.generate` and :meth:`~zojax.models.Model.generate_batch` call them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax.models.config import ModelConfig
from zojax.models.forward import _block, decoder, embed_tokens, final_norm, project, resolve_dtype
from zojax.models.rows import LOCAL, Rows, padded_rows
from zojax.specs import STOP_RULES

if TYPE_CHECKING:
    from zojax.models.model import Model

Array = jax.Array
PyTree = Any


def generate(
    model: Model,
    params: PyTree,
    prompt: str | Sequence[int] | np.ndarray | Array,
    *,
    max_new_tokens: int = 50,
    stop_strings: Sequence[str] = ("\n",),
    stop_ids: Sequence[int] | None = None,
    return_text: bool | None = None,
    chunk: int = 16,
    prefix_kv: tuple[Array, Array] | None = None,
    stop_rule: str = "text",
) -> list[int] | str:
    r"""Greedy decoding with a KV cache (jitted prefill + jitted decode chunks): one prompt,
    :func:`generate_batch` of one row.

    Decoding stops at ``max_new_tokens``, at an end-of-sequence / ``stop_ids`` token (not
    returned), or by ``stop_rule``:

    * ``"text"`` (default): once the decoded continuation contains one of ``stop_strings``; the
      result is cut right after the token that completed the stop string, so a merged token
      such as ``".\n"`` or ``"\n\n"`` stops too.
    * ``"mezo"``: MeZO's ``eos_token_id=[tokenizer.encode("\n", add_special_tokens=False)[-1],
      eos]``: only the exact token ids :func:`stop_token_ids` of ``stop_strings`` (and EOS)
      stop, not returned; a merged ``".\n"`` does not stop, and the text is not cut.

    Tokens are produced in jitted chunks of ``chunk`` steps; stops are checked between chunks.

    Args:
      params: the parameters.
      prompt: a string (needs the tokenizer; encoded with its default BOS convention) or
        token ids.
      max_new_tokens: most tokens to generate.
      stop_strings: strings that end generation (needs the tokenizer; ignored without one for
        ``stop_rule="text"``).
      stop_ids: token ids that end generation (default: the tokenizer's / config's EOS).
      return_text: return the decoded continuation (``"text"``: cut before the stop string);
        default: True when ``prompt`` is a string.
      chunk: decode steps per jitted call.
      prefix_kv: prefix tuning's virtual tokens, ``(keys, values)`` of shape ``[L, P, Hkv, D]``
        (keys post-RoPE): they occupy cache slots ``0..P−1`` (always visible) while the prompt
        keeps positions ``0..T−1`` and the generated tokens continue at ``T, T+1, …``, exactly
        as in the prefix model's forward (:meth:`zojax.models.Adapted.logits`) on the prompt
        plus the tokens generated so far.
      stop_rule: ``"text"`` or ``"mezo"`` (see above).

    Returns:
      the new token ids, or the decoded text.
    """
    if isinstance(prompt, str):
        ids = model.encode(prompt)
        return_text = True if return_text is None else return_text
    else:
        ids = [int(i) for i in np.asarray(prompt).reshape(-1)]
    (result,) = generate_batch(
        model,
        params,
        [ids],
        max_new_tokens=max_new_tokens,
        stop_strings=stop_strings,
        stop_ids=stop_ids,
        chunk=chunk,
        prefix_kv=prefix_kv,
        stop_rule=stop_rule,
    )
    if return_text:
        if max_new_tokens <= 0:
            return ""
        if model.tokenizer is None:
            raise ValueError("return_text: this model has no tokenizer")
        text = model.tokenizer.decode(result)
        for s in stop_strings if stop_rule == "text" else ():
            if s in text:
                text = text[: text.index(s)]
        return text
    return result


def generate_batch(
    model: Model,
    params: PyTree,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 50,
    stop_strings: Sequence[str] = ("\n",),
    stop_ids: Sequence[int] | None = None,
    chunk: int = 16,
    prefix_kv: tuple[Array, Array] | None = None,
    stop_rule: str = "text",
    rows: int | None = None,
    placement: Rows = LOCAL,
) -> list[list[int]]:
    r"""Greedy decoding of several prompts at once (:func:`generate`'s rules, row by row).

    The prompts are left-padded to one power-of-two length ``T ≥ 32`` and the batch to
    ``B' = ⌈max(rows, len(prompts)) / D⌉·D`` rows (copies of the first prompt, dropped), ``D =
    placement.data_size``; every row keeps its own positions ``0..T_b−1`` and continues at
    ``T_b, T_b+1, …``, so each row's tokens are those of :func:`generate` on that prompt alone.
    The rows are split over the devices by ``placement`` (:mod:`zojax.models.rows`) and each
    chunk's tokens fetched whole on every process; decoding ends once every prompt has stopped.

    Args:
      params: the parameters (on the devices as ``placement`` expects, e.g. FSDP-sharded).
      prompts: token ids, one non-empty sequence per prompt.
      max_new_tokens: most tokens to generate per prompt.
      stop_strings: see :func:`generate`.
      stop_ids: see :func:`generate`.
      chunk: decode steps per jitted call.
      prefix_kv: see :func:`generate` (shared by every row).
      stop_rule: ``"text"`` or ``"mezo"`` (see :func:`generate`).
      rows: pad the batch to at least this many rows (a fixed shape compiles once).
      placement: where the rows live (default: one device).

    Returns:
      the new token ids of each prompt (no stop token; ``"text"``: up to the token that
      completed a stop string).
    """
    if stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule: expected one of {STOP_RULES}, got {stop_rule!r}")
    tok = model.tokenizer
    prompts = [[int(i) for i in np.asarray(p).reshape(-1)] for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("prompt: at least one token is needed")
    if stop_ids is None:
        stop_ids = [tok.eos_id] if tok is not None and tok.eos_id is not None else [model.config.eos_id]
    if stop_rule == "mezo":
        if tok is None and stop_strings:
            raise ValueError("stop_rule='mezo': needs the tokenizer to encode stop_strings")
        stop_ids = [*stop_ids, *stop_token_ids(tok, stop_strings)]
        stop_strings = ()
    stop_set = {int(s) for s in stop_ids}
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    n = len(prompts)
    b = padded_rows(max(n, rows or 0), placement.data_size)
    lengths = [len(p) for p in prompts] + [len(prompts[0])] * (b - n)
    num_prefix = 0 if prefix_kv is None else int(prefix_kv[0].shape[1])
    # Power-of-two prompt buckets: each distinct length compiles a prefill and a decode
    # program, and SQuAD-like prompts would otherwise hit a dozen shapes (~20 s each on CPU).
    tp = max(32, 1 << (max(lengths) - 1).bit_length())
    steps = -(-max(max_new_tokens - 1, 0) // chunk) * chunk
    cache_len = num_prefix + tp + steps
    prompt_arr = np.zeros((b, tp), np.int32)
    mask = np.zeros((b, tp), np.int32)
    for r, p in enumerate(prompts + [prompts[0]] * (b - n)):
        prompt_arr[r, tp - len(p) :] = p
        mask[r, tp - len(p) :] = 1
    placed = placement.batch(
        {"ids": prompt_arr, "mask": mask, "pos": np.asarray(lengths, np.int32)}  # prefix slots take no positions
    )
    token, cache, valid = _prefill(
        model.config, model.dtype, params, placed["ids"], placed["mask"], cache_len, prefix_kv
    )
    outs = [[int(t)] for t in placement.fetch(token)[:n]]
    # cache layout: [prefix slots | left-padded prompts | generated tokens]
    index = np.int32(num_prefix + tp)
    pos = placed["pos"]

    def finished(out: list[int]) -> tuple[bool, list[int]]:
        for j, t in enumerate(out):
            if t in stop_set:
                return True, out[:j]
        if tok is not None and stop_strings:
            text = tok.decode(out)
            if any(s in text for s in stop_strings):
                for j in range(1, len(out) + 1):
                    if any(s in tok.decode(out[:j]) for s in stop_strings):
                        return True, out[:j]
        return len(out) >= max_new_tokens, out[:max_new_tokens]

    results: list[list[int] | None] = [None] * n

    def check() -> bool:
        for r in range(n):
            if results[r] is None:
                done, result = finished(outs[r])
                if done:
                    results[r] = result
        return all(r is not None for r in results)

    while not check():
        toks, cache, valid, token, index, pos = _decode(
            model.config, model.dtype, chunk, params, cache, valid, token, index, pos
        )
        toks = placement.fetch(toks)  # [chunk, B']
        for r in range(n):
            outs[r].extend(int(t) for t in toks[:, r])
    return [list(r) for r in results if r is not None]


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> list[int]:
    r"""MeZO's stop tokens for ``stop_strings``: the last id of each string encoded without BOS,
    ``tokenizer.encode(s, add_special_tokens=False)[-1]`` (for ``"\n"`` the newline token id)."""
    out = []
    for s in stop_strings:
        ids = tokenizer.encode(s, add_bos=False)
        if not ids:
            raise ValueError(f"stop_strings: {s!r} encodes to no tokens")
        out.append(int(ids[-1]))
    return out


def _prefix_layer(layer: PyTree, prefix: tuple[Array, Array], li: Array) -> tuple[PyTree, Any]:
    """``layer_fn`` that hands layer ``l``'s prefix keys/values ``[P, Hkv, D]`` to the block."""
    del li
    return layer, prefix


@functools.partial(jax.jit, static_argnames=("config", "dtype", "cache_len"))
def _prefill(
    config: ModelConfig,
    dtype: str,
    params: PyTree,
    ids: Array,
    mask: Array,
    cache_len: int,
    prefix_kv: tuple[Array, Array] | None = None,
) -> tuple[Array, tuple[Array, Array], Array]:
    """The prompt's forward: first greedy token, the KV cache ``[L, B, cache_len, Hkv, D]`` and
    the key validity ``[B, cache_len]``.

    With ``prefix_kv`` (``[L, P, Hkv, D]`` each) the forward is the prefix model's (prompt
    positions ``0..T−1``, prefix slots always visible) and the cache starts with the ``P`` prefix
    slots, valid for every row, followed by the prompt's keys/values.
    """
    b = ids.shape[0]
    if prefix_kv is None:
        h, (k, v) = decoder(config, dtype, params, ids, mask, return_kv=True)
    else:
        num_prefix = prefix_kv[0].shape[1]
        h, (k, v) = decoder(
            config,
            dtype,
            params,
            ids,
            mask,
            extra_layers=prefix_kv,
            layer_fn=_prefix_layer,
            num_prefix=num_prefix,
            return_kv=True,
        )

        def lead(p: Array, x: Array) -> Array:
            p = jnp.broadcast_to(p[:, None].astype(x.dtype), (p.shape[0], b, *p.shape[1:]))
            return jnp.concatenate([p, x], axis=2)

        k, v = lead(prefix_kv[0], k), lead(prefix_kv[1], v)
        mask = jnp.concatenate([jnp.ones((b, num_prefix), mask.dtype), mask], axis=1)
    logits = project(config, params, h[:, -1])
    filled = k.shape[2]
    pad = ((0, 0), (0, 0), (0, cache_len - filled), (0, 0), (0, 0))
    valid = jnp.pad(mask, ((0, 0), (0, cache_len - filled)))
    return jnp.argmax(logits, -1).astype(jnp.int32), (jnp.pad(k, pad), jnp.pad(v, pad)), valid


@functools.partial(jax.jit, static_argnames=("config", "dtype", "steps"), donate_argnums=(4, 5))
def _decode(
    config: ModelConfig,
    dtype: str,
    steps: int,
    params: PyTree,
    cache: tuple[Array, Array],
    valid: Array,
    token: Array,
    index: Array,
    pos: Array,
) -> tuple[Array, tuple[Array, Array], Array, Array, Array, Array]:
    """``steps`` greedy decode steps: feed ``token`` at cache slot ``index`` / position ``pos``."""
    dt = resolve_dtype(dtype)
    block = _block(config, dt)

    def step(carry: Any, _: None) -> tuple[Any, Array]:
        cache, valid, token, index, pos = carry
        b = token.shape[0]
        valid = jax.lax.dynamic_update_slice(valid, jnp.ones((b, 1), valid.dtype), (0, index))
        positions = pos[:, None]
        x = embed_tokens(config, params, token[:, None], positions, None).astype(dt)

        def body(h: Array, xs: Any) -> tuple[Array, Any]:
            layer, ck, cv = xs
            h, new = block.apply({"params": layer}, h, positions, valid, None, (ck, cv), index)
            return h, new

        x, (ck, cv) = jax.lax.scan(body, x, (params["layers"], cache[0], cache[1]))
        logits = project(config, params, final_norm(config, params, x, None))[:, 0]
        nxt = jnp.argmax(logits, -1).astype(jnp.int32)
        return ((ck, cv), valid, nxt, index + 1, pos + 1), nxt

    (cache, valid, token, index, pos), toks = jax.lax.scan(step, (cache, valid, token, index, pos), None, length=steps)
    return toks, cache, valid, token, index, pos
