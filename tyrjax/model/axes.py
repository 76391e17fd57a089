"""The logical axes of a model's parameters, and their layout on a mesh (either form)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jax.sharding import Mesh

from tyrjax.model.config import ModelConfig
from tyrjax.parallel.sharding import Axes, put_axes

# One layer's parameters, by name: the logical names of their dimensions.
LAYER_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("embed",),
    "wq": ("embed", "heads"),
    "wk": ("embed", "kv_heads"),
    "wv": ("embed", "kv_heads"),
    "wo": ("heads", "embed"),
    "bq": ("heads",),
    "bk": ("kv_heads",),
    "bv": ("kv_heads",),
    "bo": ("embed",),
    "mlp_norm": ("embed",),
    "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
    "b_down": ("embed",),
}


MODEL_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("embed",),
}


def layer_axes(cfg: ModelConfig) -> dict[str, Axes]:
    """Logical axes of one layer's parameters (the ones `cfg` says exist)."""
    names = ["attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down"]
    if cfg.attention_bias:
        names += ["bq", "bk", "bv"]
    if cfg.o_bias:
        names.append("bo")
    if cfg.down_bias:
        names.append("b_down")
    return {n: Axes(*LAYER_PARAM_AXES[n]) for n in names}


def param_axes(cfg: ModelConfig, stacked: bool | None = None) -> dict[str, Any]:
    """Logical axes parallel to a model's parameters: the masked form (layers stacked on a
    leading `layers` axis) or the compact form (a list of per-layer dicts). The form defaults
    to the one `cfg` describes (compact when it has per-layer widths)."""
    stacked = not cfg.is_compact if stacked is None else stacked
    one = layer_axes(cfg)
    out: dict[str, Any] = {k: Axes(*v) for k, v in MODEL_PARAM_AXES.items() if k != "lm_head"}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = Axes(*MODEL_PARAM_AXES["lm_head"])
    if stacked:
        out["layers"] = {k: Axes("layers", *v) for k, v in one.items()}
    else:
        out["layers"] = [dict(one) for _ in range(cfg.n_layers)]
    return out


def params_axes_of(params: dict, cfg: ModelConfig) -> dict[str, Any]:
    """`param_axes` for these parameters' form, restricted to the entries they have."""
    axes = param_axes(cfg, isinstance(params["layers"], dict))
    layers = axes["layers"]
    if isinstance(layers, dict):
        layers = {k: layers[k] for k in params["layers"]}
    else:
        layers = [{k: a[k] for k in p} for a, p in zip(layers, params["layers"])]
    return {**{k: axes[k] for k in params if k != "layers"}, "layers": layers}


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    """The parameters laid out on `mesh` by their logical axes (either form)."""
    return put_axes(params, params_axes_of(params, cfg), mesh, cfg.head_dim)


def axes_of_layer(p: Mapping[str, Any]) -> dict[str, Axes]:
    """Logical axes of one layer's parameter dict (either form)."""
    return {k: Axes(*LAYER_PARAM_AXES[k]) for k in p}


def shard_layer(p: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    """One layer's parameters laid out on `mesh`."""
    return put_axes(p, axes_of_layer(p), mesh, cfg.head_dim)
