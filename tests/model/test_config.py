"""ModelConfig: read from Hugging Face config.json dicts, written back, derived widths and counts, clear errors."""
import dataclasses
import json

import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, count_params, init_random_params

# The shapes of real config.json files (transformers 4 layout: rope_theta and rope_scaling at the top).
LLAMA_3_2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "torch_dtype": "bfloat16",
}
QWEN2_5 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": 32768,
    "use_sliding_window": False, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643,
}
MISTRAL_V03 = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": None,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}

TINY = ModelConfig(vocab_size=50, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                   intermediate_size=24)


def compact_tiny() -> ModelConfig:
    """TINY pruned to (2 heads on 1 KV head, 10 neurons) and (3 heads on 2 KV heads, 0 neurons)."""
    return TINY.replace(layer_heads=(2, 3), layer_kv_heads=(1, 2), layer_ffn=(10, 0),
                        layer_kv_map=((0, 0), (0, 1, 1)))


# --- reading config.json ---------------------------------------------------------------------
def test_llama_config():
    cfg = ModelConfig.from_hf(LLAMA_3_2)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.n_layers, cfg.intermediate_size) == (128256, 2048, 16, 8192)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.group_size) == (32, 8, 64, 4)
    assert (cfg.architecture, cfg.attention_bias, cfg.o_bias, cfg.down_bias) == ("llama", False, False, False)
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings) == (1e-5, 500000.0, 131072)
    assert cfg.tie_word_embeddings and not cfg.is_compact
    assert (cfg.bos_token_id, cfg.eos_token_id) == (128000, 128001)  # the first of a list of EOS ids
    assert cfg.rope_type == "llama3" and dict(cfg.rope_scaling)["factor"] == 32.0


def test_qwen2_config_has_qkv_biases_and_no_o_bias():
    cfg = ModelConfig.from_hf(QWEN2_5)
    assert (cfg.architecture, cfg.attention_bias, cfg.o_bias) == ("qwen2", True, False)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.group_size) == (14, 2, 7)
    assert cfg.head_dim == 896 // 14  # no head_dim key: hidden_size / heads
    assert cfg.rope_type == "default" and cfg.rope_scaling is None


def test_mistral_without_sliding_window_is_a_llama():
    cfg = ModelConfig.from_hf(MISTRAL_V03)
    assert (cfg.architecture, cfg.head_dim, cfg.group_size, cfg.tie_word_embeddings) == ("llama", 128, 4, False)


def test_sliding_window_as_long_as_the_context_is_accepted():
    cfg = ModelConfig.from_hf({**MISTRAL_V03, "sliding_window": 32768})
    assert cfg.architecture == "llama"


