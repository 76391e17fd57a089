"""Logits equal transformers' PyTorch models for tiny random configs covering the family."""
import numpy as np
import pytest

from hf_reference import tiny_hf_model, torch_logits
from tyrjax.checkpoints.hf import load_hf_params
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import forward_jit

CASES = {
    "llama-gqa-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-mha-untied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "llama3-rope-scaling": ("llama", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, rope_theta=500000.0)),
    "llama-linear-rope": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-attention-bias": ("llama", dict(attention_bias=True)),
    "llama-head-dim-16": ("llama", dict(head_dim=16)),
    "qwen2-bias-untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen2-gqa4": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    arch, overrides = CASES[case]
    model = tiny_hf_model(tmp_path, arch, **overrides)
    cfg = ModelConfig.from_json_file(tmp_path / "config.json")
    params = load_hf_params(tmp_path, cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 40))
    ours = np.asarray(forward_jit(params, cfg, tokens))
    ref = torch_logits(model, tokens)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
