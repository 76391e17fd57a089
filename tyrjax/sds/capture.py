"""Per-layer capture for the layer-sequential pipeline: the o_proj input in window chunks
(q/k/v are pruned before it is recomputed from them, with each layer's own query→KV map), and
the Gram matrices of the reconstruction objective."""
from __future__ import annotations

import jax

from tyrjax.calibration.statistics import InputStats, cross_gram, heads_of, stats_of
from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import map_chunks
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params
from tyrjax.sds.reconstruct import Grams

# Windows per attention call: bounds the (windows, heads, T, T) score tensor.
WINDOW_CHUNK = 8


def attention_heads_at(
    p: Params, cfg: ModelConfig, normed: jax.Array, kv_map: tuple[int, ...], chunk: int = WINDOW_CHUNK
) -> jax.Array:
    """Input of o_proj in window chunks, under this layer's q/k/v and kv_map."""
    return map_chunks(lambda c: heads_of(p, cfg, c, kv_map), normed, chunk)


def objective_grams(a_s: jax.Array, a_d: jax.Array | None) -> tuple[InputStats, Grams]:
    """Statistics of the pruned stream `a_s` and the Grams of `||X_d W_d − X_s W||²`.

    Without the dense stream `a_d` the target is `X_s W_d` (all three Grams equal `X_sᵀX_s`),
    which is the objective one-shot pruners minimise.
    """
    if a_d is not None and a_d.shape != a_s.shape:
        raise TyrjaxError(
            f"a_d has shape {tuple(a_d.shape)} but a_s has {tuple(a_s.shape)}; pass the dense and "
            "pruned model's inputs for the same calibration tokens"
        )
    stats = stats_of(a_s)
    if a_d is None:
        return stats, Grams(stats.gram, stats.gram, stats.gram, stats.n_tokens)
    return stats, Grams(stats.gram, cross_gram(a_s, a_d), stats_of(a_d).gram, stats.n_tokens)
