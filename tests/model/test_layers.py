"""Layer functions equal plain float64 numpy transcriptions (loops where the math is per element)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.model.config import ModelConfig
from tyrjax.model.layers import (
    KVCache,
    apply_rope,
    attention_heads,
    attention_output,
    attention_qkv,
    causal_attention,
    decoder_layer,
    mlp_hidden,
    mlp_output,
    rms_norm,
    rope_inv_freq,
    rope_tables,
)

CFG = ModelConfig(vocab_size=20, hidden_size=12, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=10, rms_norm_eps=1e-5, rope_theta=100.0)
TOL = dict(rtol=1e-5, atol=1e-5)
# jitted as the decoder runs them (one compilation instead of one per operation)
attend = jax.jit(attention_heads, static_argnums=(1, 5))
layer = jax.jit(decoder_layer, static_argnums=(1, 5))


def random_layer(rng, cfg: ModelConfig, heads: int, kv_heads: int, ffn: int, biases: bool) -> dict:
    """One layer's parameters (y = x @ W layout) of the given widths, float32."""
    d, hd = cfg.hidden_size, cfg.head_dim

    def w(*shape, scale=0.4):
        return jnp.asarray(rng.normal(0, scale, shape), jnp.float32)

    p = {"attn_norm": 1 + w(d, scale=0.1), "wq": w(d, heads * hd), "wk": w(d, kv_heads * hd),
         "wv": w(d, kv_heads * hd), "wo": w(heads * hd, d), "mlp_norm": 1 + w(d, scale=0.1),
         "w_gate": w(d, ffn), "w_up": w(d, ffn), "w_down": w(ffn, d)}
    if biases:
        p.update(bq=w(heads * hd), bk=w(kv_heads * hd), bv=w(kv_heads * hd), bo=w(d), b_down=w(d))
    return p


def f64(p: dict) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


