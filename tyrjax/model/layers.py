"""Pure layer functions of a Llama-family block.

Every function takes one layer's parameter dict and arrays; masks are explicit arguments
(`head_mask[n_heads]` over query heads, `ffn_mask[d_ff]` over MLP neurons), so `jax.vmap`
over a leading candidate axis of masks evaluates many pruned variants at once.

Weights use the `y = x @ W` layout: `wq (d, H*hd)`, `wo (H*hd, d)`, `w_down (d_ff, d)`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tyrjax.model.config import ModelConfig


class KVCache(NamedTuple):
    """One layer's keys and values for positions [0, length), preallocated to `k.shape[1]`."""

    k: jax.Array  # (B, S, kv_heads, head_dim)
    v: jax.Array
    length: jax.Array  # () int32: positions already written


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in fp32, cast back to the input dtype before the scale (as HF)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies, with linear or llama3 scaling when configured."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    scaling = dict(cfg.rope_scaling or ())
    if cfg.rope_type == "linear":
        inv = inv / scaling["factor"]
    elif cfg.rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape (..., T, head_dim) for integer `positions` (..., T)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(cfg))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, H, hd) by the HF rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def _project(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    y = x @ w
    return y if b is None else y + b


def attention_qkv(
    p: dict, cfg: ModelConfig, x: jax.Array, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k (rotated) and v of normed `x` (B, T, d), each (B, T, heads, hd)."""
    b, t, _ = x.shape
    hd = cfg.head_dim
    q = _project(x, p["wq"], p.get("bq")).reshape(b, t, -1, hd)
    k = _project(x, p["wk"], p.get("bk")).reshape(b, t, -1, hd)
    v = _project(x, p["wv"], p.get("bv")).reshape(b, t, -1, hd)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_map: tuple[int, ...], q_pos: jax.Array, k_pos: jax.Array
) -> jax.Array:
    """Per-head outputs (B, Tq, H*hd) of queries at positions `q_pos` over keys and values at
    `k_pos` (B, Tk, KV heads, hd), each key seen by the queries at or after it; `kv_map[h]` is
    the KV head of query head h."""
    b, t, _, hd = q.shape
    index = jnp.asarray(kv_map, dtype=jnp.int32)
    k_per_q, v_per_q = k[:, :, index], v[:, :, index]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k_per_q, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(hd)
    causal = k_pos[None, :] <= q_pos[:, None]
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v_per_q)
    return out.reshape(b, t, -1)


def attention_heads(
    p: dict,
    cfg: ModelConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    kv_map: tuple[int, ...],
    cache: KVCache | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Causal attention of normed `x` (B, T, d): the per-head outputs (B, T, H*hd), i.e.
    the input of o_proj, and the updated cache. `kv_map[h]` is the KV head of query head h."""
    t = x.shape[1]
    q, k, v = attention_qkv(p, cfg, x, cos, sin)
    if cache is None:
        q_pos = jnp.arange(t)
        k_pos = q_pos
    else:
        k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, cache.length, 0, 0))
        v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, cache.length, 0, 0))
        q_pos = cache.length + jnp.arange(t)
        k_pos = jnp.arange(k.shape[1])
        cache = KVCache(k, v, cache.length + t)
    return causal_attention(q, k, v, kv_map, q_pos, k_pos), cache


def attention_output(p: dict, heads: jax.Array, head_mask: jax.Array | None, head_dim: int) -> jax.Array:
    """o_proj of the per-head outputs, with masked heads contributing nothing."""
    if head_mask is not None:
        b, t, _ = heads.shape
        heads = (heads.reshape(b, t, -1, head_dim) * head_mask[:, None].astype(heads.dtype)).reshape(b, t, -1)
    return _project(heads, p["wo"], p.get("bo"))


def mlp_hidden(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU activations (B, T, d_ff): the input of down_proj."""
    return jax.nn.silu(x @ p["w_gate"]) * (x @ p["w_up"])


def mlp_output(p: dict, hidden: jax.Array, ffn_mask: jax.Array | None) -> jax.Array:
    if ffn_mask is not None:
        hidden = hidden * ffn_mask.astype(hidden.dtype)
    return _project(hidden, p["w_down"], p.get("b_down"))


def attention_block(
    p: dict,
    cfg: ModelConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    kv_map: tuple[int, ...],
    head_mask: jax.Array | None = None,
    cache: KVCache | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Residual attention sub-block."""
    heads, cache = attention_heads(p, cfg, rms_norm(x, p["attn_norm"], cfg.rms_norm_eps), cos, sin, kv_map, cache)
    return x + attention_output(p, heads, head_mask, cfg.head_dim), cache


def mlp_block(p: dict, cfg: ModelConfig, x: jax.Array, ffn_mask: jax.Array | None = None) -> jax.Array:
    """Residual MLP sub-block."""
    hidden = mlp_hidden(p, rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps))
    return x + mlp_output(p, hidden, ffn_mask)


def decoder_layer(
    p: dict,
    cfg: ModelConfig,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    kv_map: tuple[int, ...],
    head_mask: jax.Array | None = None,
    ffn_mask: jax.Array | None = None,
    cache: KVCache | None = None,
) -> tuple[jax.Array, KVCache | None]:
    x, cache = attention_block(p, cfg, x, cos, sin, kv_map, head_mask, cache)
    return mlp_block(p, cfg, x, ffn_mask), cache
