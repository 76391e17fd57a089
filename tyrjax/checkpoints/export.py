"""Exporting pruned models: tyrjax compact directories, and stock HF Llama when widths are uniform."""
from __future__ import annotations

import json
from pathlib import Path

from tyrjax.checkpoints.hf import save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params


def stock_compatible(cfg: ModelConfig) -> bool:
    """True when every layer has the same widths and each kept KV head serves the same number
    of consecutive query heads: then a plain `LlamaForCausalLM` config describes the model."""
    if not cfg.is_compact:
        return True
    if len(set(cfg.layer_heads)) != 1 or len(set(cfg.layer_kv_heads)) != 1 or len(set(cfg.layer_ffn)) != 1:
        return False
    heads, kv = cfg.layer_heads[0], cfg.layer_kv_heads[0]
    if kv == 0 or heads % kv or cfg.o_bias or cfg.down_bias:
        return False
    group = heads // kv
    return all(m == tuple(h // group for h in range(heads)) for m in cfg.layer_kv_map)


def stock_config(cfg: ModelConfig) -> ModelConfig:
    """The dense-looking config of a uniform-width compact model."""
    return cfg.replace(
        n_heads=cfg.layer_heads[0], n_kv_heads=cfg.layer_kv_heads[0], intermediate_size=cfg.layer_ffn[0],
        layer_heads=None, layer_kv_heads=None, layer_ffn=None, layer_kv_map=None,
    )


def export_pruned(params: Params, cfg: ModelConfig, out_dir: Path, tokenizer_dir: Path | None) -> dict[str, str]:
    """`out_dir/model` (tyrjax compact, loadable by every tyrjax command) and, where possible,
    `out_dir/hf_llama` (a stock HF checkpoint transformers loads). Returns what was written."""
    written = {"model": str(save_hf(params, cfg, out_dir / "model", tokenizer_dir))}
    if stock_compatible(cfg):
        stock = stock_config(cfg)
        path = save_hf(params, stock, out_dir / "hf_llama", tokenizer_dir)
        hf = json.loads((path / "config.json").read_text())
        assert "tyrjax" not in hf
        written["hf_llama"] = str(path)
    return written
