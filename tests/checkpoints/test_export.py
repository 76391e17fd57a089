"""Exported pruned models load back into tyrjax with the same logits; what is written, and where."""
import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, models

from tyrjax.checkpoints.export import export_pruned, padded_config, padded_model, stock_compatible, stock_config
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, forward_jit, init_random_params, is_stacked

CFG = ModelConfig(vocab_size=40, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=24, max_position_embeddings=32)
TOKENS = np.arange(14)[None] % CFG.vocab_size
EVERY_THIRD = np.arange(24)[None, :].repeat(2, 0) % 3 == 0


def pruned(head_mask, ffn_mask):
    """The compact model of a random model under these masks."""
    params = init_random_params(CFG, 1, scale=0.3)
    return compact_from_masked(params, CFG, np.asarray(head_mask, bool), np.asarray(ffn_mask, bool))


def logits(params, cfg):
    return np.asarray(forward_jit(params, cfg, TOKENS))


@pytest.fixture
def tokenizer_dir(tmp_path):
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(CFG.vocab_size)}, unk_token="w0")).save(
        str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"unk_token": "w0"}))
    return directory


def test_uneven_widths_export_a_compact_directory_only(tmp_path, tokenizer_dir):
    cparams, ccfg = pruned([[1, 1, 0, 0], [0, 1, 1, 1]], np.random.default_rng(0).random((2, 24)) < 0.5)
    assert not stock_compatible(ccfg)
    written = export_pruned(cparams, ccfg, tmp_path / "run", tokenizer_dir)
    assert written == {"model": str(tmp_path / "run" / "model")}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    hf = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert hf["tyrjax"]["layer_heads"] == [2, 3] and hf["tyrjax"]["layer_kv_heads"] == [1, 2]
    loaded = load_model(written["model"])
    assert loaded.cfg == ccfg and not is_stacked(loaded.params) and loaded.tokenizer is not None
    np.testing.assert_array_equal(logits(loaded.params, loaded.cfg), logits(cparams, ccfg))


def test_uniform_widths_also_export_a_stock_checkpoint(tmp_path, tokenizer_dir):
    cparams, ccfg = pruned([[1, 0, 0, 1], [0, 1, 1, 0]], EVERY_THIRD)  # one query head per KV head
    assert stock_compatible(ccfg)
    written = export_pruned(cparams, ccfg, tmp_path, tokenizer_dir)
    assert written == {"model": str(tmp_path / "model"), "hf_llama": str(tmp_path / "hf_llama")}
    hf = json.loads((tmp_path / "hf_llama" / "config.json").read_text())
    assert "tyrjax" not in hf and hf["architectures"] == ["LlamaForCausalLM"]
    assert (hf["num_attention_heads"], hf["num_key_value_heads"], hf["intermediate_size"]) == (2, 2, 8)
    assert (tmp_path / "hf_llama" / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    stock = load_model(written["hf_llama"])
    assert stock.cfg == stock_config(ccfg) and not stock.cfg.is_compact and is_stacked(stock.params)
    assert load_model(written["model"]).cfg == ccfg
    np.testing.assert_allclose(logits(stock.params, stock.cfg), logits(cparams, ccfg), rtol=1e-6, atol=1e-6)


def test_stock_compatible_needs_equal_widths_and_consecutive_groups():
    uniform = CFG.replace(layer_heads=(4, 4), layer_kv_heads=(2, 2), layer_ffn=(8, 8),
                          layer_kv_map=((0, 0, 1, 1), (0, 0, 1, 1)))
    assert stock_compatible(CFG) and stock_compatible(uniform)
    assert not stock_compatible(uniform.replace(layer_ffn=(8, 9)))
    assert not stock_compatible(uniform.replace(layer_kv_map=((0, 1, 0, 1), (0, 0, 1, 1))))
    assert not stock_compatible(uniform.replace(layer_heads=(3, 3), layer_kv_map=((0, 0, 1), (0, 0, 1))))
    assert not stock_compatible(uniform.replace(layer_heads=(0, 0), layer_kv_heads=(0, 0), layer_kv_map=((), ())))
    assert not stock_compatible(uniform.replace(o_bias=True))
    assert not stock_compatible(uniform.replace(down_bias=True))


def test_export_replaces_an_earlier_model_and_keeps_the_rest_of_the_directory(tmp_path):
    first_params, first_cfg = pruned([[1, 1, 1, 0], [1, 1, 1, 1]], EVERY_THIRD)
    export_pruned(first_params, first_cfg, tmp_path, None)
    (tmp_path / "model" / "stale.bin").write_bytes(b"old")
    (tmp_path / "metrics.json").write_text("{}")
    cparams, ccfg = pruned([[0, 1, 1, 1], [1, 0, 0, 0]], ~EVERY_THIRD)
    export_pruned(cparams, ccfg, tmp_path, None)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "metrics.json").read_text() == "{}"
    loaded = load_model(str(tmp_path / "model"))
    assert loaded.cfg == ccfg and loaded.cfg.layer_heads == (3, 1)
    assert jax.tree_util.tree_structure(loaded.params) == jax.tree_util.tree_structure(cparams)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(cparams)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- what each directory claims, and the padded stock export ----------------------------------
UNEVEN_HEADS = [[1, 1, 0, 1], [0, 0, 1, 0]]  # layer 0: groups of 2 and 1 query heads; layer 1: one head


