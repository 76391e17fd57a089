"""The model as Flax NNX modules for fine-tuning: built from tyrjax parameters (either form, per-layer
widths included), with LoRA adapters on chosen projections, and merged back into parameters.

Every projection is a `Projection`: its frozen or trained `kernel` (`y = x @ W`), an optional bias,
an optional keep-mask (the nonzeros of a sparse model's weight) and optional LoRA factors
`lora_a (in, r)`, `lora_b (r, out)` (B starts at zero). The weight it applies is

    (kernel + alpha / r * lora_a @ lora_b) * mask

so a masked weight's pruned entries stay exactly zero in the forward, in every gradient (the
mask multiplies them away) and in the merged model; without a mask it is the plain LoRA weight.
The math of a block is `tyrjax.model.layers.decoder_layer` on these weights, so the modules'
forward is the pure forward's.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params, is_stacked, logits_from_hidden, stack_layers, unstack_layers
from tyrjax.model.layers import decoder_layer, rope_tables

# LoRA target names (the flags' `--targets`) and the layer weights they adapt.
TARGETS = {"q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w_gate", "up": "w_up", "down": "w_down"}
# A weight is a pruned one, whose zeros fine-tuning keeps, when at least this fraction of it is zero;
# the few exact zeros of a quantised checkpoint's weights do not make it one.
MIN_PRUNED_FRACTION = 0.01
BIASES = {"wq": "bq", "wk": "bk", "wv": "bv", "wo": "bo", "w_down": "b_down"}
NORMS = ("attn_norm", "mlp_norm")


class Frozen(nnx.Variable):
    """A parameter fine-tuning never changes (the embedding and the LM head)."""


class Mask(nnx.Variable):
    """The keep-mask of a sparse weight: True where the pruned model's weight is nonzero."""


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """LoRA adapters of `rank` on the weights named by `targets` (keys of `TARGETS`), scaled by
    `alpha / rank`; `seed` draws the A factors."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(TARGETS)
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class Projection(nnx.Module):
    """One linear projection with an optional bias, keep-mask and LoRA factors (see the module)."""

    def __init__(self, kernel: jax.Array, bias: jax.Array | None, mask: jax.Array | None, rank: int, scale: float,
                 key: jax.Array | None):
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias) if bias is not None else None
        self.mask = Mask(jnp.asarray(mask)) if mask is not None else None
        self.scale = scale
        if rank:
            n_in, n_out = kernel.shape
            # The Kaiming-uniform draw of nnx.LoRA's A; B is zero so the adapter starts as the identity.
            a = jax.random.uniform(key, (n_in, rank), kernel.dtype, -1.0, 1.0) * jnp.sqrt(3.0 / n_in)
            self.lora_a = nnx.LoRAParam(a.astype(kernel.dtype))
            self.lora_b = nnx.LoRAParam(jnp.zeros((rank, n_out), kernel.dtype))
        else:
            self.lora_a = self.lora_b = None

    def weight(self) -> jax.Array:
        """The weight this projection applies, and the one merging writes."""
        w = self.kernel[...]
        if self.lora_a is not None:
            w = w + (self.scale * (self.lora_a[...] @ self.lora_b[...])).astype(w.dtype)
        if self.mask is not None:
            w = w * self.mask[...].astype(w.dtype)
        return w


class Block(nnx.Module):
    """One decoder block at its own widths."""

    def __init__(self, p: Params, cfg: ModelConfig, layer: int, masks: dict[str, jax.Array], lora: LoRASpec | None,
                 key: jax.Array):
        self.cfg = cfg
        self.kv_map = tuple(cfg.kv_map(layer))
        self.attn_norm = nnx.Param(p["attn_norm"])
        self.mlp_norm = nnx.Param(p["mlp_norm"])
        adapted = {TARGETS[t] for t in lora.targets} if lora else set()
        keys = jax.random.split(key, len(TARGETS))
        projections = {}
        for (name, k) in zip(TARGETS.values(), keys):
            w = p[name]
            rank = lora.rank if name in adapted and min(w.shape) > 0 else 0
            projections[name] = Projection(w, p.get(BIASES.get(name, "")), masks.get(name), rank,
                                           lora.scale if lora else 1.0, k)
        self.projections = nnx.Dict(projections)

    def layer_params(self) -> Params:
        """This block's parameters in tyrjax's per-layer form, LoRA merged and masks applied."""
        out = {"attn_norm": self.attn_norm[...], "mlp_norm": self.mlp_norm[...]}
        for name, proj in self.projections.items():
            out[name] = proj.weight()
            if proj.bias is not None:
                out[BIASES[name]] = proj.bias[...]
        return out

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        return decoder_layer(self.layer_params(), self.cfg, x, cos, sin, self.kv_map)[0]


class Decoder(nnx.Module):
    """The whole decoder: frozen embedding and head, trainable blocks and final norm."""

    def __init__(self, params: Params, cfg: ModelConfig, masks: list[dict[str, jax.Array]] | None = None,
                 lora: LoRASpec | None = None):
        self.cfg = cfg
        self.stacked = is_stacked(params)
        layers = unstack_layers(params["layers"]) if self.stacked else list(params["layers"])
        masks = masks or [{} for _ in layers]
        self.embed = Frozen(params["embed"])
        self.lm_head = Frozen(params["lm_head"]) if "lm_head" in params else None
        self.final_norm = nnx.Param(params["final_norm"])
        keys = jax.random.split(jax.random.PRNGKey(lora.seed if lora else 0), len(layers))
        self.blocks = nnx.List([Block(p, cfg, i, m, lora, k) for i, (p, m, k) in enumerate(zip(layers, masks, keys))])

    def head(self) -> Params:
        """The parameters outside the blocks, as tyrjax names them."""
        head = {"embed": self.embed[...], "final_norm": self.final_norm[...]}
        if self.lm_head is not None:
            head["lm_head"] = self.lm_head[...]
        return head

    def hidden(self, tokens: jax.Array) -> jax.Array:
        """The last block's output (B, T, d)."""
        x = self.embed[...][tokens]
        cos, sin = rope_tables(self.cfg, jnp.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x, cos, sin)
        return x

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """fp32 logits (B, T, vocab)."""
        return logits_from_hidden(self.head(), self.cfg, self.hidden(tokens))

    def merged_params(self) -> Params:
        """tyrjax parameters in the form they were built from, LoRA merged, masks applied."""
        layers = [block.layer_params() for block in self.blocks]
        return {**self.head(), "layers": stack_layers(layers) if self.stacked else layers}


