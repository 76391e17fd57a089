"""Structured baselines end to end (Wanda-sp, magnitude, FLAP) on tiny random models."""
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.calibration.statistics import attention_inputs, attention_residual, embed_windows, mlp_inputs, mlp_residual

from tyrjax.checkpoints.hf import save_hf
from tyrjax.checkpoints.streaming import StreamedBlocks
from tyrjax.model.blocks import device_bytes, layer
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.layers import attention_output, mlp_output
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params
from tyrjax.tyr.genome import interleave, split
from tyrjax.tyr.baselines import RESIDUAL_COPIES, capture_chunk, compact_model, structured_baseline
from tyrjax.tyr.budget import KVLedger, neuron_params
from tyrjax.tyr.pipeline import TyrConfig, group_params, initial_grid, removed_groups
from tyrjax.tyr.supernet import capture_fixed_bytes

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=64)
BIAS_CFG = CFG.replace(attention_bias=True, o_bias=True, down_bias=True)
CFGS = {"plain": CFG, "bias": BIAS_CFG}
SPARSITY, MULTIPLE = 0.5, 4
WINDOWS = np.random.default_rng(0).integers(0, CFG.vocab_size, (6, 32))
PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "bq", "bk", "bv")


def model(kind: str, block_scale: float = 1.0):
    """Random params; `block_scale` multiplies every projection of block 1 (layers of different scale)."""
    return _model(kind, float(block_scale))


@lru_cache(maxsize=None)
def _model(kind: str, block_scale: float):
    cfg = CFGS[kind]
    params = init_random_params(cfg, 1, scale=0.2)
    layers = {k: (v.at[1].multiply(block_scale) if k in PROJECTIONS else v) for k, v in params["layers"].items()}
    return dict(params, layers=layers), cfg


@lru_cache(maxsize=None)
def pruned(method: str, kind: str = "plain", block_scale: float = 1.0):
    params, cfg = model(kind, block_scale)
    return structured_baseline(params, cfg, WINDOWS, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False)


def per_head(values, group):
    return values.reshape(-1, group).sum(1)


def assert_lowest_removed(scores, keep):
    """The removed groups are the lowest-scoring ones (up to float rounding)."""
    scores, keep = np.asarray(scores, np.float64), np.asarray(keep, bool)
    if keep.all() or not keep.any():
        return
    assert scores[~keep].max() <= scores[keep].min() + 1e-6 * np.abs(scores).max()


def wanda_np(W, inputs, group):
    X = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
    return per_head(np.abs(np.asarray(W, np.float64)).mean(1) * np.linalg.norm(X, axis=0), group)


@pytest.mark.parametrize("method", ["wanda-sp", "magnitude"])
def test_uniform_methods_remove_the_uniform_counts(method):
    params_out, cfg_out, head, ffn, info = pruned(method)
    params, cfg = model("plain")
    centre = initial_grid(cfg, SPARSITY, TyrConfig(mlp_multiple=MULTIPLE)).centre
    # Uniform head counts can free whole KV heads: each block's MLP pays for its own.
    ledger = KVLedger(cfg, MULTIPLE)
    heads_removed, neurons = split(centre)
    settled_neurons = [ledger.mlp_removal(h, n) for h, n in zip(head, neurons)]
    settled = interleave(heads_removed, np.asarray(settled_neurons))
    np.testing.assert_array_equal(removed_groups(head, ffn), settled)
    assert info["removed"] == settled.tolist() and info["removed_neurons"] == settled_neurons
    assert params_out is params and cfg_out == cfg
    assert head.dtype == bool and head.shape == (3, 4) and ffn.shape == (3, 64)
    assert abs(info["removed_params"] - SPARSITY * cfg.attn_mlp_params()) <= MULTIPLE * neuron_params(cfg)


def test_wanda_sp_removes_the_lowest_scores_on_the_pruned_stream():
    _, _, head, ffn, _ = pruned("wanda-sp")
    params, cfg = model("plain")
    x = embed_windows(params, WINDOWS)
    for b in range(cfg.n_layers):  # replay the sequential flow with the returned masks
        p = layer(params, b)
        heads = attention_inputs(p, cfg, x)[1]
        assert_lowest_removed(wanda_np(p["wo"], heads, cfg.head_dim), head[b])
        x = attention_residual(p, cfg, x, heads, jnp.asarray(head[b]))
        hidden = mlp_inputs(p, cfg, x)[1]
        assert_lowest_removed(wanda_np(p["w_down"], hidden, 1), ffn[b])
        x = mlp_residual(p, x, hidden, jnp.asarray(ffn[b]))


