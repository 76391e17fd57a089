"""The layer-sequential pipeline: one-shot pruning, SDS, both parameter forms, streams in chunks, the commands."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_reference import torch_logits
from tyrjax.calibration.statistics import (attention_inputs, attention_residual, embed_windows, heads_of, mlp_inputs,
                                           stats_of)
from tyrjax.model.blocks import HeldBlocks, device_bytes, layer
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.layers import rms_norm
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.decoder import (compact_from_masked, forward, init_random_params, run_layers_compact, run_layers_masked,
                                  stack_layers, to_compact, unstack_layers)
from tyrjax.sds import DEFAULT_SDS_L1, DEFAULT_SDS_LR, LINEAR, prune_oneshot, run_sds_pipeline
from tyrjax.sds.pipeline import (_block_of, _stack_emptying, fit_state_bytes, stream_windows, streams_fit, sums_bytes,
                                 window_bytes)
from tyrjax.sparse import parse_pattern, sparsegpt_prune

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=48)
WINDOWS = np.random.default_rng(0).integers(0, 64, (4, 32)).astype(np.int32)
SDS_STEPS = 30


@pytest.fixture(scope="module")
def params():
    return init_random_params(CFG, 0)


def linear_weights(params, cfg=CFG):
    """(key, W) of every linear layer, in either form."""
    layers = params["layers"]
    for i in range(cfg.n_layers):
        p = jax.tree_util.tree_map(lambda a, i=i: a[i], layers) if isinstance(layers, dict) else layers[i]
        for name in LINEAR:
            yield f"{i}.{name}", np.asarray(p[name])


def assert_pattern(params, pattern_text, cfg=CFG):
    pattern = parse_pattern(pattern_text)
    for key, W in linear_weights(params, cfg):
        kept = W != 0
        if hasattr(pattern, "m"):
            groups = kept.reshape(W.shape[0] // pattern.m, pattern.m, W.shape[1]).sum(axis=1)
            assert (groups == pattern.n).all(), key
        else:
            assert kept.size - kept.sum() == round(pattern.sparsity * W.size), key


@pytest.mark.parametrize("method,pattern", [("sparsegpt", "0.5"), ("sparsegpt", "2:4"), ("wanda", "4:8"), ("magnitude", "0.5")])
def test_oneshot_gives_the_exact_pattern(params, method, pattern):
    pruned, report = prune_oneshot(params, CFG, WINDOWS, pattern, method, progress=False)
    assert_pattern(pruned, pattern)
    assert report["sparsity"] == {"target": 0.5, "achieved": 0.5}
    assert set(report["layers"]) == {f"{i}.{n}" for i in range(2) for n in LINEAR}
    assert all(r["sparsity"] == 0.5 and r["loss"] > 0 for r in report["layers"].values())
    for key in ("embed", "final_norm", "lm_head"):
        np.testing.assert_array_equal(pruned[key], params[key])
    if method == "magnitude":  # no update: the dense weights under an independent top-|W| mask
        zeroed = dict(params, layers=dict(params["layers"]))
        for name in LINEAR:
            W = np.asarray(params["layers"][name])
            flat = np.abs(W).reshape(W.shape[0], -1)
            threshold = np.sort(flat, axis=1)[:, flat.shape[1] // 2 - 1][:, None, None]
            zeroed["layers"][name] = jnp.asarray(np.where(np.abs(W) > threshold, W, 0.0))
            np.testing.assert_array_equal(pruned["layers"][name], zeroed["layers"][name])
        np.testing.assert_array_equal(forward(pruned, CFG, WINDOWS), forward(zeroed, CFG, WINDOWS))


def _block_inputs_by_forward(pruned, i):
    """Block i's input on the pruned model, by the model's own forward (either form)."""
    x = embed_windows(pruned, WINDOWS)
    layers = pruned["layers"]
    if isinstance(layers, dict):
        return run_layers_masked(jax.tree_util.tree_map(lambda a: a[:i], layers), CFG, x)
    return run_layers_compact(layers[:i], CFG_COMPACT, x, jnp.arange(WINDOWS.shape[1]))[0]


def test_sequential_pipeline_equals_direct_sparsegpt(params):
    """Block 0's layers equal sparsegpt_prune on inputs captured by hand; block 1 sees pruned block 0."""
    pattern = "2:4"
    pruned, _ = prune_oneshot(params, CFG, WINDOWS, pattern, "sparsegpt", progress=False)
    dense0, new0 = layer(params, 0), layer(pruned, 0)

    def direct(W, a):
        return np.asarray(sparsegpt_prune(W, stats_of(a).gram, pattern)[0])

    x = embed_windows(params, WINDOWS)
    normed, _ = attention_inputs(dense0, CFG, x)
    for name in ("wq", "wk", "wv"):
        np.testing.assert_allclose(new0[name], direct(dense0[name], normed), rtol=1e-5, atol=1e-6)
    qkv_pruned = {**dense0, **{k: new0[k] for k in ("wq", "wk", "wv")}}
    _, heads = attention_inputs(qkv_pruned, CFG, x)
    np.testing.assert_allclose(new0["wo"], direct(dense0["wo"], heads), rtol=1e-5, atol=1e-6)
    mid = attention_residual(new0, CFG, x, heads)
    normed, _ = mlp_inputs(dense0, CFG, mid)
    _, hidden = mlp_inputs({**dense0, "w_gate": new0["w_gate"], "w_up": new0["w_up"]}, CFG, mid)
    np.testing.assert_allclose(new0["w_up"], direct(dense0["w_up"], normed), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new0["w_down"], direct(dense0["w_down"], hidden), rtol=1e-5, atol=1e-6)

    x1 = _block_inputs_by_forward(pruned, 1)
    normed1 = rms_norm(x1, params["layers"]["attn_norm"][1], CFG.rms_norm_eps)
    np.testing.assert_allclose(pruned["layers"]["wq"][1], direct(params["layers"]["wq"][1], normed1), rtol=1e-5, atol=1e-6)