def weight_masks(params: Params) -> list[dict[str, np.ndarray]]:
    """Per layer, the keep-mask (nonzeros) of each pruned projection weight (at least
    `MIN_PRUNED_FRACTION` zeros): the pattern an unstructured or N:M pruning left. A dense or
    compact model's weights have none."""
    layers = unstack_layers(params["layers"]) if is_stacked(params) else params["layers"]
    out = []
    for p in layers:
        masks = {}
        for name in TARGETS.values():
            keep = np.asarray(p[name]) != 0
            if keep.size and 1 - keep.mean() >= MIN_PRUNED_FRACTION:
                masks[name] = keep
        out.append(masks)
    return out


def check_targets(targets: tuple[str, ...]) -> None:
    """Refuse target names that name no projection, or none at all."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise TyrjaxError(f"--targets {','.join(targets) or '(empty)'}: {', '.join(unknown) or 'no target'} names no layer; "
                          f"name some of {','.join(TARGETS)}")


def check_rank(params: Params, cfg: ModelConfig, lora: LoRASpec) -> None:
    """Refuse a rank above the width (the smaller side) of any adapted weight that has one; a weight
    a structured pruning emptied (no heads or neurons left) gets no adapter."""
    if lora.rank < 1:
        raise TyrjaxError(f"--rank {lora.rank}: must be at least 1")
    layers = unstack_layers(params["layers"]) if is_stacked(params) else params["layers"]
    for i, p in enumerate(layers):
        for target in lora.targets:
            shape = np.shape(p[TARGETS[target]])
            width = min(shape)
            if 0 < width < lora.rank:
                raise TyrjaxError(f"--rank {lora.rank} exceeds the width {width} of layer {i}'s {target} projection "
                                  f"{tuple(shape)}; use --rank {width} or less, or drop {target} from --targets")


def zero_count(params: Params) -> int:
    """Zeros in the projection weights of every layer."""
    layers = unstack_layers(params["layers"]) if is_stacked(params) else params["layers"]
    return int(sum(np.sum(np.asarray(p[name]) == 0) for p in layers for name in TARGETS.values()))
