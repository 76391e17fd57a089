"""The masked and compact forms are one model; vmap over mask candidates equals a loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params

CFG = ModelConfig(vocab_size=61, hidden_size=32, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=8,
                  intermediate_size=40, attention_bias=True, o_bias=True, down_bias=True)


def random_masks(rng, cfg, p_keep=0.6):
    head = rng.random((cfg.n_layers, cfg.n_heads)) < p_keep
    ffn = rng.random((cfg.n_layers, cfg.intermediate_size)) < p_keep
    return head, ffn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_equals_masked(seed):
    rng = np.random.default_rng(seed)
    params = init_random_params(CFG, seed)
    head, ffn = random_masks(rng, CFG)
    # empty whole KV groups, a layer with no heads at all, and a layer with no neurons
    head[0, :3] = False
    head[1, :] = False
    ffn[2, :] = False
    tokens = rng.integers(0, CFG.vocab_size, (2, 17))
    masked = forward(params, CFG, tokens, jnp.asarray(head, jnp.float32), jnp.asarray(ffn, jnp.float32))
    cparams, ccfg = compact_from_masked(params, CFG, head, ffn)
    compact = forward(cparams, ccfg, tokens)
    np.testing.assert_allclose(np.asarray(compact), np.asarray(masked), rtol=1e-5, atol=1e-5)
    assert ccfg.layer_heads == tuple(head.sum(1))
    assert ccfg.layer_kv_heads[0] == 1 and ccfg.layer_kv_heads[1] == 0
    assert cparams["layers"][0]["wk"].shape == (CFG.hidden_size, CFG.head_dim)
    assert cparams["layers"][2]["w_down"].shape == (0, CFG.hidden_size)
    assert ccfg.attn_mlp_params() < CFG.attn_mlp_params()


def test_vmap_over_candidates_equals_loop():
    rng = np.random.default_rng(3)
    params = init_random_params(CFG, 3)
    tokens = rng.integers(0, CFG.vocab_size, (1, 12))
    heads, ffns = zip(*(random_masks(rng, CFG) for _ in range(4)))
    heads = jnp.asarray(np.stack(heads), jnp.float32)
    ffns = jnp.asarray(np.stack(ffns), jnp.float32)
    batched = jax.jit(jax.vmap(lambda h, f: forward(params, CFG, tokens, h, f)))(heads, ffns)
    for c in range(4):
        np.testing.assert_allclose(np.asarray(batched[c]), np.asarray(forward(params, CFG, tokens, heads[c], ffns[c])),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def test_full_masks_are_the_dense_model():
    params = init_random_params(CFG, 4)
    tokens = np.arange(10)[None] % CFG.vocab_size
    ones_h = jnp.ones((CFG.n_layers, CFG.n_heads))
    ones_f = jnp.ones((CFG.n_layers, CFG.intermediate_size))
    np.testing.assert_allclose(forward(params, CFG, tokens, ones_h, ones_f), forward(params, CFG, tokens), rtol=1e-6)
    cparams, ccfg = compact_from_masked(params, CFG)
    assert ccfg.attn_mlp_params() == CFG.attn_mlp_params()


def test_bfloat16_parameters_track_float32():
    from tyrjax.model.decoder import cast_params

    params = init_random_params(CFG, 5)
    tokens = np.arange(16)[None] % CFG.vocab_size
    ref = np.asarray(forward(params, CFG, tokens))
    low = forward(cast_params(params, jnp.bfloat16), CFG, tokens)
    assert low.dtype == jnp.float32  # logits are always fp32
    assert np.abs(np.asarray(low) - ref).max() < 0.05 * np.abs(ref).max()
