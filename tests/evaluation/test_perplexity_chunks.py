"""Perplexity with the LM head over vocabulary chunks and hidden states streamed from the host
when a memory budget says so: the same NLLs, one compilation for every chunk, a clear error."""
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.perplexity import (head_vocab_chunk, nll_from_hidden, nll_sums_from_hidden, token_nll,
                                          window_nll_sums, window_nlls, window_nlls_blockwise)
from tyrjax.model.blocks import HeldBlocks, device_bytes, hidden_chunk
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import forward, init_random_params, last_hidden
from tyrjax.model.vocab import LOGIT_BYTES

# 300 columns: chunks of 128 leave a last chunk that overlaps the one before it.
CFG = ModelConfig(vocab_size=300, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=24, max_position_embeddings=16)


@pytest.fixture(scope="module")
def model():
    params = init_random_params(CFG, 0, scale=0.3)
    windows = np.random.default_rng(0).integers(0, CFG.vocab_size, (5, 12))
    return params, windows


def chunked_budget(params, batch: int, length: int, columns: int) -> int:
    """A budget with room for `columns` vocabulary columns of a batch's logits, not the whole vocabulary."""
    return device_bytes(params) + batch * length * (CFG.hidden_size * 4 + LOGIT_BYTES * columns)


def test_nll_over_vocabulary_chunks_equals_the_whole_logits(model):
    params, windows = model
    tokens = jnp.asarray(windows)
    h = last_hidden(params, CFG, tokens)
    want = np.asarray(token_nll(forward(params, CFG, tokens), tokens))
    for chunk in (300, 128, 100, 1):
        np.testing.assert_allclose(nll_from_hidden(params, CFG, h, tokens, chunk), want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"chunk {chunk}")


def test_head_vocab_chunk_is_the_whole_vocabulary_unless_the_budget_says_otherwise(model):
    params, _ = model
    fixed = device_bytes(params)
    assert head_vocab_chunk(CFG, 2, 12, None, fixed) == CFG.vocab_size  # the default budget
    assert head_vocab_chunk(CFG, 2, 12, chunked_budget(params, 2, 12, 200), fixed) == 128
    with pytest.raises(TyrjaxError, match="evaluation needs at least .* --device-memory"):
        head_vocab_chunk(CFG, 2, 12, chunked_budget(params, 2, 12, 100), fixed)


@pytest.mark.parametrize("batch", [1, 2])
def test_window_nlls_under_a_small_budget_equal_the_default_and_compile_once(model, batch):
    params, windows = model
    want = window_nlls(params, CFG, windows, batch, progress=False)
    budget = chunked_budget(params, batch, 12, 200)
    window_nll_sums.clear_cache()
    got = window_nlls(params, CFG, windows, batch, progress=False, budget_bytes=budget)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert window_nll_sums._cache_size() == 1  # every batch, the last one padded, runs one compiled function


def test_blockwise_nlls_streamed_from_the_host_equal_the_default_and_compile_once(model):
    params, _ = model
    windows = np.random.default_rng(1).integers(0, CFG.vocab_size, (41, 12))
    blocks = HeldBlocks(params, CFG)
    want = window_nlls_blockwise(blocks, windows, 2, progress=False)
    budget = chunked_budget(params, 2, 12, 200)
    assert head_vocab_chunk(CFG, 2, 12, budget, blocks.resident_bytes()) < CFG.vocab_size
    held = hidden_chunk(blocks, 41, 12, 2, budget, "evaluation")
    assert held < 41 and 41 % held  # the hidden states wait on the host, the last chunk padded
    nll_sums_from_hidden.clear_cache()
    got = window_nlls_blockwise(blocks, windows, 2, progress=False, budget_bytes=budget)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert nll_sums_from_hidden._cache_size() == 1
    with pytest.raises(TyrjaxError, match="evaluation needs at least"):
        window_nlls_blockwise(blocks, windows, 2, progress=False, budget_bytes=device_bytes(params) // 2)
