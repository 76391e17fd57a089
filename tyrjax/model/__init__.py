"""The decoder model: configuration, layers, forward passes, generation and block-by-block execution."""

from tyrjax.model.config import ModelConfig
from tyrjax.model.layers import KVCache, decoder_layer
from tyrjax.model.decoder import (
    Params,
    compact_from_masked,
    count_params,
    embed,
    forward,
    forward_jit,
    init_random_params,
    logits_from_hidden,
    to_compact,
)
from tyrjax.model.axes import param_axes, shard_params
from tyrjax.model.generate import generate
from tyrjax.model.blocks import (
    HeldBlocks,
    ModelBlocks,
    as_blocks,
    layer,
    run_blocks,
)

__all__ = [
    "HeldBlocks",
    "KVCache",
    "ModelBlocks",
    "ModelConfig",
    "Params",
    "as_blocks",
    "compact_from_masked",
    "count_params",
    "decoder_layer",
    "embed",
    "forward",
    "forward_jit",
    "generate",
    "init_random_params",
    "layer",
    "logits_from_hidden",
    "param_axes",
    "run_blocks",
    "shard_params",
    "to_compact",
]
