"""Wanda: prune by |W_ij| times the input's L2 norm, no weight update (Sun et al. 2023)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError
from tyrjax.sparse.patterns import (
    NByM,
    Pattern,
    check_groups,
    check_pattern,
    check_weight,
    nm_mask_from_scores,
    unstructured_mask_per_output,
)


def wanda_scores(W: jax.Array, x_norm: jax.Array) -> jax.Array:
    """`|W_ij| * ||X_i||`: the weight's share of the output, on calibration data."""
    return jnp.abs(W).astype(jnp.float32) * x_norm.astype(jnp.float32)[:, None]


@functools.partial(jax.jit, static_argnames=("pattern",))
def wanda_prune(
    W: jax.Array, x_norm: jax.Array, pattern: Pattern | str
) -> tuple[jax.Array, jax.Array]:
    """Prune `W` (d_in, d_out) by Wanda scores; `x_norm` (d_in,) is sqrt(diag(XᵀX)).

    Unstructured: every output keeps the same number of weights (the paper's per-output
    comparison). N:M: within each group of M inputs. Returns `(W_pruned, mask)`.
    """
    pattern = check_pattern(pattern)
    check_weight(W)
    if x_norm.shape != (W.shape[0],):
        raise TyrjaxError(
            f"x_norm has shape {tuple(x_norm.shape)} but W has d_in={W.shape[0]}; pass the "
            "per-input-channel L2 norm of the calibration inputs, shape (d_in,)"
        )
    scores = wanda_scores(W, x_norm)
    if isinstance(pattern, NByM):
        check_groups(W.shape[0], pattern.m)
        mask = nm_mask_from_scores(scores, pattern.n, pattern.m)
    else:
        mask = unstructured_mask_per_output(scores, pattern.sparsity)
    chex.assert_equal_shape([mask, W])
    return jnp.where(mask, W, jnp.zeros_like(W)), mask