def test_magnitude_removes_the_smallest_norms():
    _, _, head, ffn, _ = pruned("magnitude")
    params, cfg = model("plain")
    for b in range(cfg.n_layers):
        wo, wd = (np.asarray(params["layers"][k][b], np.float64) for k in ("wo", "w_down"))
        assert_lowest_removed(np.sqrt(per_head((wo**2).sum(1), cfg.head_dim)), head[b])
        assert_lowest_removed(np.linalg.norm(wd, axis=1), ffn[b])


def flap_z_np(params, cfg):
    """FLAP's standardised scores recomputed in numpy on the dense stream: (L, H), (L, F)."""
    x = embed_windows(params, WINDOWS)
    z_heads, z_neurons = [], []

    def z(W, inputs, group):
        X = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
        s = per_head(X.var(0) * (np.asarray(W, np.float64) ** 2).sum(1), group)
        return (s - s.mean()) / s.std()

    for b in range(cfg.n_layers):
        p = layer(params, b)
        heads = attention_inputs(p, cfg, x)[1]
        z_heads.append(z(p["wo"], heads, cfg.head_dim))
        x = attention_residual(p, cfg, x, heads)
        hidden = mlp_inputs(p, cfg, x)[1]
        z_neurons.append(z(p["w_down"], hidden, 1))
        x = mlp_residual(p, x, hidden)
    return np.stack(z_heads), np.stack(z_neurons)


def compact_projection_params(params, cfg, head, ffn):
    """Attention+MLP weights of the exported compact model, counted from its array shapes."""
    cparams, _ = compact_from_masked(params, cfg, head, ffn)
    return sum(int(np.prod(p[k].shape)) for p in cparams["layers"] for k in PROJECTIONS if k in p)


def test_flap_meets_the_budget_with_a_global_ranking():
    params_out, cfg_out, head, ffn, info = pruned("flap", "plain", 3.0)
    params, cfg = model("plain", 3.0)
    dense = compact_projection_params(params, cfg, None, None)
    removed = dense - compact_projection_params(params_out, cfg_out, head, ffn)
    budget = SPARSITY * cfg.attn_mlp_params() + 2 * cfg.hidden_size * cfg.n_layers  # and the biases FLAP adds
    head_p, _ = group_params(cfg)
    largest_group = 2 * head_p  # a head that also frees its KV head
    assert removed == info["removed_params"] and info["budget_params"] == round(budget)
    assert abs(removed - budget) <= largest_group / 2
    assert info["achieved_sparsity"] == pytest.approx(removed / cfg.attn_mlp_params())
    # One threshold over every layer and both module types.
    z_heads, z_neurons = flap_z_np(params, cfg)
    assert_lowest_removed(np.concatenate([z_heads.ravel(), z_neurons.ravel()]),
                          np.concatenate([head.ravel(), ffn.ravel()]))
    # Adaptive: the per-layer ratios are not uniform.
    assert len(set(info["removed_neurons"])) > 1
    assert info["removed"] != initial_grid(cfg, SPARSITY, TyrConfig(mlp_multiple=1)).centre.tolist()


def test_flap_ranking_ignores_a_layers_overall_scale():
    """Per-layer standardisation: rescaling the last down_proj (nothing downstream) changes no mask."""
    params, cfg = model("plain")
    layers = dict(params["layers"], w_down=params["layers"]["w_down"].at[2].multiply(10.0))
    _, _, head, ffn, _ = structured_baseline(dict(params, layers=layers), cfg, WINDOWS, SPARSITY, "flap",
                                             progress=False)
    _, _, head_ref, ffn_ref, _ = pruned("flap")
    np.testing.assert_array_equal(head, head_ref)
    np.testing.assert_array_equal(ffn, ffn_ref)


