"""tyrjax.tyr.fitness: batched, disk-backed candidate scoring and the KL at the teacher's top-k."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.model.decoder import cast_params
from tyrjax.tyr.genome import Genome, split
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.tyr.fitness import BatchScorer, candidate_blocks, candidate_fitness, kl_topk, teacher_topk
from tyrjax.tyr.pipeline import masks_and_weights
from tyrjax.tyr.supernet import PackedLevels, build_supernet

from tyr_fixtures import CFG, stacked, reference_kl, last_block_offspring, tiny_setup


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


def test_disk_backed_scoring_equals_the_stacked_model_and_compiles_once(setup, tmp_path):
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "store", progress=False)
    ref = stacked(sn)
    for a, b in zip(ref, stacked(build_supernet(params, CFG, calib, grid, progress=False))):
        np.testing.assert_array_equal(a, b)  # the same levels on disk as in memory
    teacher = teacher_topk(params, CFG, calib, 16)
    parent = centre_genome(grid)
    # one batch from an early block, one from the last block (starting from the parent's cached state)
    genomes = np.concatenate([np.stack([level_switch(i, parent, grid) for i in range(4)]),
                              last_block_offspring(parent, grid, 4)])
    scorer = BatchScorer(params, CFG, sn, batch=4)
    assert scorer.blocks_per_call == CFG.n_layers
    with_prefix = scorer(genomes, parent, calib[:2], teacher.idx[:2], teacher.logp[:2])
    compiled = candidate_blocks._cache_size(), candidate_fitness._cache_size()
    scorer(genomes[::-1], parent, calib[2:4], teacher.idx[2:4], teacher.logp[2:4])
    scorer(np.stack([level_switch(i, genomes[0], grid) for i in range(7)]), genomes[0], calib[4:6],
           teacher.idx[4:6], teacher.logp[4:6])
    without = scorer(genomes, parent, calib[:2], teacher.idx[:2], teacher.logp[:2], use_prefix=False)
    assert (candidate_blocks._cache_size(), candidate_fitness._cache_size()) == compiled  # other candidates, no compilation
    two_per_call = BatchScorer(params, CFG, sn, batch=4, blocks_per_call=2)(genomes, parent, calib[:2], teacher.idx[:2],
                                                                          teacher.logp[:2])
    np.testing.assert_allclose(with_prefix, without, rtol=1e-5)
    np.testing.assert_allclose(with_prefix, two_per_call, rtol=1e-5)
    for g, s in zip(genomes, with_prefix):
        assert s == pytest.approx(reference_kl(params, ref, g, calib[:2], teacher.idx[:2], teacher.logp[:2]), rel=1e-5)
    assert len(set(np.round(with_prefix, 6))) > 1
    chosen, head, ffn = masks_and_weights(sn, genomes[0], params)
    blocks, (a, m) = np.arange(CFG.n_layers), split(genomes[0])
    np.testing.assert_array_equal(chosen["layers"]["wo"], ref.wo[blocks, a])
    np.testing.assert_array_equal(chosen["layers"]["w_down"], ref.w_down[blocks, m])
    np.testing.assert_array_equal(head, ref.head_keep[blocks, a])
    np.testing.assert_array_equal(ffn, ref.ffn_keep[blocks, m])


def test_scorer_reads_only_the_levels_its_candidates_use(setup, tmp_path):
    """A stored supernet holds no levels in memory, only its files; scoring offspring that differ
    from the parent in the last block reads the parent's level of each earlier block once and,
    in the last block, only the levels the candidates use."""
    params, calib, grid = setup
    store = tmp_path / "store"
    sn = build_supernet(params, CFG, calib, grid, store_dir=store, progress=False)
    assert sn.held == (None,) * CFG.n_layers
    for b in range(CFG.n_layers):
        for field, a in sn.block(b)._asdict().items():
            a = a.packed if isinstance(a, PackedLevels) else a  # weights: the rows each level keeps
            assert isinstance(a, np.memmap) and Path(a.filename) == store / f"block_{b:04d}.{field}.npy"
    read, gather = [], sn.gather

    def recording_gather(block, attn_levels, mlp_levels, out=None):
        read.append((block, sorted(set(attn_levels.tolist())), sorted(set(mlp_levels.tolist()))))
        return gather(block, attn_levels, mlp_levels, out)

    sn.gather = recording_gather
    parent = centre_genome(grid)
    genomes = last_block_offspring(parent, grid, 3)
    teacher = teacher_topk(params, CFG, calib[:2], 16)
    BatchScorer(params, CFG, sn, batch=3)(genomes, parent, calib[:2], teacher.idx, teacher.logp)
    parent, genomes, last = Genome(parent), Genome(genomes), CFG.n_layers - 1
    assert read == [(b, [parent.attention[b]], [parent.mlp[b]]) for b in range(last)] + \
        [(last, sorted(genomes.attention[:, last]), sorted(genomes.mlp[:, last]))]


def test_kl_is_zero_for_the_teacher_and_positive_otherwise():
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 30))
    top, idx = jax.lax.top_k(logits, 8)
    t_logp = jax.nn.log_softmax(top, -1)
    assert float(kl_topk(top, t_logp).max()) < 1e-6
    assert float(kl_topk(top * 0.5, t_logp).min()) > 0


def test_a_bf16_model_scores_float32_levels_as_its_own_dtype(setup):
    """`--supernet-dtype float32` on a bf16 model: the levels compute in bf16, so the scores equal
    those of levels stored in bf16."""
    params, calib, grid = setup
    low = cast_params(params, jnp.bfloat16)
    teacher = teacher_topk(low, CFG, calib[:2], 16)
    parent = centre_genome(grid)
    genomes = np.stack([level_switch(i, parent, grid) for i in range(4)])
    scores = {dtype: BatchScorer(low, CFG, build_supernet(low, CFG, calib, grid, dtype=dtype, progress=False), batch=4)(
        genomes, parent, calib[:2], teacher.idx, teacher.logp) for dtype in ("float32", "bfloat16")}
    assert np.all(np.isfinite(scores["float32"]))
    np.testing.assert_array_equal(scores["float32"], scores["bfloat16"])
