"""Perplexity and per-window NLLs equal a float64 numpy computation from the model's logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.perplexity import (perplexity, perplexity_blockwise, scored_whole, token_nll,
                                          whole_forward_bytes, window_nlls, window_nlls_blockwise)
from tyrjax.model.blocks import HeldBlocks, device_bytes
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params

CFG = ModelConfig(vocab_size=32, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=24, max_position_embeddings=16)


@pytest.fixture(scope="module")
def model():
    params = init_random_params(CFG, 0, scale=0.3)
    windows = np.random.default_rng(0).integers(0, CFG.vocab_size, (5, 12))
    return params, windows


def np_window_nlls(logits: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Summed next-token NLL of each window: log-softmax of position t scored on token t + 1."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    n, t = windows.shape
    return np.array([-sum(logp[w, i, windows[w, i + 1]] for i in range(t - 1)) for w in range(n)])


def reference(params, windows):
    return np_window_nlls(np.asarray(forward(params, CFG, jnp.asarray(windows))), windows)


def test_token_nll_equals_numpy_even_for_large_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 30, (2, 7, 11)) + 1000.0
    tokens = rng.integers(0, 11, (2, 7))
    nll = np.asarray(token_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens)))
    assert nll.shape == (2, 6) and (nll >= 0).all()
    np.testing.assert_allclose(nll.sum(1), np_window_nlls(np.float32(logits), tokens), rtol=1e-5)


def test_window_nlls_and_perplexity_equal_numpy(model):
    params, windows = model
    expected = reference(params, windows)
    nlls = window_nlls(params, CFG, windows, progress=False)
    assert nlls.shape == (5,) and nlls.dtype == np.float64
    np.testing.assert_allclose(nlls, expected, rtol=1e-5)
    assert perplexity(params, CFG, windows, progress=False) == pytest.approx(
        np.exp(expected.sum() / (5 * 11)), rel=1e-5)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_batch_size_does_not_change_the_result(model, batch_size):
    """Batches that do not divide the windows, or exceed them, are padded and the padding dropped."""
    params, windows = model
    one = window_nlls(params, CFG, windows, 1, progress=False)
    np.testing.assert_allclose(window_nlls(params, CFG, windows, batch_size, progress=False), one, rtol=1e-6)
    assert perplexity(params, CFG, windows, batch_size, progress=False) == pytest.approx(
        perplexity(params, CFG, windows, 1, progress=False), rel=1e-6)


def test_blockwise_path_equals_numpy(model):
    params, windows = model
    blocks = HeldBlocks(params, CFG)
    expected = reference(params, windows)
    np.testing.assert_allclose(window_nlls_blockwise(blocks, windows, 2, progress=False), expected, rtol=1e-5)
    assert perplexity_blockwise(blocks, windows, 2, progress=False) == pytest.approx(
        np.exp(expected.sum() / (5 * 11)), rel=1e-5)


def test_bad_windows_are_refused_on_both_paths(model):
    params, windows = model
    blocks = HeldBlocks(params, CFG)
    for score in (lambda w: perplexity(params, CFG, w, progress=False),
                  lambda w: perplexity_blockwise(blocks, w, progress=False)):
        with pytest.raises(TyrjaxError, match=r"expected a non-empty \(n_windows, length\) token array, got shape \(12,\)"):
            score(windows[0])
        with pytest.raises(TyrjaxError, match=r"got shape \(0, 12\)"):
            score(windows[:0])
        with pytest.raises(TyrjaxError, match="windows of 17 tokens exceed the model's 16 positions"):
            score(np.zeros((2, 17), int))


def test_non_finite_loss_is_a_clear_error(model):
    params, windows = model
    broken = {**params, "final_norm": params["final_norm"].at[0].set(jnp.nan)}
    with pytest.raises(TyrjaxError, match="wikitext: the loss is not finite"):
        perplexity(broken, CFG, windows, desc="wikitext", progress=False)
    with pytest.raises(TyrjaxError, match="not finite"):
        perplexity_blockwise(HeldBlocks(broken, CFG), windows, progress=False)
    assert np.isnan(window_nlls(broken, CFG, windows, progress=False)).all()


def test_uniform_prediction_has_the_vocabulary_size_as_perplexity(model):
    params, windows = model
    uniform = {**params, "lm_head": jnp.zeros_like(params["lm_head"])}
    assert perplexity(uniform, CFG, windows, progress=False) == pytest.approx(CFG.vocab_size, rel=1e-5)
    assert perplexity(params, CFG, windows, progress=False) != pytest.approx(CFG.vocab_size, rel=1e-3)


@pytest.mark.parametrize("form", ["masked", "compact"])
def test_held_model_over_the_budget_is_scored_block_by_block(model, form):
    params, windows = model
    cfg = CFG
    if form == "compact":
        params, cfg = compact_from_masked(params, CFG)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    whole = whole_forward_bytes(cfg, device_bytes(params), 2, 2, windows.shape[1])
    assert whole > device_bytes(params) * 3  # the fp32 copies of bf16 weights are counted
    assert scored_whole(params, cfg, 2, windows.shape[1], int(whole))
    assert not scored_whole(params, cfg, 2, windows.shape[1], int(whole) - 1)
    want = window_nlls(params, cfg, windows, 2, progress=False, budget_bytes=int(whole))
    got = window_nlls(params, cfg, windows, 2, progress=False, budget_bytes=int(whole) - 1)
    np.testing.assert_array_equal(got, window_nlls_blockwise(HeldBlocks(params, cfg), windows, 2, progress=False,
                                                             budget_bytes=int(whole) - 1))
    # bf16 hidden states are rounded where the two paths' fusions differ
    np.testing.assert_allclose(got, want, rtol=2e-3)
