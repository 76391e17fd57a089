"""Exporting pruned models into a run directory.

  model/      tyrjax's compact checkpoint: each layer at its own widths. Its config.json names a
              tyrjax architecture (`COMPACT_ARCHITECTURES`), so a loader that does not know it
              refuses it; every tyrjax command loads it.
  hf_llama/   when every layer has the same widths: a stock Llama/Qwen2 checkpoint.
  hf_padded/  on request: a stock Llama/Qwen2 checkpoint whose layers are padded with zeros to
              the widest layer, which every Hugging Face-compatible engine loads; its logits are
              the compact model's.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tyrjax.checkpoints.hf import save_hf, save_orbax
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params, is_stacked, unstack_layers

EXPORTS = ("model", "hf_llama", "hf_padded")
EXPORT_FORMATS = ("hf-padded",)
# What loads each export, as `tyrjax prune` prints it.
EXPORT_USES = {
    "model": "the compact model, each layer at its own widths: loads in tyrjax (--model), not in transformers",
    "hf_llama": "a stock checkpoint (every layer has the same widths): loads in transformers and other engines",
    "hf_padded": "a stock checkpoint, each layer padded with zeros to the widest: loads in transformers and other "
                 "engines, with the compact model's outputs (tyrjax bench measures it beside RUN_DIR/model)",
}


def stock_compatible(cfg: ModelConfig) -> bool:
    """True when every layer has the same widths and each kept KV head serves the same number
    of consecutive query heads: then a plain `LlamaForCausalLM` config describes the model."""
    if not cfg.is_compact:
        return stock_biases(cfg)
    if len(set(cfg.layer_heads)) != 1 or len(set(cfg.layer_kv_heads)) != 1 or len(set(cfg.layer_ffn)) != 1:
        return False
    heads, kv = cfg.layer_heads[0], cfg.layer_kv_heads[0]
    if kv == 0 or heads % kv or not stock_biases(cfg):
        return False
    group = heads // kv
    return all(m == tuple(h // group for h in range(heads)) for m in cfg.layer_kv_map)


def stock_biases(cfg: ModelConfig) -> bool:
    """Whether transformers' class for the architecture has exactly the model's biases: no MLP
    bias, an o_proj bias only in a Llama with attention biases."""
    return not cfg.down_bias and cfg.o_bias == (cfg.architecture == "llama" and cfg.attention_bias)


def stock_config(cfg: ModelConfig) -> ModelConfig:
    """The dense-looking config of a uniform-width compact model (a dense config as it is)."""
    if not cfg.is_compact:
        return cfg
    return cfg.replace(
        n_heads=cfg.layer_heads[0], n_kv_heads=cfg.layer_kv_heads[0], intermediate_size=cfg.layer_ffn[0],
        layer_heads=None, layer_kv_heads=None, layer_ffn=None, layer_kv_map=None,
    )


def padded_widths(cfg: ModelConfig) -> tuple[int, int, int]:
    """(KV heads, query heads per KV head, neurons) of the padded model: the most KV heads of any
    layer, the largest KV group of any layer and the widest MLP (at least one of each)."""
    groups = [int(np.bincount(cfg.kv_map(i)).max()) if cfg.heads(i) else 0 for i in range(cfg.n_layers)]
    kv = max(max(cfg.kv_heads(i) for i in range(cfg.n_layers)), 1)
    return kv, max(max(groups), 1), max(max(cfg.ffn(i) for i in range(cfg.n_layers)), 1)


def padded_config(cfg: ModelConfig) -> ModelConfig:
    kv, group, ffn = padded_widths(cfg)
    return cfg.replace(n_heads=kv * group, n_kv_heads=kv, intermediate_size=ffn,
                       layer_heads=None, layer_kv_heads=None, layer_ffn=None, layer_kv_map=None)


def _head_columns(heads: np.ndarray, head_dim: int) -> np.ndarray:
    return (heads[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)


def padded_layer(p: Params, cfg: ModelConfig, layer: int, padded: ModelConfig) -> Params:
    """One compact layer at the padded widths: query head h of KV head j goes to slot
    j * group + (its rank in the group); the other slots, KV heads and neurons are zeros, so
    they add nothing to the layer's output."""
    hd, group = cfg.head_dim, padded.group_size
    kv_map = np.asarray(cfg.kv_map(layer), np.int64)
    rank = np.arange(len(kv_map)) - np.searchsorted(kv_map, kv_map)  # position within its (consecutive) group
    q_cols = _head_columns(kv_map * group + rank, hd)
    kv_cols = _head_columns(np.arange(cfg.kv_heads(layer)), hd)
    f_cols = np.arange(cfg.ffn(layer))
    q, kv = padded.n_heads * hd, padded.n_kv_heads * hd

    def placed(name: str, shape: tuple[int, ...], index: tuple) -> np.ndarray:
        a = np.asarray(p[name], np.float32)
        out = np.zeros(shape, np.float32)
        out[index] = a
        return out

    d = cfg.hidden_size
    out = {
        "attn_norm": np.asarray(p["attn_norm"], np.float32), "mlp_norm": np.asarray(p["mlp_norm"], np.float32),
        "wq": placed("wq", (d, q), (slice(None), q_cols)), "wk": placed("wk", (d, kv), (slice(None), kv_cols)),
        "wv": placed("wv", (d, kv), (slice(None), kv_cols)), "wo": placed("wo", (q, d), (q_cols, slice(None))),
        "w_gate": placed("w_gate", (d, padded.intermediate_size), (slice(None), f_cols)),
        "w_up": placed("w_up", (d, padded.intermediate_size), (slice(None), f_cols)),
        "w_down": placed("w_down", (padded.intermediate_size, d), (f_cols, slice(None))),
    }
    if cfg.attention_bias:
        out["bq"], out["bk"], out["bv"] = placed("bq", (q,), (q_cols,)), placed("bk", (kv,), (kv_cols,)), \
            placed("bv", (kv,), (kv_cols,))
    if cfg.o_bias:
        out["bo"] = np.asarray(p["bo"], np.float32)
    return out