HEAD_MASK = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
FFN_MASK = np.arange(48)[None, :] < np.array([[40], [32]])
CFG_COMPACT = compact_from_masked(init_random_params(CFG, 0), CFG, HEAD_MASK, FFN_MASK)[1]


def test_compact_form(params):
    """A dense model in list form prunes like the stacked one; a Týr-style compact one keeps its form and kv_map."""
    stacked, _ = prune_oneshot(params, CFG, WINDOWS, "2:4", "sparsegpt", progress=False)
    listed, _ = prune_oneshot(*to_compact(params, CFG), WINDOWS, "2:4", "sparsegpt", progress=False)
    assert isinstance(listed["layers"], list)
    for (k, a), (_, b) in zip(linear_weights(stacked), linear_weights(listed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)

    cparams, ccfg = compact_from_masked(params, CFG, HEAD_MASK, FFN_MASK)
    assert ccfg == CFG_COMPACT and ccfg.kv_map(0) != ccfg.kv_map(1)
    pruned, report = prune_oneshot(cparams, ccfg, WINDOWS, "2:4", "sparsegpt", progress=False)
    assert_pattern(pruned, "2:4", ccfg)
    assert pruned["layers"][1]["w_down"].shape == (32, 32) and report["sparsity"]["achieved"] == 0.5
    x1 = _block_inputs_by_forward(pruned, 1)  # block 1 was pruned on the stream of pruned block 0
    normed1 = rms_norm(x1, cparams["layers"][1]["attn_norm"], CFG.rms_norm_eps)
    expected = sparsegpt_prune(cparams["layers"][1]["wq"], stats_of(normed1).gram, "2:4")[0]
    np.testing.assert_allclose(pruned["layers"][1]["wq"], expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(forward(pruned, ccfg, WINDOWS))).all()


def test_sds_never_worse_than_oneshot_and_keeps_the_pattern(params):
    oneshot, oneshot_report = prune_oneshot(params, CFG, WINDOWS, "2:4", "sparsegpt", progress=False)
    sds, report = run_sds_pipeline(params, CFG, WINDOWS, "2:4", "sparsegpt", steps=SDS_STEPS, l1=1e-4, l2=0.0, progress=False)
    assert_pattern(sds, "2:4")
    assert report["method"] == "sds-sparsegpt" and report["hyperparameters"]["adjust_steps"] == SDS_STEPS
    assert sum(report["chosen"].values()) == len(LINEAR) * CFG.n_layers
    for key, r in report["layers"].items():
        loss = r["loss"]
        # the paper's rule: adjust only where re-pruning did not beat one-shot
        assert ("adjusted" in loss) == (loss["repruned"] >= loss["oneshot"]), key
        candidates = [loss[k] for k in ("oneshot", "repruned", "adjusted") if k in loss]
        assert loss["chosen"] == loss[r["chosen"]] == min(candidates), key
        assert loss["chosen"] <= loss["oneshot"] and loss["redense"] < loss["oneshot"], key
    assert sum(r["loss"]["chosen"] for r in report["layers"].values()) < 0.9 * sum(
        r["loss"]["oneshot"] for r in report["layers"].values())
    for name in ("wq", "wk", "wv"):  # block 0's q/k/v see the same inputs in both pipelines
        np.testing.assert_allclose(report["layers"][f"0.{name}"]["loss"]["oneshot"],
                                   oneshot_report["layers"][f"0.{name}"]["loss"], rtol=1e-4)

    compact = compact_from_masked(params, CFG, HEAD_MASK, FFN_MASK)  # SDS after Týr
    ablation, ab_report = run_sds_pipeline(*compact, WINDOWS, "0.5", "wanda", steps=SDS_STEPS,
                                           adjust_steps=0, l1=0.0, l2=0.0, inputs="dense", progress=False)
    assert isinstance(ablation["layers"], list) and ab_report["chosen"]["adjusted"] == 0
    assert_pattern(ablation, "0.5", CFG_COMPACT)
    assert all(r["loss"]["chosen"] <= r["loss"]["oneshot"] for r in ab_report["layers"].values())


def test_prune_command_writes_the_run_dir(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    argv = ["prune", "--model", str(tiny_model_dir), "--method", "sparsegpt", "--pattern", "2:4",
            "--calib-windows", "2", "--eval-windows", "1", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sparsegpt" and metrics["pattern"] == "2:4"
    assert metrics["sparsity"]["target"] == 0.5 and metrics["sparsity"]["achieved"] == 0.5
    assert len(metrics["sparsity"]["per_layer"]) == 14
    assert set(metrics["ppl"]) == set(metrics["dense_ppl"]) == {"shakespeare", "pydoc"}
    assert {"prune", "eval", "dense_eval"} <= set(metrics["wall_s"])
    losses = json.loads((out / "layer_losses.json").read_text())
    assert losses["1.w_down"]["loss"] > 0
    assert json.loads((out / "command.json").read_text())["argv"]

    ours = load_model(str(out / "model"))  # orbax
    assert_pattern(ours.params, "2:4", ours.cfg)
    tokens = np.arange(1, 17)[None]
    hf = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    assert float((hf.model.layers[0].self_attn.q_proj.weight == 0).float().mean()) == 0.5
    np.testing.assert_allclose(torch_logits(hf, tokens), np.asarray(forward(ours.params, ours.cfg, tokens)),
                               rtol=1e-4, atol=1e-5)


def test_sds_command_records_hyperparameters(tiny_model_dir, tmp_path):
    out = tmp_path / "sds"
    argv = ["sds", "--model", str(tiny_model_dir), "--pruner", "wanda", "--pattern", "4:8", "--steps", "5",
            "--adjust", "always", "--l2", "0.001", "--calib-windows", "2", "--eval-windows", "1", "--eval-data", "pydoc", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sds-wanda" and metrics["sparsity"]["achieved"] == 0.5 and set(metrics["ppl"]) == {"pydoc"}
    hp = metrics["hyperparameters"]
    assert hp["steps"] == hp["adjust_steps"] == 5 and hp["l2"] == 0.001 and hp["inputs"] == "pruned"
    assert hp["adjust"] == "always"
    assert hp["l1"] == DEFAULT_SDS_L1 and hp["lr"] == DEFAULT_SDS_LR["wanda"] == 1e-3
    losses = json.loads((out / "layer_losses.json").read_text())
    assert set(losses["0.wq"]["loss"]) == {"oneshot", "redense", "repruned", "adjusted", "chosen"}
    assert (out / "hf" / "model.safetensors").exists() and (out / "model" / "orbax").is_dir()


@pytest.mark.parametrize("command,pattern", [("prune", "5:4"), ("sds", "0:4"), ("prune", "1.2"), ("sds", "2:x")])
def test_invalid_pattern_is_a_clear_error(tiny_model_dir, command, pattern, capsys):
    method = ["--method", "wanda"] if command == "prune" else ["--pruner", "wanda"]
    assert main([command, "--model", str(tiny_model_dir), *method, "--pattern", pattern]) == 2
    err = capsys.readouterr().err
    assert repr(pattern) in err and "N:M" in err


def test_api_errors(params):
    with pytest.raises(TyrjaxError, match="block 0 wq has 32 inputs, not a multiple of M=5"):
        prune_oneshot(params, CFG, WINDOWS, "3:5", "wanda", progress=False)
    with pytest.raises(TyrjaxError, match="'obs'"):
        prune_oneshot(params, CFG, WINDOWS, "0.5", "obs", progress=False)
    with pytest.raises(TyrjaxError, match="inputs 'both'"):
        run_sds_pipeline(params, CFG, WINDOWS, "0.5", "wanda", inputs="both", progress=False)
    with pytest.raises(TyrjaxError, match="calibration windows"):
        prune_oneshot(params, CFG, WINDOWS[0], "0.5", "wanda", progress=False)


def test_bad_sds_hyperparameters_fail_early(tiny_model_dir, capsys):
    assert main(["sds", "--model", str(tiny_model_dir), "--pattern", "2:4", "--l1", "-1"]) == 2
    assert "l1=-1.0" in capsys.readouterr().err


def test_streams_on_the_host_in_window_chunks_equal_the_streams_on_the_device_and_compile_once(params):
    windows = np.random.default_rng(1).integers(0, 64, (6, 32)).astype(np.int32)
    budget = int(2 * device_bytes(params) + sums_bytes(CFG) + 4 * window_bytes(CFG, 32))
    assert 2 * device_bytes(params) + fit_state_bytes(CFG) < budget
    assert stream_windows(CFG, 6, 32, budget, 2 * device_bytes(params)) == 4  # chunks of 4 and 2 + 2 padding
    assert not streams_fit(CFG, 6, 32, budget, 2 * device_bytes(params))
    for run in (lambda **kw: prune_oneshot(params, CFG, windows, "2:4", "sparsegpt", progress=False, **kw),
                lambda **kw: run_sds_pipeline(params, CFG, windows, "2:4", "sparsegpt", steps=SDS_STEPS,
                                              progress=False, **kw)):
        want, want_report = run()
        heads_of.clear_cache()
        got, report = run(budget_bytes=budget)
        assert heads_of._cache_size() == 1  # every chunk of every block: one compiled function
        assert isinstance(got["layers"]["wq"], np.ndarray)  # the fitted blocks left the device
        for (key, a), (_, b) in zip(linear_weights(got), linear_weights(want)):
            np.testing.assert_array_equal(a == 0, b == 0, err_msg=key)  # the same weights pruned
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=key)  # Gram sums re-associated
        for key, record in want_report["layers"].items():
            np.testing.assert_allclose(report["layers"][key]["loss"] if "chosen" not in record
                                       else report["layers"][key]["loss"]["chosen"],
                                       record["loss"] if "chosen" not in record else record["loss"]["chosen"],
                                       rtol=1e-3, atol=1e-7, err_msg=key)
        assert_pattern(got, "2:4")
    blocks, _ = run_sds_pipeline(HeldBlocks(params, CFG), CFG, windows, "2:4", "sparsegpt", steps=SDS_STEPS,
                                 progress=False, budget_bytes=budget)
    for i, block in enumerate(blocks["layers"]):  # a model given block by block: the compact form
        for name in LINEAR:
            np.testing.assert_allclose(block[name], got["layers"][name][i], rtol=1e-4, atol=1e-5)
    with pytest.raises(TyrjaxError, match="SDS needs at least"):
        run_sds_pipeline(params, CFG, windows, "2:4", "sparsegpt", progress=False, budget_bytes=device_bytes(params))


def test_held_blocks_are_copied_one_at_a_time_and_restacked_emptying_the_list():
    cfg = ModelConfig(vocab_size=64, hidden_size=16, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=4, intermediate_size=32)
    params = init_random_params(cfg, 0)
    blocks = unstack_layers(params["layers"])
    for i, want in enumerate(blocks):
        got = _block_of(params, i)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    want = stack_layers(blocks)
    fitted = [dict(b) for b in blocks]
    got = _stack_emptying(fitted)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert fitted == [{}, {}, {}]  # every parameter left the list once stacked
