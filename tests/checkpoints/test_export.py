"""Exported pruned models load back into tyrjax with the same logits; what is written, and where."""
import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, models

from tyrjax.checkpoints.export import export_pruned, stock_compatible, stock_config
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
