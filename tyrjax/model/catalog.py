"""Built-in model configs by name: the published `config.json` fields tyrjax reads, so a plan
can be made for a model without downloading it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig

LLAMA_3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
LLAMA_3_COMMON: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": LLAMA_3_ROPE, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 128000, "eos_token_id": 128001,
}

# name -> the model's published config.json (the fields tyrjax reads)
HF_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {**LLAMA_3_COMMON, "hidden_size": 4096, "intermediate_size": 14336,
                     "num_attention_heads": 32, "num_hidden_layers": 32},
    "llama-3.1-70b": {**LLAMA_3_COMMON, "hidden_size": 8192, "intermediate_size": 28672,
                      "num_attention_heads": 64, "num_hidden_layers": 80},
    "llama-3.2-1b": {**LLAMA_3_COMMON, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
                     "num_hidden_layers": 16, "head_dim": 64, "tie_word_embeddings": True,
                     "rope_scaling": {**LLAMA_3_ROPE, "factor": 32.0}},
    "qwen2.5-7b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
                   "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "num_hidden_layers": 28, "rms_norm_eps": 1e-6,
                   "rope_theta": 1000000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                   "bos_token_id": 151643, "eos_token_id": 151643},
}


def builtin_config(name: str) -> ModelConfig:
    """The built-in config `name` (case-insensitive); an unknown name lists the built-in ones."""
    hf = HF_CONFIGS.get(name.lower())
    if hf is None:
        raise TyrjaxError(f"model config {name!r} is not built in; built-in: {', '.join(HF_CONFIGS)} "
                          "(or pass a config.json or a model directory)")
    return ModelConfig.from_hf(hf)


def resolve_config(spec: str | Path) -> ModelConfig:
    """A model config from a built-in name, a `config.json` path or a model directory."""
    path = Path(spec)
    if path.is_dir():
        return ModelConfig.from_json_file(path / "config.json")
    if path.is_file():
        return ModelConfig.from_json_file(path)
    return builtin_config(str(spec))
