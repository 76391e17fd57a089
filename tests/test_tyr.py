"""Týr: supernet propagation, resumable builds, batched scoring, the search loop and export."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.calibration.statistics import attention_inputs, embed_windows, mlp_inputs

from tyrjax.model.blocks import layer
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params
from tyrjax.tyr.genome import Genome, layer_index, split
from tyrjax.tyr.search.levels import ATTENTION, MLP, centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.tyr.fitness import BatchScorer, candidate_blocks, candidate_fitness, kl_topk, teacher_topk
from tyrjax.tyr.pipeline import TyrConfig, initial_grid, masks_and_weights, run_tyr
from tyrjax.tyr.supernet import BlockLevels, build_supernet, level_weights

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
TCFG = TyrConfig(iterations=2, generations=3, offspring=6, stages=((6, 64), (2, 128), (1, 256)), topk=16,
                 candidate_batch=4, mlp_multiple=4, interval=0.25)


@pytest.fixture(scope="module")
def setup():
    params = init_random_params(CFG, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, 64, (8, 32))
    grid = initial_grid(CFG, 0.4, TCFG)
    return params, calib, grid


def test_expected_weight_equals_nine_forwards(setup):
    """The next block's input from one matmul with Σ w_e W_e equals Σ w_e (output of level e)."""
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, progress=False)
    x = embed_windows(params, calib)
    p = layer(params, 0)
    _, heads = attention_inputs(p, CFG, x)
    w = level_weights(grid, 0, "expectation", np.random.default_rng(0))
    first, second = sn.block(0), sn.block(1)
    outs = [x + (heads.reshape(*heads.shape[:2], 4, 8) * first.head_keep[e][:, None]).reshape(heads.shape) @ first.wo[e]
            for e in range(grid.n_levels)]
    x_attn = sum(w[e] * outs[e] for e in range(grid.n_levels))
    _, hidden = mlp_inputs(p, CFG, x_attn)
    wm = level_weights(grid, 1, "expectation", np.random.default_rng(0))
    nine = sum(wm[e] * (x_attn + (hidden * first.ffn_keep[e]) @ first.w_down[e]) for e in range(grid.n_levels))
    # the supernet's block-1 statistics were taken on exactly this input: rebuild block 1 from it
    from tyrjax.tyr.supernet import prune_block

    levels, _ = prune_block(layer(params, 1), CFG, nine, grid, 1, "expectation", np.random.default_rng([0, 1]))
    np.testing.assert_allclose(levels.wo, second.wo, rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(levels.head_keep, second.head_keep)
    assert np.all(w[~grid.valid[0]] == 0) and w.sum() == pytest.approx(1)


def test_level_masks_remove_the_grid_counts(setup):
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, progress=False)
    for b in range(CFG.n_layers):
        attn, mlp = layer_index(b, ATTENTION), layer_index(b, MLP)
        for e in np.flatnonzero(grid.valid[attn]):
            assert (~sn.block(b).head_keep[e]).sum() == grid.removed[attn, e]
        for e in np.flatnonzero(grid.valid[mlp]):
            assert (~sn.block(b).ffn_keep[e]).sum() == grid.removed[mlp, e]


def stacked(supernet) -> BlockLevels:
    """Every block's levels stacked (L, E, ...) in memory: the plain form the tests compare with."""
    blocks = [supernet.block(b) for b in range(supernet.n_blocks)]
    return BlockLevels(*(np.stack([getattr(b, f) for b in blocks]) for f in BlockLevels._fields))


def reference_kl(params, net: BlockLevels, genome, tokens, t_idx, t_logp) -> float:
    """A candidate's KL from the full-vocabulary logits of the stacked model with its levels."""
    blocks, (a, m) = np.arange(CFG.n_layers), split(genome)
    p = dict(params, layers=dict(params["layers"], wo=net.wo[blocks, a], w_down=net.w_down[blocks, m]))
    logits = forward(p, CFG, tokens, jnp.asarray(net.head_keep[blocks, a], jnp.float32),
                     jnp.asarray(net.ffn_keep[blocks, m], jnp.float32))
    student = jnp.take_along_axis(logits, jnp.asarray(t_idx), axis=-1)
    return float(kl_topk(student, jnp.asarray(t_logp)).mean())


def last_block_offspring(parent: np.ndarray, grid, n: int) -> np.ndarray:
    """`n` genomes that differ from `parent` in the last block only, each at other valid levels."""
    attn, mlp = layer_index(CFG.n_layers - 1, ATTENTION), layer_index(CFG.n_layers - 1, MLP)
    genomes = np.repeat(parent[None], n, 0)
    genomes[:, attn] = np.flatnonzero(grid.valid[attn])[:n]
    genomes[:, mlp] = np.flatnonzero(grid.valid[mlp])[-n:]
    return genomes


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


def test_search_improves_on_the_centre_and_keeps_the_size(setup):
    params, calib, grid = setup
    result = run_tyr(params, CFG, calib, 0.4, TCFG, progress=False)
    first = result.iterations[0]
    fits = [h["fitness"] for it in result.iterations for h in it.history]
    assert all(b <= a + 1e-9 for a, b in zip([h["fitness"] for h in first.history],
                                             [h["fitness"] for h in first.history][1:]))
    target = grid.removed_params_table[np.arange(grid.n_layers), centre_genome(grid)].sum()
    final = result.iterations[-1]
    removed = final.grid.removed_params_table[np.arange(final.grid.n_layers), final.genome].sum()
    assert removed == target  # every level switch kept the total exactly
    assert np.isfinite(fits).all()
    cparams, ccfg = compact_from_masked(result.params, CFG, result.head_mask, result.ffn_mask)
    tokens = calib[:2]
    masked = forward(result.params, CFG, tokens, jnp.asarray(result.head_mask, jnp.float32),
                     jnp.asarray(result.ffn_mask, jnp.float32))
    np.testing.assert_allclose(np.asarray(forward(cparams, ccfg, tokens)), np.asarray(masked), rtol=1e-5, atol=1e-5)