@pytest.mark.parametrize("kind", ["plain", "bias"])
def test_flap_bias_restores_the_mean_outputs_of_block_0(kind):
    params_out, cfg_out, head, ffn, info = pruned("flap", kind)
    params, cfg = model(kind)
    assert cfg_out == cfg.replace(o_bias=True, down_bias=True)
    assert info["added_bias_params"] == (0 if kind == "bias" else 2 * cfg.n_layers * cfg.hidden_size)
    assert params_out["layers"]["bo"].shape == (cfg.n_layers, cfg.hidden_size)
    assert not head[0].all() and not ffn[0].all()
    dense_p, pruned_p = layer(params, 0), layer(params_out, 0)
    x = embed_windows(params, WINDOWS)
    heads = attention_inputs(dense_p, cfg, x)[1]  # block 0's o_proj input: the same in both models
    dense_o = attention_output(dense_p, heads, None, cfg.head_dim)
    pruned_o = attention_output(pruned_p, heads, jnp.asarray(head[0]), cfg.head_dim)
    np.testing.assert_allclose(pruned_o.mean((0, 1)), dense_o.mean((0, 1)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(pruned_o, dense_o, atol=1e-3)
    # down_proj on FLAP's (dense) calibration stream: exact as well
    hidden = mlp_inputs(dense_p, cfg, x + dense_o)[1]
    dense_d = mlp_output(dense_p, hidden, None)
    pruned_d = mlp_output(pruned_p, hidden, jnp.asarray(ffn[0]))
    np.testing.assert_allclose(pruned_d.mean((0, 1)), dense_d.mean((0, 1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,kind", [("wanda-sp", "plain"), ("magnitude", "bias"), ("flap", "plain"),
                                         ("flap", "bias")])
def test_masked_forward_equals_the_compact_model(method, kind):
    params_out, cfg_out, head, ffn, _ = pruned(method, kind)
    tokens = WINDOWS[:2, :20]
    masked = forward(params_out, cfg_out, tokens, jnp.asarray(head), jnp.asarray(ffn))
    cparams, ccfg = compact_from_masked(params_out, cfg_out, head, ffn)
    np.testing.assert_allclose(np.asarray(forward(cparams, ccfg, tokens)), np.asarray(masked), rtol=1e-5, atol=1e-5)
    dense = forward(*model(kind), tokens)
    assert not np.allclose(np.asarray(masked), np.asarray(dense), atol=1e-3)


def test_unknown_method_names_the_known_ones():
    params, cfg = model("plain")
    with pytest.raises(TyrjaxError, match="wanda-sp.*magnitude.*flap"):
        structured_baseline(params, cfg, WINDOWS, SPARSITY, "llm-pruner")


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_flap_rejects_sparsity_outside_0_1(sparsity):
    params, cfg = model("plain")
    with pytest.raises(TyrjaxError, match="strictly between 0 and 1"):
        structured_baseline(params, cfg, WINDOWS, sparsity, "flap", progress=False)


@pytest.mark.parametrize("method", ["wanda-sp", "flap"])
def test_captures_chunked_to_a_small_budget_give_the_same_masks(method):
    params, cfg = model("bias")
    windows = np.random.default_rng(2).integers(0, cfg.vocab_size, (24, 32))
    resident = device_bytes(params) + device_bytes(layer(params, 0))
    budget = int(capture_fixed_bytes(cfg, 24, 32, resident)) + 16 * 32 * cfg.intermediate_size * 4 * RESIDUAL_COPIES
    assert capture_chunk(params, cfg, windows, None, budget) == 16  # two chunks, the second padded
    assert capture_chunk(params, cfg, windows, None, None) is None
    want = structured_baseline(params, cfg, windows, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False)
    got = structured_baseline(params, cfg, windows, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False,
                              budget_bytes=budget)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    for name in ("bo", "b_down"):
        np.testing.assert_allclose(got[0]["layers"][name], want[0]["layers"][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(TyrjaxError, match="structured baseline needs at least"):
        structured_baseline(params, cfg, windows, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False,
                            budget_bytes=resident)


@pytest.mark.parametrize("method,chunked", [("wanda-sp", True), ("magnitude", False), ("flap", False), ("flap", True)])
def test_streamed_blocks_give_the_held_models_result(method, chunked, tmp_path):
    params, cfg = model("plain")
    path = tmp_path / "model"
    save_hf(params, cfg, path)
    windows = np.random.default_rng(2).integers(0, cfg.vocab_size, (24, 32))
    streamed = StreamedBlocks(path, cfg)

    def budget(resident):  # captures of 16 windows at once: two chunks, the second padded
        return int(capture_fixed_bytes(cfg, 24, 32, resident)) + 16 * 32 * cfg.intermediate_size * 4 * RESIDUAL_COPIES

    held_budget = streamed_budget = None
    if chunked:
        held_budget = budget(device_bytes(params) + device_bytes(layer(params, 0)))
        streamed_budget = budget(device_bytes(streamed.head) + device_bytes(streamed.block(0)))
        assert streamed_budget < held_budget
        assert capture_chunk(streamed, cfg, windows, None, streamed_budget) == 16
    want = structured_baseline(params, cfg, windows, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False,
                               budget_bytes=held_budget)
    got = structured_baseline(streamed, cfg, windows, SPARSITY, method, mlp_multiple=MULTIPLE, progress=False,
                              budget_bytes=streamed_budget)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    assert got[1] == want[1] and got[4] == want[4]
    want_compact, want_cfg = compact_model(want[0], want[1], want[2], want[3])
    got_compact, got_cfg = compact_model(got[0], got[1], got[2], got[3])
    assert got_cfg == want_cfg
    for a, b in zip(jax.tree_util.tree_leaves(got_compact), jax.tree_util.tree_leaves(want_compact)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
