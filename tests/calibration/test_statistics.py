"""Block-by-block calibration reproduces the model's own forward pass and statistics."""
import jax.numpy as jnp
import numpy as np

from tyrjax.calibration.statistics import attention_inputs, attention_residual, embed_windows, mlp_inputs, mlp_residual, stats_of

from tyrjax.model.blocks import layer
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import embed, init_random_params, run_layers_masked

CFG = ModelConfig(vocab_size=50, hidden_size=24, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=6, intermediate_size=20)


def test_blockwise_pass_equals_forward():
    params = init_random_params(CFG, 0)
    windows = np.random.default_rng(0).integers(0, 50, (3, 11))
    x = embed_windows(params, windows)
    for i in range(CFG.n_layers):
        p = layer(params, i)
        _, heads = attention_inputs(p, CFG, x)
        x = attention_residual(p, CFG, x, heads)
        _, hidden = mlp_inputs(p, CFG, x)
        x = mlp_residual(p, x, hidden)
    ref = run_layers_masked(params["layers"], CFG, embed(params, jnp.asarray(windows)))
    np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_input_stats_match_numpy():
    a = np.random.default_rng(1).normal(size=(2, 7, 5)).astype(np.float32)
    s = stats_of(jnp.asarray(a))
    flat = a.reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(s.gram, flat.T @ flat, rtol=1e-5)
    np.testing.assert_allclose(s.mean, flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.var, flat.var(0), rtol=1e-4, atol=1e-6)
    assert s.n_tokens == 14
