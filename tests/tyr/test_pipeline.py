"""tyrjax.tyr.pipeline: the search loop, registered extensions and the final re-prune."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.model.decoder import compact_from_masked, forward
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.pipeline import run_tyr

from tyr_fixtures import CFG, TCFG, tiny_setup


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


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
