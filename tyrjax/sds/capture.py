"""Per-layer capture for the layer-sequential pipeline: the o_proj input in window chunks
(q/k/v are pruned before it is recomputed from them, with each layer's own query→KV map), and
the sums over calibration tokens that a group of layers reading the same inputs is fitted on."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tyrjax.calibration.statistics import InputStats, add_stats, cross_gram, heads_of, stats_of
from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import map_chunks
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params
from tyrjax.sds.reconstruct import Grams, Objective

# Windows per attention call: bounds the (windows, heads, T, T) score tensor.
WINDOW_CHUNK = 8


def attention_heads_at(
    p: Params, cfg: ModelConfig, normed: jax.Array, kv_map: tuple[int, ...], chunk: int = WINDOW_CHUNK
) -> jax.Array:
    """Input of o_proj in window chunks, under this layer's q/k/v and kv_map."""
    return map_chunks(lambda c: heads_of(p, cfg, c, kv_map), normed, chunk)


def _check_streams(a_s: jax.Array, a_d: jax.Array | None) -> None:
    if a_d is not None and a_d.shape != a_s.shape:
        raise TyrjaxError(
            f"a_d has shape {tuple(a_d.shape)} but a_s has {tuple(a_s.shape)}; pass the dense and "
            "pruned model's inputs for the same calibration tokens"
        )


def objective_grams(a_s: jax.Array, a_d: jax.Array | None) -> tuple[InputStats, Grams]:
    """Statistics of the pruned stream `a_s` and the Grams of `||X_d W_d − X_s W||²`.

    Without the dense stream `a_d` the target is `X_s W_d` (all three Grams equal `X_sᵀX_s`),
    which is the objective one-shot pruners minimise.
    """
    _check_streams(a_s, a_d)
    stats = stats_of(a_s)
    if a_d is None:
        return stats, Grams(stats.gram, stats.gram, stats.gram, stats.n_tokens)
    return stats, Grams(stats.gram, cross_gram(a_s, a_d), stats_of(a_d).gram, stats.n_tokens)


@jax.jit
def objective_terms(a_s: jax.Array, a_d: jax.Array, W_dense: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(X_sᵀR, ||R||²)` with `R = (X_s − X_d) W_dense` over the tokens of inputs `(…, d_in)`:
    an `Objective`'s `b` and `const` without the `(d_in, d_in)` Grams `X_sᵀX_d` and `X_dᵀX_d`."""
    x_s = a_s.reshape(-1, a_s.shape[-1]).astype(jnp.float32)
    x_d = a_d.reshape(-1, a_d.shape[-1]).astype(jnp.float32)
    r = jnp.matmul(x_s - x_d, W_dense.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return jnp.matmul(x_s.T, r, precision=jax.lax.Precision.HIGHEST), jnp.sum(r * r)


class GroupSums(NamedTuple):
    """Sums over the calibration tokens of a group of layers that read the same inputs: each
    layer's `Objective` is made from them (`layer_objective`)."""

    stats: InputStats  # the pruned stream's: what SparseGPT / Wanda see, and the objectives' h
    terms: dict[str, tuple[jax.Array, jax.Array]] | None  # per layer (b, const); None: no dense stream
    h_dd: jax.Array | None  # X_dᵀX_d, only for a fit on the dense stream's inputs


def group_sums(a_s: jax.Array, a_d: jax.Array | None, weights: dict[str, jax.Array], dense_fit: bool) -> GroupSums:
    """`GroupSums` of inputs `a_s` (pruned stream) and `a_d` (dense stream, None in one-shot
    pruning) for the layers `weights` (name: dense weight) that read them."""
    _check_streams(a_s, a_d)
    stats = stats_of(a_s)
    if a_d is None:
        return GroupSums(stats, None, None)
    terms = {name: objective_terms(a_s, a_d, W) for name, W in weights.items()}
    return GroupSums(stats, terms, stats_of(a_d).gram if dense_fit else None)


def add_sums(a: GroupSums | None, b: GroupSums) -> GroupSums:
    """The sums of two sets of tokens together (None: none yet)."""
    if a is None:
        return b
    terms = None if a.terms is None else {k: (a.terms[k][0] + b.terms[k][0], a.terms[k][1] + b.terms[k][1])
                                          for k in a.terms}
    return GroupSums(add_stats(a.stats, b.stats), terms, None if a.h_dd is None else a.h_dd + b.h_dd)


def layer_objective(sums: GroupSums, name: str, W_dense: jax.Array) -> tuple[Objective, Objective]:
    """(the objective `||X_d W_d − X_s W||² / n` of layer `name`, the one its re-dense and
    adjustment steps optimise): the same, or `||X_d W_d − X_d W||² / n` with `h_dd`. Without a
    dense stream the target is `X_s W_d`, whose `b` and `const` are zero."""
    n = jnp.asarray(sums.stats.n_tokens, jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    b, const = (jnp.zeros(W_dense.shape, jnp.float32), zero) if sums.terms is None else sums.terms[name]
    target = Objective(sums.stats.gram, b, const, n)
    if sums.h_dd is None:
        return target, target
    return target, Objective(sums.h_dd, jnp.zeros_like(b), zero, n)
