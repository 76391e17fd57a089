"""The decoder as pure functions, in its two forms.

- masked form: `params["layers"]` is one dict of arrays stacked on a leading layer axis,
  scanned with `lax.scan`; pruning is expressed by `head_mask (L, H)` and `ffn_mask (L, F)`
  arguments. Used for calibration, supernets and the search.
- compact form: `params["layers"]` is a list of per-layer dicts whose widths differ, as a
  pruned model's do (described by the compact `ModelConfig`). Used for export, generation
  and speed. `compact_from_masked` turns the first into the second; both give the same logits.
"""
from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tyrjax.model.config import ModelConfig
from tyrjax.model.layers import KVCache, decoder_layer, rms_norm, rope_tables
from tyrjax.parallel.sharding import Axes, sharded_call
from tyrjax.model.axes import params_axes_of

Params = dict


def is_stacked(params: Params) -> bool:
    """True for the masked (stacked) form, False for the compact (per-layer list) form."""
    return isinstance(params["layers"], dict)


def embed(params: Params, tokens: jax.Array) -> jax.Array:
    return params["embed"][tokens]


def lm_head_weight(params: Params) -> jax.Array:
    """(d, vocab): the untied head, or the transposed embedding when tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def final_hidden(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps)


def logits_from_hidden(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """fp32 next-token logits from the last block's output."""
    h = final_hidden(params, cfg, x)
    return jnp.einsum("btd,dv->btv", h, lm_head_weight(params), preferred_element_type=jnp.float32)


def run_layers_masked(
    layers: Params,
    cfg: ModelConfig,
    x: jax.Array,
    head_mask: jax.Array | None = None,
    ffn_mask: jax.Array | None = None,
) -> jax.Array:
    """Scan the stacked layers over hidden states x (B, T, d)."""
    cos, sin = rope_tables(cfg, jnp.arange(x.shape[1]))
    kv_map = cfg.kv_map(0)
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    hm = jnp.ones((n, cfg.n_heads), x.dtype) if head_mask is None else head_mask
    fm = jnp.ones((n, cfg.intermediate_size), x.dtype) if ffn_mask is None else ffn_mask

    def step(h, layer):
        p, m_head, m_ffn = layer
        h, _ = decoder_layer(p, cfg, h, cos, sin, kv_map, m_head, m_ffn)
        return h, None

    x, _ = jax.lax.scan(step, x, (layers, hm, fm))
    return x


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    head_mask: jax.Array | None = None,
    ffn_mask: jax.Array | None = None,
) -> jax.Array:
    """Logits (B, T, vocab) of either form; masks apply to the masked form only."""
    return logits_from_hidden(params, cfg, last_hidden(params, cfg, tokens, head_mask, ffn_mask))


def last_hidden(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    head_mask: jax.Array | None = None,
    ffn_mask: jax.Array | None = None,
) -> jax.Array:
    """The last block's output (B, T, d) of either form (see `forward`)."""
    x = embed(params, tokens)
    if is_stacked(params):
        x = run_layers_masked(params["layers"], cfg, x, head_mask, ffn_mask)
    else:
        if head_mask is not None or ffn_mask is not None:
            raise ValueError("masks apply to the masked (stacked) form; a compact model is already pruned")
        x, _ = run_layers_compact(params["layers"], cfg, x, jnp.arange(tokens.shape[1]))
    return x


def run_layers_compact(
    layers: list[Params],
    cfg: ModelConfig,
    x: jax.Array,
    positions: jax.Array,
    caches: list[KVCache] | None = None,
) -> tuple[jax.Array, list[KVCache] | None]:
    """Run per-layer (compact) parameters, each with its own widths, optionally with caches."""
    cos, sin = rope_tables(cfg, positions)
    new_caches = [] if caches is not None else None
    for i, p in enumerate(layers):
        cache = caches[i] if caches is not None else None
        x, cache = decoder_layer(p, cfg, x, cos, sin, cfg.kv_map(i), cache=cache)
        if new_caches is not None:
            new_caches.append(cache)
    return x, new_caches


_forward_compiled = jax.jit(forward, static_argnums=1)


def forward_jit(params: Params, cfg: ModelConfig, tokens: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """Jitted `forward`. On a mesh, parameters, tokens and logits are laid out by their
    logical axes (windows over the data axes, heads / neurons / vocabulary over tensor)."""
    if mesh is None:
        return _forward_compiled(params, cfg, tokens)
    inputs = {"params": (params, params_axes_of(params, cfg)), "tokens": (tokens, Axes("batch", "seq"))}
    return sharded_call(forward, mesh, inputs, Axes("batch", "seq", "vocab"), head_dim=cfg.head_dim,
                        static={"cfg": cfg})


# --- conversions between the forms ---------------------------------------------------------
def unstack_layers(layers: Params) -> list[Params]:
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], layers) for i in range(n)]


def stack_layers(layers: list[Params]) -> Params:
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)