def padded_model(params: Params, cfg: ModelConfig) -> tuple[Params, ModelConfig]:
    """The stock (dense-form) model equal to a compact one, every layer padded with zeros to the
    widest; raises TyrjaxError when transformers' class cannot hold the model's biases."""
    if not stock_biases(cfg):
        raise TyrjaxError(
            "--export hf-padded: the pruned model has biases on o_proj or down_proj (FLAP's bias compensation), which "
            f"a stock {cfg.architecture} checkpoint cannot hold; use RUN_DIR/model with tyrjax, or another method"
        )
    padded = padded_config(cfg)
    layers = unstack_layers(params["layers"]) if is_stacked(params) else params["layers"]
    stacked = [padded_layer(p, cfg, i, padded) for i, p in enumerate(layers)]
    out = {k: v for k, v in params.items() if k != "layers"}
    out["layers"] = {k: np.stack([layer[k] for layer in stacked]) for k in stacked[0]}
    return out, padded


def check_formats(formats: tuple[str, ...]) -> None:
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise TyrjaxError(f"--export {unknown[0]}: unknown; use {', '.join(EXPORT_FORMATS)}")


def planned_exports(params: Params, cfg: ModelConfig, formats: tuple[str, ...]) -> dict[str, tuple[Params, ModelConfig]]:
    """What `export_pruned` writes, by directory name; checked before anything is written."""
    check_formats(formats)
    exports = {"model": (params, cfg)}
    if stock_compatible(cfg):
        exports["hf_llama"] = (params, stock_config(cfg))
    if "hf-padded" in formats:
        exports["hf_padded"] = padded_model(params, cfg)
    for name, (_, c) in exports.items():
        if name != "model" and "tyrjax" in c.to_hf():
            raise TyrjaxError(f"{name}: the model needs tyrjax's own config keys; only RUN_DIR/model can hold it")
    return exports


def export_sparse(params: Params, cfg: ModelConfig, out_dir: Path, tokenizer_dir: Path | None) -> dict[str, str]:
    """A sparse model in dense shapes: `out_dir/model` (orbax, loadable with --model) and
    `out_dir/hf` (safetensors with the zeros). Returns what was written."""
    out_dir = Path(out_dir)
    save_orbax(params, cfg, out_dir / "model", tokenizer_dir)
    save_hf(params, cfg, out_dir / "hf", tokenizer_dir)
    return {"model": str(out_dir / "model"), "hf": str(out_dir / "hf")}


def export_pruned(params: Params, cfg: ModelConfig, out_dir: Path, tokenizer_dir: Path | None,
                  formats: tuple[str, ...] = ()) -> dict[str, str]:
    """`out_dir/model` (tyrjax compact, loadable by every tyrjax command), `out_dir/hf_llama` (a
    stock checkpoint) when every layer has the same widths, and `out_dir/hf_padded` with
    "hf-padded" in `formats`. Every directory is written beside the others first, then renamed
    into place; an export of an earlier model that this one does not have is removed. Returns
    what was written."""
    exports = planned_exports(params, cfg, formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export.", dir=out_dir))
    try:
        for name, (p, c) in exports.items():
            save_hf(p, c, staging / name, tokenizer_dir)
        for name in EXPORTS:
            target = out_dir / name
            if name in exports:
                _replace_dir(staging / name, target)
            elif target.exists():
                shutil.rmtree(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: str(out_dir / name) for name in exports}


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
