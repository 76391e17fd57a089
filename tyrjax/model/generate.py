"""Greedy and sampled decoding with a KV cache, on dense and compact (pruned) models."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.layers import KVCache
from tyrjax.model.decoder import Params, embed, logits_from_hidden, run_layers_compact, to_compact


def empty_caches(cfg: ModelConfig, batch: int, max_len: int, dtype) -> list[KVCache]:
    """Per-layer caches sized by each layer's own KV width."""
    return [
        KVCache(
            jnp.zeros((batch, max_len, cfg.kv_heads(i), cfg.head_dim), dtype),
            jnp.zeros((batch, max_len, cfg.kv_heads(i), cfg.head_dim), dtype),
            jnp.array(0, jnp.int32),
        )
        for i in range(cfg.n_layers)
    ]


@partial(jax.jit, static_argnums=1, donate_argnums=3)
def decode_step(params: Params, cfg: ModelConfig, tokens: jax.Array, caches: list[KVCache]):
    """Logits of the last position after feeding `tokens` (B, T) at the cache's position."""
    start = caches[0].length
    positions = start + jnp.arange(tokens.shape[1])
    x, caches = run_layers_compact(params["layers"], cfg, embed(params, tokens), positions, caches)
    return logits_from_hidden(params, cfg, x[:, -1:])[:, 0], caches


def sample_next(key: jax.Array, logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Greedy when temperature is 0; else temperature, top-k and nucleus (top-p) sampling."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        drop_sorted = cum - jax.nn.softmax(sorted_logits, axis=-1) > top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def generate(
    params: Params,
    cfg: ModelConfig,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Continue `prompt` (B, T0) by up to `max_new_tokens`; returns (B, T0 + n) token ids.

    Rows stop together at `eos_id` once every row has produced it. `progress` shows a bar of
    the tokens decoded (stderr)."""
    prompt = np.atleast_2d(np.asarray(prompt, np.int32))
    if prompt.shape[1] == 0:
        raise TyrjaxError("generate: the prompt is empty; give at least one token")
    total = prompt.shape[1] + max_new_tokens
    room = max(cfg.max_position_embeddings - prompt.shape[1], 0)
    if total > cfg.max_position_embeddings:
        raise TyrjaxError(
            f"generate: the prompt's {prompt.shape[1]} tokens and {max_new_tokens} new tokens exceed the model's "
            f"{cfg.max_position_embeddings} positions; ask for at most {room} new tokens (--new-tokens {room}) "
            "or give a shorter prompt"
        )
    params, cfg = to_compact(params, cfg)
    dtype = params["embed"].dtype
    cache_len = -(-total // 64) * 64  # fewer distinct cache shapes, fewer compilations
    caches = empty_caches(cfg, prompt.shape[0], cache_len, dtype)
    key = jax.random.PRNGKey(seed)
    logits, caches = decode_step(params, cfg, jnp.asarray(prompt), caches)
    out, finished = [prompt], np.zeros(prompt.shape[0], bool)
    for _ in tqdm(range(max_new_tokens), desc="generate", unit="token", disable=not progress, leave=False):
        key, sub = jax.random.split(key)
        nxt = np.asarray(sample_next(sub, logits, temperature, top_k, top_p), np.int32)
        out.append(nxt[:, None])
        if eos_id is not None:
            finished |= nxt == eos_id
            if finished.all():
                break
        logits, caches = decode_step(params, cfg, jnp.asarray(nxt[:, None]), caches)
    return np.concatenate(out, axis=1)