def transformers_model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def test_a_compact_model_names_a_tyrjax_architecture_that_transformers_refuses(tmp_path):
    cparams, ccfg = pruned(UNEVEN_HEADS, EVERY_THIRD)
    written = export_pruned(cparams, ccfg, tmp_path, None)
    hf = json.loads((tmp_path / "model" / "config.json").read_text())
    assert hf["architectures"] == ["TyrjaxCompactLlamaForCausalLM"] and hf["model_type"] == "tyrjax_compact"
    with pytest.raises(ValueError, match="tyrjax_compact"):
        transformers_model(written["model"])
    np.testing.assert_array_equal(logits(load_model(written["model"]).params, ccfg), logits(cparams, ccfg))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_padded_export_gives_transformers_the_compact_logits(tmp_path, arch):
    from hf_reference import torch_logits

    cfg = CFG.replace(architecture=arch, attention_bias=arch == "qwen2")
    params = init_random_params(cfg, 2, scale=0.3)
    ffn = np.random.default_rng(1).random((2, 24)) < 0.4
    cparams, ccfg = compact_from_masked(params, cfg, np.asarray(UNEVEN_HEADS, bool), ffn)
    written = export_pruned(cparams, ccfg, tmp_path, None, ("hf-padded",))
    assert sorted(written) == ["hf_padded", "model"]
    hf = json.loads((tmp_path / "hf_padded" / "config.json").read_text())
    assert hf["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert "tyrjax" not in hf
    widest_ffn = max(ccfg.layer_ffn)
    assert (hf["num_key_value_heads"], hf["num_attention_heads"], hf["intermediate_size"]) == (2, 4, widest_ffn)
    compact = logits(cparams, ccfg)
    np.testing.assert_allclose(torch_logits(transformers_model(written["hf_padded"]), TOKENS), compact,
                               rtol=1e-4, atol=1e-5)
    stock = load_model(written["hf_padded"])
    np.testing.assert_allclose(logits(stock.params, stock.cfg), compact, rtol=1e-5, atol=1e-5)


def test_padding_keeps_each_query_head_in_its_kv_group():
    heads = [[0, 1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 1, 1, 1, 1]]  # 8 heads, 2 KV heads of 4
    cfg = CFG.replace(n_heads=8, head_dim=2)
    cparams, ccfg = compact_from_masked(init_random_params(cfg, 0), cfg, np.asarray(heads, bool), EVERY_THIRD)
    padded = padded_config(ccfg)
    assert (padded.n_kv_heads, padded.n_heads) == (2, 8)  # the largest group is 4 (layer 1's second KV head)
    layer = padded_model(cparams, ccfg)[0]["layers"]
    wq = np.asarray(layer["wq"][0]).reshape(16, 8, 2)
    kept = np.asarray(cparams["layers"][0]["wq"]).reshape(16, 3, 2)
    np.testing.assert_array_equal(wq[:, :3], kept)  # layer 0's three heads read KV head 0: slots 0-2
    assert not wq[:, 3:].any()
    wq1 = np.asarray(layer["wq"][1]).reshape(16, 8, 2)
    np.testing.assert_array_equal(wq1[:, [0, 4, 5, 6, 7]], np.asarray(cparams["layers"][1]["wq"]).reshape(16, 5, 2))
    assert not wq1[:, 1:4].any()


def test_qwen2_with_uniform_widths_exports_a_stock_checkpoint(tmp_path):
    from hf_reference import torch_logits

    cfg = CFG.replace(architecture="qwen2", attention_bias=True)
    cparams, ccfg = compact_from_masked(init_random_params(cfg, 4, scale=0.3), cfg,
                                        np.array([[1, 0, 0, 1], [0, 1, 1, 0]], bool), EVERY_THIRD)
    written = export_pruned(cparams, ccfg, tmp_path, None)
    assert sorted(written) == ["hf_llama", "model"]
    hf = json.loads((tmp_path / "hf_llama" / "config.json").read_text())
    assert hf["architectures"] == ["Qwen2ForCausalLM"] and "tyrjax" not in hf
    np.testing.assert_allclose(torch_logits(transformers_model(written["hf_llama"]), TOKENS), logits(cparams, ccfg),
                               rtol=1e-4, atol=1e-5)


def test_a_later_export_removes_what_the_new_model_does_not_have(tmp_path):
    export_pruned(*pruned([[1, 0, 0, 1], [0, 1, 1, 0]], EVERY_THIRD), tmp_path, None, ("hf-padded",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_llama", "hf_padded", "model"]
    export_pruned(*pruned(UNEVEN_HEADS, EVERY_THIRD), tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no stale stock checkpoints, no temp dirs


def test_a_dense_config_exports_as_itself(tmp_path):
    params = init_random_params(CFG, 0, scale=0.3)
    written = export_pruned(params, CFG, tmp_path, None, ("hf-padded",))
    assert sorted(written) == ["hf_llama", "hf_padded", "model"]
    for name in written:
        loaded = load_model(written[name])
        assert loaded.cfg == CFG
        np.testing.assert_allclose(logits(loaded.params, loaded.cfg), logits(params, CFG), rtol=1e-6, atol=1e-6)


def test_an_export_that_cannot_be_written_writes_nothing(tmp_path):
    cparams, ccfg = pruned(UNEVEN_HEADS, EVERY_THIRD)
    with pytest.raises(TyrjaxError, match="biases on o_proj or down_proj"):
        export_pruned(cparams, ccfg.replace(down_bias=True), tmp_path / "run", None, ("hf-padded",))
    with pytest.raises(TyrjaxError, match="--export onnx: unknown"):
        export_pruned(cparams, ccfg, tmp_path / "run", None, ("onnx",))
    assert not (tmp_path / "run").exists()
