"""Per-layer capture for the layer-sequential pipeline: inputs of each linear layer, any form.

`tyrjax.calibration` computes a whole sub-block's inputs at once with the dense layout's
`kv_map(0)`. The sequential pipeline needs them one linear layer at a time (q/k/v are pruned
before the o_proj input is recomputed from them) and for compact models whose layers each
have their own query→KV head map, so the attention here takes `kv_map` explicitly.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from tyrjax.calibration import InputStats, cross_gram, map_chunks, stats_of
from tyrjax.config import ModelConfig
from tyrjax.layers import attention_heads, mlp_hidden, rms_norm, rope_tables
from tyrjax.model import Params
from tyrjax.sparse import Grams

# Windows per attention call: bounds the (windows, heads, T, T) score tensor.
WINDOW_CHUNK = 8


@partial(jax.jit, static_argnums=1)
def attention_normed(p: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Input of q/k/v: the attention RMSNorm of the block input x (fp32 stream)."""
    return rms_norm(x, p["attn_norm"], cfg.rms_norm_eps).astype(jnp.float32)


@partial(jax.jit, static_argnums=1)
def mlp_normed(p: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Input of gate/up: the MLP RMSNorm of the attention sub-block's output."""
    return rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps).astype(jnp.float32)


@partial(jax.jit, static_argnums=(1, 3))
def _heads(p: Params, cfg: ModelConfig, normed: jax.Array, kv_map: tuple[int, ...]) -> jax.Array:
    cos, sin = rope_tables(cfg, jnp.arange(normed.shape[1]))
    heads, _ = attention_heads(p, cfg, normed, cos, sin, kv_map)
    return heads.astype(jnp.float32)


def attention_heads_at(
    p: Params, cfg: ModelConfig, normed: jax.Array, kv_map: tuple[int, ...], chunk: int = WINDOW_CHUNK
) -> jax.Array:
    """Input of o_proj: per-head attention outputs of normed x under this layer's q/k/v and kv_map."""
    return map_chunks(lambda c: _heads(p, cfg, c, kv_map), normed, chunk)


@jax.jit
def mlp_hidden_of(p: Params, normed: jax.Array) -> jax.Array:
    """Input of down_proj: the SwiGLU hidden of this layer's gate/up."""
    return mlp_hidden(p, normed).astype(jnp.float32)


def objective_grams(a_s: jax.Array, a_d: jax.Array | None) -> tuple[InputStats, Grams]:
    """Statistics of the pruned stream `a_s` and the Grams of `||X_d W_d − X_s W||²`.

    Without the dense stream `a_d` the target is `X_s W_d` (all three Grams equal `X_sᵀX_s`),
    which is the objective one-shot pruners minimise.
    """
    stats = stats_of(a_s)
    if a_d is None:
        return stats, Grams(stats.gram, stats.gram, stats.gram, stats.n_tokens)
    return stats, Grams(stats.gram, cross_gram(a_s, a_d), stats_of(a_d).gram, stats.n_tokens)