def test_transformers_5_layout_with_rope_parameters():
    """transformers 5 writes rope_theta and any scaling inside rope_parameters, and may omit
    architectures (these dicts are what its LlamaConfig / Qwen2Config save)."""
    shape = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-06}
    plain = ModelConfig.from_hf({**shape, "model_type": "llama", "head_dim": 8,
                                 "rope_parameters": {"rope_theta": 20000.0, "rope_type": "default"}})
    assert (plain.rope_theta, plain.rope_scaling, plain.architecture) == (20000.0, None, "llama")
    scaled = ModelConfig.from_hf({**shape, "model_type": "llama", "rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 500000.0}})
    assert scaled.rope_theta == 500000.0 and scaled.rope_type == "llama3"
    assert dict(scaled.rope_scaling)["original_max_position_embeddings"] == 16
    qwen = ModelConfig.from_hf({**shape, "model_type": "qwen2", "sliding_window": None, "use_sliding_window": False,
                                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    assert (qwen.architecture, qwen.attention_bias, qwen.head_dim, qwen.rope_theta) == ("qwen2", True, 8, 10000.0)


def test_missing_optional_keys_take_their_defaults():
    minimal = {"model_type": "llama", "vocab_size": 10, "hidden_size": 12, "num_hidden_layers": 1,
               "num_attention_heads": 3, "intermediate_size": 20}
    cfg = ModelConfig.from_hf(minimal)
    assert (cfg.n_kv_heads, cfg.group_size, cfg.head_dim) == (3, 1, 4)  # no num_key_value_heads: multi-head
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings) == (1e-6, 10000.0, 2048)
    assert cfg.kv_map(0) == (0, 1, 2)


def test_old_style_rope_scaling_type_key():
    cfg = ModelConfig.from_hf({**LLAMA_3_2, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert cfg.rope_type == "linear" and cfg.rope_scaling == (("factor", 2.0), ("type", "linear"))


def test_attention_bias_on_llama_implies_o_bias_unless_told_otherwise():
    assert ModelConfig.from_hf({**LLAMA_3_2, "attention_bias": True}).o_bias
    told = {**LLAMA_3_2, "attention_bias": True, "tyrjax": {"o_bias": False}}
    assert not ModelConfig.from_hf(told).o_bias


# --- derived widths and counts ----------------------------------------------------------------
def test_dense_kv_map_groups_consecutive_heads():
    cfg = TINY.replace(n_heads=6, n_kv_heads=2)
    assert cfg.group_size == 3
    assert [cfg.kv_map(i) for i in range(2)] == [(0, 0, 0, 1, 1, 1)] * 2
    assert [cfg.heads(i) for i in range(2)] == [6, 6] and cfg.ffn(1) == 24 and cfg.kv_heads(0) == 2


def test_compact_config_per_layer_widths():
    cfg = compact_tiny()
    assert cfg.is_compact
    assert [(cfg.heads(i), cfg.kv_heads(i), cfg.ffn(i), cfg.kv_map(i)) for i in range(2)] == [
        (2, 1, 10, (0, 0)), (3, 2, 0, (0, 1, 1))]
    d, hd = 16, 4
    assert cfg.attn_params(0) == 2 * d * 2 * hd + 2 * d * 1 * hd
    assert cfg.attn_params(1) == 2 * d * 3 * hd + 2 * d * 2 * hd
    assert (cfg.mlp_params(0), cfg.mlp_params(1)) == (3 * d * 10, 0)


def test_bias_counts():
    cfg = TINY.replace(attention_bias=True, o_bias=True, down_bias=True)
    q, kv, d = 4 * 4, 2 * 4, 16
    assert cfg.attn_params(0) == TINY.attn_params(0) + q + 2 * kv + d
    assert cfg.mlp_params(0) == TINY.mlp_params(0) + d


@pytest.mark.parametrize("changes", [
    {}, {"tie_word_embeddings": True}, {"attention_bias": True, "o_bias": True, "down_bias": True},
    {"architecture": "qwen2", "attention_bias": True, "n_kv_heads": 1},
])
def test_total_params_counts_every_parameter(changes):
    cfg = TINY.replace(**changes)
    params = init_random_params(cfg, 0)
    assert cfg.total_params() == count_params(params)
    head = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], bool)
    ffn = np.arange(24)[None, :] % np.array([[2], [5]]) == 0
    cparams, ccfg = compact_from_masked(params, cfg, head, ffn)
    assert ccfg.total_params() == count_params(cparams)
    assert ccfg.attn_mlp_params() < cfg.attn_mlp_params()


# --- writing config.json ----------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    ModelConfig.from_hf(LLAMA_3_2),
    ModelConfig.from_hf(QWEN2_5),
    ModelConfig.from_hf(MISTRAL_V03),
    TINY.replace(attention_bias=True, o_bias=False, down_bias=True),
    compact_tiny(),
    compact_tiny().replace(architecture="qwen2", attention_bias=True),
], ids=["llama3", "qwen2", "mistral", "llama-biases", "compact", "compact-qwen2"])
def test_round_trip_through_config_json(cfg):
    hf = json.loads(json.dumps(cfg.to_hf()))
    back = ModelConfig.from_hf(hf)
    assert back == cfg
    assert hash(back) == hash(cfg)  # configs are static arguments of jitted functions


def test_written_config_is_stock_unless_it_must_say_more():
    dense = ModelConfig.from_hf(LLAMA_3_2).to_hf()
    assert "tyrjax" not in dense and dense["architectures"] == ["LlamaForCausalLM"]
    assert dense["rope_scaling"]["rope_type"] == "llama3" and dense["mlp_bias"] is False
    compact = compact_tiny().to_hf()
    assert compact["tyrjax"] == {"layer_heads": [2, 3], "layer_kv_heads": [1, 2], "layer_ffn": [10, 0],
                                 "layer_kv_map": [[0, 0], [0, 1, 1]]}
    assert compact["num_attention_heads"] == 4 and compact["intermediate_size"] == 24  # the dense widths
    assert compact["architectures"] == ["TyrjaxCompactLlamaForCausalLM"] and compact["model_type"] == "tyrjax_compact"
    qwen = ModelConfig.from_hf(QWEN2_5).to_hf()
    assert qwen["architectures"] == ["Qwen2ForCausalLM"] and "tyrjax" not in qwen
    assert ModelConfig.from_hf(qwen) == ModelConfig.from_hf(QWEN2_5)
    compact_qwen = compact_tiny().replace(architecture="qwen2", attention_bias=True, o_bias=True).to_hf()
    assert compact_qwen["architectures"] == ["TyrjaxCompactQwen2ForCausalLM"] and compact_qwen["tyrjax"]["o_bias"] is True
    with pytest.raises(TyrjaxError, match="TyrjaxCompactLlamaForCausalLM is a compact tyrjax model.*per-layer"):
        ModelConfig.from_hf({k: v for k, v in compact.items() if k != "tyrjax"})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.n_heads = 8
    assert TINY.replace(n_heads=8).n_heads == 8 and TINY.n_heads == 4


# --- errors -----------------------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(TyrjaxError, match=r"GemmaForCausalLM.*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        ModelConfig.from_hf({**LLAMA_3_2, "architectures": ["GemmaForCausalLM"], "model_type": "gemma"})
    with pytest.raises(TyrjaxError, match="'phi3'.*supported"):
        ModelConfig.from_hf({k: v for k, v in LLAMA_3_2.items() if k != "architectures"} | {"model_type": "phi3"})


def test_model_type_that_contradicts_the_architecture_names_both_fields(tmp_path):
    with pytest.raises(TyrjaxError, match=r"model_type 'gpt2' contradicts architectures 'LlamaForCausalLM'"):
        ModelConfig.from_hf({**LLAMA_3_2, "model_type": "gpt2"})
    with pytest.raises(TyrjaxError, match=r"model_type 'llama' contradicts architectures 'Qwen2ForCausalLM'"):
        ModelConfig.from_hf({**QWEN2_5, "model_type": "llama"})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MISTRAL_V03, "model_type": "qwen2"}))
    with pytest.raises(TyrjaxError, match=r"'qwen2' contradicts architectures 'MistralForCausalLM'.*config.json"):
        ModelConfig.from_json_file(path)


