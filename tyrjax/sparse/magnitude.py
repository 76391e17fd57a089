"""Magnitude pruning: the data-free baseline (keep the largest |W|)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from tyrjax.sparse.patterns import (
    NByM,
    Pattern,
    check_groups,
    check_pattern,
    check_weight,
    mask_from_scores,
)


@functools.partial(jax.jit, static_argnames=("pattern",))
def magnitude_prune(W: jax.Array, pattern: Pattern | str) -> tuple[jax.Array, jax.Array]:
    """Zero the smallest |W|: globally over the layer (unstructured) or per N:M group.

    Returns `(W_pruned, mask)`, mask True = kept.
    """
    pattern = check_pattern(pattern)
    check_weight(W)
    if isinstance(pattern, NByM):
        check_groups(W.shape[0], pattern.m)
    mask = mask_from_scores(jnp.abs(W), pattern)
    chex.assert_equal_shape([mask, W])
    return jnp.where(mask, W, jnp.zeros_like(W)), mask