def test_propagation_ablations_differ(setup):
    params, calib, grid = setup
    nets = {p: build_supernet(params, CFG, calib, grid, propagation=p, progress=False)
            for p in ("expectation", "dense", "uniform")}
    wo = {p: [net.block(b).wo for b in range(net.n_blocks)] for p, net in nets.items()}
    assert not np.allclose(wo["expectation"][2], wo["dense"][2])
    assert not np.allclose(wo["expectation"][2], wo["uniform"][2])
    np.testing.assert_allclose(wo["expectation"][0], wo["dense"][0])  # block 0 sees the same input


BUILD_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import tyrjax.tyr.supernet as sn_mod
    from tyrjax.model.config import ModelConfig
    from tyrjax.model.decoder import init_random_params
    from tyrjax.tyr.pipeline import TyrConfig, initial_grid
    cfg = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
    params = init_random_params(cfg, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, 64, (8, 32))
    grid = initial_grid(cfg, 0.4, TyrConfig(mlp_multiple=4, interval=0.25))
    kill_after = int(sys.argv[2])
    save = sn_mod.SupernetStore.save_block
    def save_then_die(self, block, levels, stream):
        save(self, block, levels, stream)
        if block + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    sn_mod.SupernetStore.save_block = save_then_die
    net = sn_mod.build_supernet(params, cfg, calib, grid, store_dir=sys.argv[1], progress=False)
    np.savez(sys.argv[3], *[a for b in range(net.n_blocks) for a in net.block(b)])
""")


def test_killed_supernet_build_resumes_to_the_same_result(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), "2", str(tmp_path / "a.npz")])
    assert killed.returncode == -9
    assert json.loads((tmp_path / "store" / "supernet.json").read_text())["completed"] == 2
    subprocess.run([sys.executable, str(script), str(tmp_path / "store"), "0", str(tmp_path / "resumed.npz")], check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "fresh"), "0", str(tmp_path / "fresh.npz")], check=True)
    with np.load(tmp_path / "resumed.npz") as a, np.load(tmp_path / "fresh.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_registered_extensions_drive_the_pipeline(setup):
    """A custom saliency, fitness and mutation plug in by name (the extension points)."""
    import dataclasses

    from tyrjax.tyr.search.mutation import MUTATIONS, register_mutation
    from tyrjax.structured.saliency import SALIENCIES, register_saliency
    from tyrjax.tyr.fitness import FITNESSES, register_fitness

    params, calib, grid = setup
    calls = {"mutation": 0}

    @register_saliency("test-last-groups-first")
    def prefer_low_index(W, W_dense, h_inv, H, group_size):
        return jnp.arange(W.shape[0] // group_size, dtype=jnp.float32)[::-1]  # the last groups score lowest

    @register_fitness("test-mse")
    def logit_mse(student_topk, t_logp):
        return jnp.mean((jax.nn.log_softmax(student_topk, axis=-1) - t_logp) ** 2, axis=-1)

    @register_mutation("test-counting")
    def counting(rng, genome, grid, max_switches=4):
        calls["mutation"] += 1
        return MUTATIONS["level_switch"](rng, genome, grid, max_switches)

    try:
        tcfg = dataclasses.replace(TCFG, iterations=1, generations=2, saliency="test-last-groups-first",
                                   fitness="test-mse", mutation="test-counting")
        result = run_tyr(params, CFG, calib, 0.4, tcfg, progress=False)
        for b in range(CFG.n_layers):
            kept = result.head_mask[b]
            assert not kept[kept.sum():].any()  # heads removed from the end, as the saliency says
        assert calls["mutation"] >= tcfg.offspring
        assert np.isfinite(result.iterations[0].fitness)
    finally:
        SALIENCIES.unregister("test-last-groups-first")
        FITNESSES.unregister("test-mse")
        MUTATIONS.unregister("test-counting")


def test_final_reprune_keeps_the_distribution_and_fits_the_path_better(setup):
    """Re-pruning the found distribution along its own path keeps every layer's head count, pays
    for the KV heads it frees with neurons of their blocks, and reconstructs the dense model at
    least as well as the supernet's expectation-calibrated levels."""
    import dataclasses

    from tyrjax.tyr.budget import KVLedger
    from tyrjax.tyr.pipeline import removed_groups

    params, calib, _ = setup
    base = dataclasses.replace(TCFG, iterations=1, reprune_final=False)
    plain = run_tyr(params, CFG, calib, 0.4, base, progress=False)
    repruned = run_tyr(params, CFG, calib, 0.4, dataclasses.replace(base, reprune_final=True), progress=False)
    planned = removed_groups(plain.head_mask, plain.ffn_mask)
    got = removed_groups(repruned.head_mask, repruned.ffn_mask)
    np.testing.assert_array_equal(got[0::2], planned[0::2])
    ledger = KVLedger(CFG, base.mlp_multiple)
    np.testing.assert_array_equal(got[1::2], [ledger.mlp_removal(h, n) for h, n in zip(repruned.head_mask, planned[1::2])])
    dense = forward(params, CFG, calib)

    def error(r):
        out = forward(r.params, CFG, calib, jnp.asarray(r.head_mask, jnp.float32), jnp.asarray(r.ffn_mask, jnp.float32))
        return float(jnp.mean((out - dense) ** 2))

    assert error(repruned) <= error(plain) * 1.05
    assert not np.allclose(np.asarray(plain.params["layers"]["w_down"]), np.asarray(repruned.params["layers"]["w_down"]))