def kept_layout(head_mask_row: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Kept query heads, the KV heads they need (a KV head whose query heads are all masked
    is dropped), and each kept query head's index among the kept KV heads."""
    heads = np.flatnonzero(head_mask_row)
    kv_of_head = heads // group_size
    kv_heads = np.unique(kv_of_head)
    kv_map = tuple(int(np.searchsorted(kv_heads, k)) for k in kv_of_head)
    return heads, kv_heads, kv_map


def _columns(width: int, units: np.ndarray) -> np.ndarray:
    return (units[:, None] * width + np.arange(width)[None, :]).reshape(-1).astype(np.int32)


def compact_layer(p: Params, heads: np.ndarray, kv_heads: np.ndarray, neurons: np.ndarray, head_dim: int) -> Params:
    """Physically remove masked heads, their KV heads and masked neurons from one layer."""
    q_cols = _columns(head_dim, heads)
    kv_cols = _columns(head_dim, kv_heads)
    out = dict(p)
    out["wq"], out["wo"] = p["wq"][:, q_cols], p["wo"][q_cols, :]
    out["wk"], out["wv"] = p["wk"][:, kv_cols], p["wv"][:, kv_cols]
    if "bq" in p:
        out["bq"], out["bk"], out["bv"] = p["bq"][q_cols], p["bk"][kv_cols], p["bv"][kv_cols]
    out["w_gate"], out["w_up"] = p["w_gate"][:, neurons], p["w_up"][:, neurons]
    out["w_down"] = p["w_down"][neurons, :]
    return out


def compact_from_masked(
    params: Params, cfg: ModelConfig, head_mask: np.ndarray | None = None, ffn_mask: np.ndarray | None = None
) -> tuple[Params, ModelConfig]:
    """The compact model equal to the masked model under these masks."""
    head = {k: v for k, v in params.items() if k != "layers"}
    return compact_from_blocks(head, unstack_layers(params["layers"]), cfg, head_mask, ffn_mask)


def compact_from_blocks(
    head: Params, layers: Iterable[Params], cfg: ModelConfig, head_mask: np.ndarray | None = None,
    ffn_mask: np.ndarray | None = None,
) -> tuple[Params, ModelConfig]:
    """The compact model of dense-width blocks `layers` (consumed one at a time) under these masks;
    `head` holds the parameters outside the blocks."""
    head_mask = np.ones((cfg.n_layers, cfg.n_heads), bool) if head_mask is None else np.asarray(head_mask) > 0
    ffn_mask = np.ones((cfg.n_layers, cfg.intermediate_size), bool) if ffn_mask is None else np.asarray(ffn_mask) > 0
    compact, widths = [], ([], [], [], [])
    for i, p in enumerate(layers):
        heads, kv_heads, kv_map = kept_layout(head_mask[i], cfg.group_size)
        neurons = np.flatnonzero(ffn_mask[i]).astype(np.int32)
        compact.append(compact_layer(p, heads, kv_heads, neurons, cfg.head_dim))
        for w, v in zip(widths, (len(heads), len(kv_heads), len(neurons), kv_map)):
            w.append(v)
    compact_cfg = cfg.replace(
        layer_heads=tuple(widths[0]),
        layer_kv_heads=tuple(widths[1]),
        layer_kv_map=tuple(widths[3]),
        layer_ffn=tuple(widths[2]),
    )
    return {**head, "layers": compact}, compact_cfg


def to_compact(params: Params, cfg: ModelConfig) -> tuple[Params, ModelConfig]:
    """Either form as a compact model (a dense model becomes one with full widths)."""
    return (params, cfg) if not is_stacked(params) else compact_from_masked(params, cfg)


def cast_params(params: Params, dtype) -> Params:
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


def count_params(params: Params) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(params)))


def init_random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.05) -> Params:
    """Random dense parameters in the masked form, for tests and synthetic benchmarks."""
    rng = np.random.default_rng(seed)
    d, hd, L, f = cfg.hidden_size, cfg.head_dim, cfg.n_layers, cfg.intermediate_size
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd

    def w(*shape):
        return jnp.asarray(rng.normal(0, scale, shape).astype(np.float32))

    layers = {
        "attn_norm": jnp.asarray(1 + rng.normal(0, 0.1, (L, d)).astype(np.float32)),
        "wq": w(L, d, q), "wk": w(L, d, kv), "wv": w(L, d, kv), "wo": w(L, q, d),
        "mlp_norm": jnp.asarray(1 + rng.normal(0, 0.1, (L, d)).astype(np.float32)),
        "w_gate": w(L, d, f), "w_up": w(L, d, f), "w_down": w(L, f, d),
    }
    if cfg.attention_bias:
        layers.update(bq=w(L, q), bk=w(L, kv), bv=w(L, kv))
    if cfg.o_bias:
        layers["bo"] = w(L, d)
    if cfg.down_bias:
        layers["b_down"] = w(L, d)
    params = {"embed": w(cfg.vocab_size, d), "layers": layers, "final_norm": jnp.ones((d,), jnp.float32)}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = w(d, cfg.vocab_size)
    return params