def test_heads_not_a_multiple_of_kv_heads():
    with pytest.raises(TyrjaxError, match="num_attention_heads=6 is not a multiple of num_key_value_heads=4"):
        ModelConfig.from_hf({**LLAMA_3_2, "num_attention_heads": 6, "num_key_value_heads": 4})


def test_unsupported_rope_type_names_the_supported_ones():
    with pytest.raises(TyrjaxError, match="'yarn'.*default, linear, llama3"):
        ModelConfig.from_hf({**QWEN2_5, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_mlp_bias_is_refused():
    with pytest.raises(TyrjaxError, match="mlp_bias"):
        ModelConfig.from_hf({**LLAMA_3_2, "mlp_bias": True})


def test_mistral_sliding_window_shorter_than_the_context_is_refused():
    with pytest.raises(TyrjaxError, match="sliding window.*sliding_window null"):
        ModelConfig.from_hf({**MISTRAL_V03, "sliding_window": 4096})


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(TyrjaxError, match=f"{bad}: not valid JSON"):
        ModelConfig.from_json_file(bad)
    bad.write_text(json.dumps({k: v for k, v in LLAMA_3_2.items() if k != "hidden_size"}))
    with pytest.raises(TyrjaxError, match=f"{bad}: config.json lacks the key 'hidden_size'"):
        ModelConfig.from_json_file(bad)
    bad.write_text(json.dumps(LLAMA_3_2))
    assert ModelConfig.from_json_file(bad) == ModelConfig.from_hf(LLAMA_3_2)