# --- numpy references -------------------------------------------------------------------------
def np_rms_norm(x, w, eps):
    x = np.asarray(x, np.float64)
    return np.asarray(w, np.float64) * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def np_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Rotary frequencies, per frequency as Meta's Llama 3 reference writes the scaling."""
    hd = cfg.head_dim
    scaling = dict(cfg.rope_scaling or ())
    out = []
    for i in range(hd // 2):
        freq = 1.0 / cfg.rope_theta ** (2 * i / hd)
        if cfg.rope_type == "linear":
            freq /= scaling["factor"]
        elif cfg.rope_type == "llama3":
            factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
            low_wavelen = old / scaling["low_freq_factor"]
            high_wavelen = old / scaling["high_freq_factor"]
            wavelen = 2 * math.pi / freq
            if wavelen > low_wavelen:  # low frequencies are scaled; high ones (wavelen < high_wavelen) kept
                freq /= factor
            elif wavelen >= high_wavelen:
                smooth = (old / wavelen - scaling["low_freq_factor"]) / (
                    scaling["high_freq_factor"] - scaling["low_freq_factor"])
                freq = (1 - smooth) * freq / factor + smooth * freq
        out.append(freq)
    return np.array(out)


def np_rotate(vec, position, inv):
    """One head vector rotated by the rotate-half convention: pair (i, i + hd/2) turns by position * inv[i]."""
    half = len(vec) // 2
    out = np.empty(len(vec))
    for i in range(half):
        a = position * inv[i]
        x1, x2 = vec[i], vec[i + half]
        out[i] = x1 * math.cos(a) - x2 * math.sin(a)
        out[i + half] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def np_attention_heads(p, cfg, x, kv_map):
    """Causal attention of normed x (B, T, d): per-head outputs (B, T, H*hd), head by head, query by query."""
    p, x = f64(p), np.asarray(x, np.float64)
    b, t, _ = x.shape
    hd = cfg.head_dim
    inv = np_inv_freq(cfg)
    q = (x @ p["wq"] + p.get("bq", 0)).reshape(b, t, -1, hd)
    k = (x @ p["wk"] + p.get("bk", 0)).reshape(b, t, -1, hd)
    v = (x @ p["wv"] + p.get("bv", 0)).reshape(b, t, -1, hd)
    out = np.zeros_like(q)
    for bi in range(b):
        for h, g in enumerate(kv_map):
            keys = [np_rotate(k[bi, s, g], s, inv) for s in range(t)]
            for tq in range(t):
                query = np_rotate(q[bi, tq, h], tq, inv)
                scores = np.array([query @ keys[s] / math.sqrt(hd) for s in range(tq + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[bi, tq, h] = sum(weights[s] * v[bi, s, g] for s in range(tq + 1))
    return out.reshape(b, t, -1)


def np_attention_output(p, heads, head_mask, hd):
    p, heads = f64(p), np.asarray(heads, np.float64)
    out = np.zeros(heads.shape[:-1] + (p["wo"].shape[1],)) + p.get("bo", 0)
    for h in range(heads.shape[-1] // hd):
        cols = slice(h * hd, (h + 1) * hd)
        out += head_mask[h] * heads[..., cols] @ p["wo"][cols]
    return out


def np_silu(z):
    return z / (1 + np.exp(-z))


def np_mlp(p, x, ffn_mask):
    p, x = f64(p), np.asarray(x, np.float64)
    hidden = np_silu(x @ p["w_gate"]) * (x @ p["w_up"])
    return (hidden * ffn_mask) @ p["w_down"] + p.get("b_down", 0)


def np_decoder_layer(p, cfg, x, kv_map, head_mask, ffn_mask):
    x = np.asarray(x, np.float64)
    heads = np_attention_heads(p, cfg, np_rms_norm(x, p["attn_norm"], cfg.rms_norm_eps), kv_map)
    x = x + np_attention_output(p, heads, head_mask, cfg.head_dim)
    return x + np_mlp(p, np_rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps), ffn_mask)


def rope(cfg, t):
    return rope_tables(cfg, jnp.arange(t))


# --- tests ------------------------------------------------------------------------------------
def test_rms_norm_equals_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2, 5, 12)) * np.array([1e-2, 1, 30, 1, 1])[None, :, None]
    w = rng.normal(1, 0.2, 12)
    out = rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 1e-5)
    np.testing.assert_allclose(np.asarray(out), np_rms_norm(np.float32(x), np.float32(w), 1e-5), **TOL)
    low = rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), 1e-5)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float64), np_rms_norm(x, w, 1e-5), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    # wavelengths 6.3, 167 and 4443 fall in the kept, smoothed and divided regimes of llama3
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 256},
], ids=["default", "linear", "llama3"])
def test_rope_inv_freq_equals_numpy(scaling):
    cfg = CFG.replace(head_dim=8, rope_theta=500000.0, rope_scaling=tuple(sorted(scaling.items())) if scaling else None)
    expected = np_inv_freq(cfg)
    np.testing.assert_allclose(rope_inv_freq(cfg), expected, rtol=1e-6)
    if cfg.rope_type == "llama3":
        plain = np_inv_freq(cfg.replace(rope_scaling=None))
        ratio = plain / expected
        assert ratio[0] == 1 and 1 < ratio[1] < 8 and ratio[2] == pytest.approx(8) and ratio[3] == pytest.approx(8)


def test_rope_tables_and_rotation_equal_numpy():
    rng = np.random.default_rng(1)
    cfg = CFG.replace(head_dim=6)
    positions = np.array([np.arange(5), np.arange(5) + 37])  # a second row at an offset, as with a cache
    cos, sin = rope_tables(cfg, jnp.asarray(positions))
    inv = np_inv_freq(cfg)
    angles = positions[..., None] * np.concatenate([inv, inv])
    assert cos.shape == (2, 5, 6)
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles), **TOL)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles), **TOL)
    x = rng.normal(0, 1, (2, 5, 3, 6))
    rotated = np.asarray(apply_rope(jnp.asarray(x, jnp.float32), cos, sin))
    for b in range(2):
        for t in range(5):
            for h in range(3):
                np.testing.assert_allclose(rotated[b, t, h], np_rotate(x[b, t, h], positions[b, t], inv), **TOL)


