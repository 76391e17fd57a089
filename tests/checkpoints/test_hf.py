"""Saving and loading: HF directories (sharded, bf16, compact), orbax, and clear errors."""
import json
import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_reference import tiny_hf_model, torch_logits
from tyrjax.checkpoints.hf import atomic_dir, load_hf_params, load_orbax, save_hf, save_orbax
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params

CFG = ModelConfig(vocab_size=40, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=24, tie_word_embeddings=False)


def pruned_compact():
    params = init_random_params(CFG, 1)
    head = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], bool)
    ffn = np.random.default_rng(0).random((2, 24)) < 0.5
    return (params, head, ffn), compact_from_masked(params, CFG, head, ffn)


def assert_same_logits(p1, c1, p2, c2):
    tokens = np.arange(12)[None] % CFG.vocab_size
    np.testing.assert_allclose(np.asarray(forward(p1, c1, tokens)), np.asarray(forward(p2, c2, tokens)), rtol=1e-6, atol=1e-6)


def test_hf_roundtrip_sharded_dense(tmp_path):
    params = init_random_params(CFG, 0)
    save_hf(params, CFG, tmp_path / "m", max_shard_bytes=4000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    cfg = ModelConfig.from_json_file(tmp_path / "m" / "config.json")
    assert_same_logits(params, CFG, load_hf_params(tmp_path / "m", cfg), cfg)


def test_saved_dense_model_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    params = init_random_params(CFG, 2)
    save_hf(params, CFG, tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tokens = np.arange(10)[None]
    np.testing.assert_allclose(torch_logits(hf, tokens), np.asarray(forward(params, CFG, tokens)), rtol=1e-4, atol=1e-5)


def test_compact_roundtrip_hf_and_orbax(tmp_path):
    _, (cparams, ccfg) = pruned_compact()
    save_hf(cparams, ccfg, tmp_path / "hf")
    cfg = ModelConfig.from_json_file(tmp_path / "hf" / "config.json")
    assert cfg == ccfg
    assert_same_logits(cparams, ccfg, load_hf_params(tmp_path / "hf", cfg), cfg)
    save_orbax(cparams, ccfg, tmp_path / "ob")
    restored, rcfg = load_orbax(tmp_path / "ob")
    assert rcfg == ccfg
    assert_same_logits(cparams, ccfg, restored, rcfg)
    model = load_model(str(tmp_path / "ob"))
    assert model.cfg.layer_heads == (2, 3)


def test_bf16_checkpoint_loads(tmp_path):
    model = tiny_hf_model(tmp_path / "m", "llama")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf", safe_serialization=True)
    cfg = ModelConfig.from_json_file(tmp_path / "bf" / "config.json")
    params = load_hf_params(tmp_path / "bf", cfg, jnp.float32)
    ref = load_hf_params(tmp_path / "m", cfg)
    np.testing.assert_allclose(np.asarray(params["layers"]["wq"]), np.asarray(ref["layers"]["wq"]), rtol=1e-2, atol=1e-2)
    assert load_hf_params(tmp_path / "bf", cfg, jnp.bfloat16)["embed"].dtype == jnp.bfloat16


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TyrjaxError, match="no config.json"):
        load_model(str(tmp_path))
    save_hf(init_random_params(CFG, 0), CFG, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TyrjaxError, match="corrupt"):
        load_model(str(tmp_path / "m"))
    with pytest.raises(TyrjaxError, match="no such file or directory"):
        load_model(str(tmp_path / "nope"))


def test_weights_not_matching_config(tmp_path):
    save_hf(init_random_params(CFG, 0), CFG, tmp_path / "m")
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    hf["intermediate_size"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf))
    with pytest.raises(TyrjaxError, match="mlp.gate_proj.weight.*shape"):
        load_model(str(tmp_path / "m"))


def test_unsupported_architecture_names_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(TyrjaxError, match="LlamaForCausalLM.*Qwen2ForCausalLM"):
        load_model(str(tmp_path))


def test_tokenizer_that_does_not_match_the_model(tmp_path):
    from tokenizers import Tokenizer, models

    save_hf(init_random_params(CFG, 0), CFG, tmp_path / "m")
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)}, unk_token="w0"))
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    with pytest.raises(TyrjaxError, match="100 tokens.*40"):
        load_model(str(tmp_path / "m"))


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_written_directory_has_the_mode_of_a_new_directory(tmp_path):
    """The directory is built under a private temp name; once renamed, others may read it as
    they could any directory this process creates."""
    umask = os.umask(0o022)
    try:
        save_hf(init_random_params(CFG, 0), CFG, tmp_path / "m")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o755
