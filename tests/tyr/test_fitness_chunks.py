"""The search's LM head, its forwards and the teacher in chunks sized to a memory budget: the
same fitness and teacher as in one piece, one compilation for all chunks, and a clear error
below one chunk."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import HeldBlocks, block_output, hidden_chunk
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import forward, init_random_params, last_hidden, logits_from_hidden
from tyrjax.model.vocab import logits_at
from tyrjax.tyr.fitness import (GATHER_POSITIONS, BatchScorer, FitnessChunks, _teacher_from_hidden, call_bytes,
                                candidate_blocks, candidate_fitness, fitness_chunks, kl_topk, scoring_window_bytes,
                                teacher_topk)
from tyrjax.tyr.pipeline import TyrConfig, initial_grid, run_tyr
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.tyr.supernet import build_supernet

# 300 columns: vocabulary chunks of 128 leave a last chunk that overlaps the one before it.
CFG = ModelConfig(vocab_size=300, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
UNTIED = ModelConfig(vocab_size=300, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                     intermediate_size=64, tie_word_embeddings=False)
K = 16


@pytest.fixture(scope="module", params=[CFG, UNTIED], ids=["tied", "untied"])
def model(request):
    cfg = request.param
    params = init_random_params(cfg, 0, scale=0.2)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (5, 24))
    return cfg, params, windows


def smallest_budget(fits, start: int = 10_000) -> int:
    """The smallest budget on a 5 % grid for which `fits(budget)` does not raise."""
    budget = start
    while True:
        try:
            fits(budget)
            return budget
        except TyrjaxError:
            budget = int(budget * 1.05) + 1


def reference_losses(params, cfg, h, t_idx, t_logp) -> np.ndarray:
    """Each candidate's per-token KL (C, B, T) from its whole-vocabulary logits at the teacher's top-k."""
    logits = [logits_from_hidden(params, cfg, hc) for hc in h]
    return np.stack([np.asarray(kl_topk(jnp.take_along_axis(lg, t_idx, axis=-1), t_logp)) for lg in logits])


def reference_fitness(params, cfg, h, t_idx, t_logp) -> np.ndarray:
    """Each candidate's mean KL from its whole-vocabulary logits at the teacher's top-k."""
    return reference_losses(params, cfg, h, t_idx, t_logp).mean(axis=(1, 2))


def test_logits_at_equals_the_whole_vocabulary_for_every_chunk_width():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 300)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 300, (3, 5, 7)))
    logits = np.einsum("btd,dv->btv", np.asarray(h, np.float64), np.asarray(w, np.float64))
    top = logits.max(-1)
    want_norm = top + np.log(np.exp(logits - top[..., None]).sum(-1))
    want_picked = np.take_along_axis(logits, np.asarray(ids), axis=-1)
    for chunk in (300, 128, 100, 7, 1):
        picked, norm = logits_at(h, w, ids, chunk)
        np.testing.assert_allclose(picked, want_picked, rtol=1e-5, atol=1e-5, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(norm, want_norm, rtol=1e-5, atol=1e-5, err_msg=f"chunk {chunk}")


def test_chunked_fitness_equals_the_whole_head_and_compiles_once(model):
    cfg, params, windows = model
    teacher = teacher_topk(params, cfg, windows, K)
    h0 = last_hidden(params, cfg, jnp.asarray(windows[:2]))
    rng = np.random.default_rng(1)
    h = jnp.stack([h0 * (1 + 0.1 * jnp.asarray(rng.standard_normal(h0.shape), jnp.float32)) for _ in range(3)])
    t_idx, t_logp = jnp.asarray(teacher.idx[:2]), jnp.asarray(teacher.logp[:2])
    losses = reference_losses(params, cfg, h, t_idx, t_logp)
    want, want_first = losses.mean(axis=(1, 2)), losses[:, :1].sum(axis=(1, 2))
    head = HeldBlocks(params, cfg).head
    for chunks in (FitnessChunks(24, 300), FitnessChunks(7, 128), FitnessChunks(5, 100), FitnessChunks(24, 0, True),
                   FitnessChunks(7, 0, True)):
        got = np.asarray(candidate_fitness(head, cfg, h, t_idx, t_logp, chunks=chunks))
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str(chunks))
        first = np.asarray(candidate_fitness(head, cfg, h, t_idx, t_logp, chunks=chunks, valid=jnp.int32(1)))
        np.testing.assert_allclose(first, want_first, rtol=1e-4, err_msg=f"{chunks}, the first window's sum")
    candidate_fitness.clear_cache()
    candidate_fitness(head, cfg, h, t_idx, t_logp, chunks=FitnessChunks(3, 128))  # 8 position × 3 vocabulary chunks
    candidate_fitness(head, cfg, h[::-1], jnp.asarray(teacher.idx[2:4]), jnp.asarray(teacher.logp[2:4]),
                      chunks=FitnessChunks(3, 128))
    assert candidate_fitness._cache_size() == 1


def test_fitness_chunks_follow_the_budget():
    d, k, v = CFG.hidden_size, K, CFG.vocab_size
    whole = fitness_chunks(2, 24, k, CFG, 10**9, platform="gpu")
    assert whole == FitnessChunks(24, v)
    per_token = 4 * d + 16 * k
    # room for 24 positions of 2 windows and 128 columns, not for the whole vocabulary
    budget = 2 * 24 * (per_token + 12 * 128) + 1000
    small = fitness_chunks(2, 24, k, CFG, budget, 1000, platform="gpu")
    assert small.vocab == 128 and small.tokens == 24 and not small.gather
    tight = fitness_chunks(2, 24, k, CFG, 2 * 5 * (per_token + 12 * 128) + 1000, 1000, platform="gpu")
    assert tight.vocab == 128 and tight.tokens == 5
    # on a CPU rows are gathered while k · 4 bytes · 12 FLOP/byte < 2 · 300 FLOPs
    assert fitness_chunks(2, 24, 8, CFG, 10**9, platform="cpu") == FitnessChunks(GATHER_POSITIONS, 0, gather=True)
    assert not fitness_chunks(2, 24, 16, CFG, 10**9, platform="cpu").gather
    assert fitness_chunks(2, 100, 8, CFG, 10**9, platform="cpu").tokens == GATHER_POSITIONS
    # gathered rows (and ids, teacher log-probs) once per position, each candidate's hidden state and values
    shared, each = 8 * 8 + 8 * d * 4, 4 * d + 8 * 8
    for candidates in (1, 3):
        budget = 1000 + 2 * 2 * (shared + candidates * each)  # two positions of two windows
        assert fitness_chunks(2, 24, 8, CFG, budget, 1000, platform="cpu", candidates=candidates).tokens == 2
        assert fitness_chunks(2, 24, 8, CFG, budget - 1, 1000, platform="cpu", candidates=candidates).tokens == 1
    with pytest.raises(TyrjaxError, match="search scoring needs at least .* --device-memory"):
        fitness_chunks(2, 24, k, CFG, 1000, 900, platform="gpu")


def scoring_case(cfg, windows: int, seed: int, candidates: int):
    """A random model, its calibration windows of 24 tokens, supernet and teacher, the centre
    genome and `candidates` genomes one level switch away from it."""
    params = init_random_params(cfg, 0, scale=0.2)
    calib = np.random.default_rng(seed).integers(0, cfg.vocab_size, (windows, 24))
    grid = initial_grid(cfg, 0.4, TyrConfig(topk=K, candidate_batch=2, mlp_multiple=4, interval=0.25))
    sn = build_supernet(params, cfg, calib, grid, progress=False)
    teacher = teacher_topk(params, cfg, calib, K)
    parent = centre_genome(grid)
    genomes = np.stack([level_switch(i, parent, grid) for i in range(candidates)])
    return params, calib, sn, teacher, parent, genomes

def test_scorer_under_a_small_budget_equals_the_default_and_a_tiny_one_fails_first(tmp_path):
    cfg = CFG.replace(vocab_size=3000)  # a head wider than a block, so the budget chunks the head first
    params, calib, sn, teacher, parent, genomes = scoring_case(cfg, windows=4, seed=0, candidates=4)
    default = BatchScorer(params, cfg, sn, batch=2)
    want = default(genomes, parent, calib[:2], teacher.idx[:2], teacher.logp[:2])
    fixed = default.model.resident_bytes()

    def scorer(budget):
        one = BatchScorer(params, cfg, sn, batch=2, budget_bytes=budget)
        return one, one.windows_per_forward(2, 24, K)

    small, windows = scorer(smallest_budget(scorer, start=fixed))
    assert small.fitness_chunks(windows, 24, K).vocab < cfg.vocab_size  # several vocabulary chunks
    np.testing.assert_allclose(small(genomes, parent, calib[:2], teacher.idx[:2], teacher.logp[:2]), want, rtol=1e-5)
    with pytest.raises(TyrjaxError, match="search scoring needs at least"):
        BatchScorer(params, cfg, sn, batch=2, budget_bytes=fixed // 2)


def test_teacher_streamed_from_the_host_equals_the_whole_model_and_compiles_once(model):
    cfg, params, _ = model
    windows = np.random.default_rng(2).integers(0, cfg.vocab_size, (15, 24))
    blocks = HeldBlocks(params, cfg)
    want = teacher_topk(params, cfg, windows, K)
    top, idx = jax.lax.top_k(forward(params, cfg, jnp.asarray(windows)), K)
    np.testing.assert_array_equal(want.idx, np.asarray(idx))
    budget = smallest_budget(lambda b: (hidden_chunk(blocks, 15, 24, 2, b, "teacher"),
                                        teacher_topk(params, cfg, windows[:2], K, batch=2, budget_bytes=b)),
                             start=blocks.resident_bytes())
    held = hidden_chunk(blocks, 15, 24, 2, budget, "teacher")
    assert held < 15 and 15 % held  # the hidden states wait on the host, the last chunk padded
    block_output.clear_cache()
    _teacher_from_hidden.clear_cache()
    streamed = teacher_topk(params, cfg, windows, K, batch=2, budget_bytes=budget)
    np.testing.assert_array_equal(streamed.idx, want.idx)
    np.testing.assert_allclose(streamed.logp, want.logp, rtol=1e-6, atol=1e-6)
    # one compilation for every block and chunk
    assert block_output._cache_size() == 1 and _teacher_from_hidden._cache_size() == 1
    with pytest.raises(TyrjaxError, match="teacher needs at least"):
        teacher_topk(params, cfg, windows, K, budget_bytes=blocks.resident_bytes() // 2)


def test_run_tyr_under_a_budget_too_small_stops_before_any_work(tmp_path):
    params = init_random_params(CFG, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 24))
    tcfg = TyrConfig(topk=K, candidate_batch=2, mlp_multiple=4, interval=0.25, device_memory_gb=1e-6)
    with pytest.raises(TyrjaxError, match="teacher needs at least .* --device-memory"):
        run_tyr(params, CFG, calib, 0.4, tcfg, work_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # no supernet was built


def test_scorer_runs_a_large_token_batch_in_window_chunks_equal_to_one_forward_and_compiles_once():
    cfg = CFG
    params, calib, sn, teacher, parent, genomes = scoring_case(cfg, windows=7, seed=3, candidates=3)
    default = BatchScorer(params, cfg, sn, batch=2)
    assert default.windows_per_forward(7, 24, K) == 7
    want = default(genomes, parent, calib, teacher.idx, teacher.logp)
    per_window = scoring_window_bytes(cfg, 2, 24, K, 4)
    fixed = default.model.resident_bytes() + call_bytes(cfg, 2, default.blocks_per_call, 4, 4)
    small = BatchScorer(params, cfg, sn, batch=2, budget_bytes=int(fixed + 3 * per_window))
    assert small.windows_per_forward(7, 24, K) == 3  # chunks of 3, 3 and 1 + 2 padding windows
    candidate_fitness.clear_cache()
    candidate_blocks.clear_cache()
    got = small(genomes, parent, calib, teacher.idx, teacher.logp)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert candidate_fitness._cache_size() == 1
    compiled = candidate_blocks._cache_size()
    candidate_blocks.clear_cache()
    default(genomes, parent, calib[:3], teacher.idx[:3], teacher.logp[:3])  # one forward of a chunk's shape
    assert compiled == candidate_blocks._cache_size()  # as many functions as one forward: none per chunk
    with pytest.raises(TyrjaxError, match="search scoring needs at least"):
        BatchScorer(params, cfg, sn, batch=2, budget_bytes=int(fixed)).windows_per_forward(7, 24, K)