def test_rotated_scores_depend_only_on_the_distance():
    rng = np.random.default_rng(2)
    q, k = (jnp.asarray(rng.normal(0, 1, (1, 1, 1, 4)), jnp.float32) for _ in range(2))

    def score(m, n):
        cq, sq = rope_tables(CFG, jnp.array([m]))
        ck, sk = rope_tables(CFG, jnp.array([n]))
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-2)


@pytest.mark.parametrize("heads,kv_heads,kv_map,biases", [
    (4, 2, (0, 0, 1, 1), False),  # dense GQA
    (4, 2, (0, 0, 1, 1), True),
    (3, 2, (1, 0, 1), True),  # a compact layer: any query head may read any kept KV head
    (2, 2, (0, 1), False),  # multi-head
])
def test_attention_heads_equal_numpy(heads, kv_heads, kv_map, biases):
    rng = np.random.default_rng(3)
    p = random_layer(rng, CFG, heads, kv_heads, 10, biases)
    x = rng.normal(0, 1, (2, 6, 12))
    cos, sin = rope(CFG, 6)
    out, cache = attend(p, CFG, jnp.asarray(x, jnp.float32), cos, sin, kv_map)
    assert cache is None and out.shape == (2, 6, heads * CFG.head_dim)
    np.testing.assert_allclose(np.asarray(out), np_attention_heads(p, CFG, np.float32(x), kv_map), **TOL)


def test_attention_is_causal():
    rng = np.random.default_rng(4)
    p = random_layer(rng, CFG, 4, 2, 10, True)
    x = rng.normal(0, 1, (2, 6, 12)).astype(np.float32)
    later = x.copy()
    later[:, 4:] += 1.0
    cos, sin = rope(CFG, 6)
    a, _ = attend(p, CFG, jnp.asarray(x), cos, sin, CFG.kv_map(0))
    b, _ = attend(p, CFG, jnp.asarray(later), cos, sin, CFG.kv_map(0))
    np.testing.assert_array_equal(np.asarray(a)[:, :4], np.asarray(b)[:, :4])
    assert not np.allclose(np.asarray(a)[:, 4:], np.asarray(b)[:, 4:])


def test_attention_with_a_cache_equals_attention_over_the_whole_sequence():
    rng = np.random.default_rng(5)
    p = random_layer(rng, CFG, 4, 2, 10, True)
    x = jnp.asarray(rng.normal(0, 1, (2, 6, 12)), jnp.float32)
    kv_map = CFG.kv_map(0)
    cos, sin = rope(CFG, 6)
    whole, _ = attend(p, CFG, x, cos, sin, kv_map)
    empty = jnp.zeros((2, 8, 2, CFG.head_dim), jnp.float32)
    cache = KVCache(empty, empty, jnp.int32(0))
    first, cache = attend(p, CFG, x[:, :4], cos[:4], sin[:4], kv_map, cache)
    second, cache = attend(p, CFG, x[:, 4:], cos[4:], sin[4:], kv_map, cache)
    assert int(cache.length) == 6 and cache.k.shape == (2, 8, 2, CFG.head_dim)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), np.asarray(whole), **TOL)


def test_the_attention_core_window_by_window_equals_all_windows_at_once():
    """`causal_attention` mixes no windows: a window alone gives its rows of the batched call."""
    rng = np.random.default_rng(7)
    p = random_layer(rng, CFG, 4, 2, 10, True)
    x = jnp.asarray(rng.normal(0, 1, (3, 6, 12)), jnp.float32)
    positions = jnp.arange(6)
    q, k, v = attention_qkv(p, CFG, x, *rope(CFG, 6))
    kv_map = (1, 0, 1, 1)
    batched = causal_attention(q, k, v, kv_map, positions, positions)
    alone = [causal_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], kv_map, positions, positions) for i in range(3)]
    np.testing.assert_allclose(np.concatenate(alone), np.asarray(batched), **TOL)
    np.testing.assert_allclose(np.asarray(batched), np_attention_heads(p, CFG, np.asarray(x), kv_map), **TOL)


