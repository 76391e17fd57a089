"""A model served block by block: the same blocks, logits, teacher, perplexity and Týr result as in memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.model.blocks import HeldBlocks, run_blocks

from tyrjax.checkpoints.streaming import StreamedBlocks
from tyrjax.checkpoints.hf import save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.evaluation.perplexity import perplexity, perplexity_blockwise, window_nlls, window_nlls_blockwise
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params, logits_from_hidden
from tyrjax.tyr.fitness import teacher_topk
from tyrjax.tyr.pipeline import TyrConfig, run_tyr

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64,
                  max_position_embeddings=64)
TCFG = TyrConfig(iterations=2, generations=2, offspring=4, stages=((4, 64), (2, 128)), topk=16, candidate_batch=2,
                 mlp_multiple=4, interval=0.25)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    params = init_random_params(CFG, 0, scale=0.2)
    path = tmp_path_factory.mktemp("blocks") / "model"
    save_hf(params, CFG, path)
    windows = np.random.default_rng(0).integers(0, 64, (5, 32))
    return params, path, windows


def test_streamed_blocks_equal_the_checkpoint_in_memory(model):
    params, path, _ = model
    streamed, held = StreamedBlocks(path, CFG), HeldBlocks(params, CFG)
    for i in range(CFG.n_layers):
        for key, value in held.block(i).items():
            np.testing.assert_array_equal(np.asarray(streamed.block(i)[key]), np.asarray(value), err_msg=key)
    assert set(streamed.head) == set(held.head)
    np.testing.assert_array_equal(np.asarray(streamed.stacked([2, 0, 0])["wq"]), np.asarray(np.asarray(params["layers"]["wq"])[[2, 0, 0]]))
    np.testing.assert_array_equal(np.asarray(held.stacked([2, 0, 0])["wq"]), np.asarray(np.asarray(params["layers"]["wq"])[[2, 0, 0]]))


def test_block_by_block_forward_teacher_and_perplexity_equal_the_whole_model(model):
    params, path, windows = model
    streamed = StreamedBlocks(path, CFG)
    whole = np.asarray(forward(params, CFG, jnp.asarray(windows)))
    by_block = np.asarray(logits_from_hidden(streamed.head, CFG, run_blocks(streamed, windows, chunk=2)))
    np.testing.assert_allclose(by_block, whole, rtol=1e-5, atol=1e-5)

    teacher = teacher_topk(streamed, CFG, windows, 8)
    top, idx = jax.lax.top_k(jnp.asarray(whole), 8)
    np.testing.assert_array_equal(teacher.idx, np.asarray(idx))
    np.testing.assert_allclose(teacher.logp, np.asarray(jax.nn.log_softmax(top, axis=-1)), rtol=1e-5, atol=1e-5)

    for batch in (1, 2):
        assert perplexity_blockwise(streamed, windows, batch, progress=False) == pytest.approx(
            perplexity(params, CFG, windows, batch, progress=False), rel=1e-5)
        per_window = window_nlls(params, CFG, windows, batch, progress=False)
        np.testing.assert_allclose(window_nlls_blockwise(streamed, windows, batch, progress=False), per_window, rtol=1e-5)
    alone = [np.log(perplexity(params, CFG, windows[i:i + 1], progress=False)) * (windows.shape[1] - 1) for i in range(len(windows))]
    np.testing.assert_allclose(per_window, alone, rtol=1e-5)


def test_compact_model_evaluates_block_by_block(model):
    params, _, windows = model
    head = np.ones((CFG.n_layers, CFG.n_heads), bool)
    head[0, :2] = False
    ffn = np.arange(CFG.intermediate_size)[None, :] % (np.arange(CFG.n_layers)[:, None] + 2) > 0
    compact, ccfg = compact_from_masked(params, CFG, head, ffn)
    assert perplexity_blockwise(HeldBlocks(compact, ccfg), windows, progress=False) == pytest.approx(
        perplexity(compact, ccfg, windows, progress=False), rel=1e-5)


def test_streamed_tyr_finds_the_same_model_as_in_memory(model, tmp_path):
    params, path, windows = model
    held = run_tyr(params, CFG, windows, 0.4, TCFG, progress=False)
    streamed = run_tyr(StreamedBlocks(path, CFG), CFG, windows, 0.4, TCFG, work_dir=tmp_path / "work", progress=False)
    for a, b in zip(held.iterations, streamed.iterations):
        np.testing.assert_array_equal(a.genome, b.genome)
    np.testing.assert_array_equal(held.head_mask, streamed.head_mask)
    np.testing.assert_array_equal(held.ffn_mask, streamed.ffn_mask)
    expected, ecfg = compact_from_masked(held.params, CFG, held.head_mask, held.ffn_mask)
    compact, ccfg = streamed.selection.compact()
    assert ccfg == ecfg
    np.testing.assert_allclose(np.asarray(forward(compact, ccfg, jnp.asarray(windows))),
                               np.asarray(forward(expected, ecfg, jnp.asarray(windows))), rtol=1e-5, atol=1e-5)
