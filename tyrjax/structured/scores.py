"""Structured baseline scorers (Wanda-sp, FLAP, magnitude) and FLAP's bias compensation.

Scores are per input-channel group of `o_proj` / `down_proj` (`W (d_in, d_out)`), higher =
keep. None of these update the kept weights; FLAP adds a bias instead.
"""

import chex
import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError
from tyrjax.structured.local_pruner import select_lowest
from tyrjax.structured.saliency import group_sum


def _check(W: jax.Array, stat: jax.Array | None, group_size: int) -> None:
    chex.assert_rank(W, 2)
    if stat is not None:
        chex.assert_shape(stat, (W.shape[0],))
    if group_size < 1 or W.shape[0] % group_size:
        raise TyrjaxError(
            f"group_size={group_size} does not divide d_in={W.shape[0]}; pass the head_dim "
            "for o_proj or 1 for down_proj"
        )


def wanda_sp_scores(W: jax.Array, x_norm: jax.Array, group_size: int) -> jax.Array:
    """Wanda-sp: per input channel `mean_j |W_pj| · ||X_p||₂`, summed per group."""
    _check(W, x_norm, group_size)
    return group_sum(jnp.mean(jnp.abs(W), axis=1) * x_norm, group_size)


def flap_scores(W: jax.Array, x_var: jax.Array, group_size: int) -> jax.Array:
    """FLAP fluctuation: per input channel `Var(X_p) · ||W_p||²`, summed per group."""
    _check(W, x_var, group_size)
    return group_sum(x_var * jnp.sum(W * W, axis=1), group_size)


def flap_standardise(scores: jax.Array) -> jax.Array:
    """Standardise one layer's scores (zero mean, unit std) so FLAP can rank across layers.

    A layer whose scores are all equal maps to zeros.
    """
    chex.assert_rank(scores, 1)
    centred = scores - jnp.mean(scores)
    std = jnp.std(scores)
    return jnp.where(std > 0, centred / jnp.where(std > 0, std, 1.0), 0.0)


def magnitude_scores(W: jax.Array, group_size: int) -> jax.Array:
    """Group L2 norm of the weight rows."""
    _check(W, None, group_size)
    return jnp.sqrt(group_sum(jnp.sum(W * W, axis=1), group_size))


def keep_lowest_removed(scores: jax.Array, n_remove: jax.Array | int) -> jax.Array:
    """Keep mask `(n_groups,)` that drops the `n_remove` lowest scores (ties: lower index).

    `n_remove` may be traced, so one vmap can build the masks of many levels.
    """
    chex.assert_rank(scores, 1)
    removed = jnp.zeros(scores.shape, dtype=bool)
    return ~select_lowest(scores, removed, jnp.asarray(n_remove))


def flap_bias(W: jax.Array, x_mean: jax.Array, keep: jax.Array, group_size: int) -> jax.Array:
    """Bias `(d_out,)` = what the removed channels contributed on average: `Σ_removed W_p · E[X_p]`.

    Adding it to the masked layer's output makes its mean output over the calibration data
    equal the dense layer's.
    """
    _check(W, x_mean, group_size)
    chex.assert_shape(keep, (W.shape[0] // group_size,))
    removed = ~jnp.repeat(keep, group_size)
    return jnp.where(removed, x_mean, 0.0) @ W