def test_head_mask_zeroes_heads():
    rng = np.random.default_rng(6)
    p = random_layer(rng, CFG, 4, 2, 10, True)
    heads = rng.normal(0, 1, (2, 5, 16))
    mask = np.array([1.0, 0.0, 1.0, 0.0])
    out = attention_output(p, jnp.asarray(heads, jnp.float32), jnp.asarray(mask), CFG.head_dim)
    np.testing.assert_allclose(np.asarray(out), np_attention_output(p, np.float32(heads), mask, 4), **TOL)
    kept = np.r_[0:4, 8:12]  # removing heads 1 and 3 outright gives the same output
    removed = attention_output({**p, "wo": p["wo"][kept]}, jnp.asarray(heads[..., kept], jnp.float32), None, 4)
    np.testing.assert_allclose(np.asarray(out), np.asarray(removed), **TOL)
    unmasked = attention_output(p, jnp.asarray(heads, jnp.float32), None, CFG.head_dim)
    np.testing.assert_allclose(np.asarray(unmasked), np_attention_output(p, np.float32(heads), np.ones(4), 4), **TOL)
    none_kept = attention_output(p, jnp.asarray(heads, jnp.float32), jnp.zeros(4), CFG.head_dim)
    np.testing.assert_allclose(np.asarray(none_kept), np.broadcast_to(np.asarray(p["bo"]), (2, 5, 12)), **TOL)


def test_mlp_and_ffn_mask_equal_numpy():
    rng = np.random.default_rng(7)
    p = random_layer(rng, CFG, 4, 2, 10, True)
    x = rng.normal(0, 1, (2, 5, 12))
    hidden = mlp_hidden(p, jnp.asarray(x, jnp.float32))
    pf = f64(p)
    np.testing.assert_allclose(np.asarray(hidden), np_silu(np.float32(x) @ pf["w_gate"]) * (np.float32(x) @ pf["w_up"]),
                               **TOL)
    mask = (np.arange(10) % 3 != 0).astype(np.float64)
    out = mlp_output(p, hidden, jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), np_mlp(p, np.float32(x), mask), **TOL)
    kept = np.flatnonzero(mask)  # removing the masked neurons outright gives the same output
    small = {**p, "w_gate": p["w_gate"][:, kept], "w_up": p["w_up"][:, kept], "w_down": p["w_down"][kept]}
    np.testing.assert_allclose(np.asarray(mlp_output(small, mlp_hidden(small, jnp.asarray(x, jnp.float32)), None)),
                               np.asarray(out), **TOL)


@pytest.mark.parametrize("biases", [False, True])
def test_decoder_layer_equals_numpy(biases):
    rng = np.random.default_rng(8)
    p = random_layer(rng, CFG, 4, 2, 10, biases)
    x = rng.normal(0, 1, (2, 6, 12))
    head_mask, ffn_mask = np.array([0.0, 1.0, 1.0, 1.0]), (np.arange(10) % 4 != 1).astype(np.float64)
    cos, sin = rope(CFG, 6)
    out, _ = layer(p, CFG, jnp.asarray(x, jnp.float32), cos, sin, CFG.kv_map(0),
                           jnp.asarray(head_mask, jnp.float32), jnp.asarray(ffn_mask, jnp.float32))
    expected = np_decoder_layer(p, CFG, np.float32(x), CFG.kv_map(0), head_mask, ffn_mask)
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    dense, _ = layer(p, CFG, jnp.asarray(x, jnp.float32), cos, sin, CFG.kv_map(0))
    np.testing.assert_allclose(np.asarray(dense), np_decoder_layer(p, CFG, np.float32(x), CFG.kv_map(0), np.ones(4),
                                                                   np.ones(10)), **TOL)
    assert not np.allclose(np.asarray(dense), expected)
