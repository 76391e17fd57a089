"""One-shot weight-sparsity pruners by name, for the layer-by-layer pipelines (`tyrjax.sds`).

A pruner is `fn(W (d_in, d_out), stats: InputStats, pattern) -> W_pruned`: it prunes one linear
layer to `pattern` (unstructured or N:M) given the statistics of the layer's calibration inputs
(`stats.gram = XᵀX`, `stats.sq_norm = diag XᵀX`). Add one with `@register_sparse_pruner(name)`;
`prune_oneshot` (method) and `run_sds_pipeline` (pruner) then accept that name.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tyrjax.calibration.statistics import InputStats
from tyrjax.registry import Registry
from tyrjax.sparse.magnitude import magnitude_prune
from tyrjax.sparse.patterns import Pattern
from tyrjax.sparse.sparsegpt import sparsegpt_prune
from tyrjax.sparse.wanda import wanda_prune

SparsePruner = Callable[[jax.Array, InputStats, Pattern], jax.Array]

SPARSE_PRUNERS: Registry[SparsePruner] = Registry("sparse pruner", "tyrjax.sparse.SPARSE_PRUNERS")

register_sparse_pruner = SPARSE_PRUNERS.register
"""`@register_sparse_pruner(name)`: make a sparse pruner selectable by name (`prune_oneshot`'s method,
`run_sds_pipeline`'s pruner)."""


@SPARSE_PRUNERS.register("sparsegpt")
def sparsegpt_layer(W: jax.Array, stats: InputStats, pattern: Pattern) -> jax.Array:
    """SparseGPT: OBS weight updates on the inputs' Hessian."""
    return sparsegpt_prune(W, stats.gram, pattern)[0]


@SPARSE_PRUNERS.register("wanda")
def wanda_layer(W: jax.Array, stats: InputStats, pattern: Pattern) -> jax.Array:
    """Wanda: |W| times the inputs' L2 norm, no update."""
    return wanda_prune(W, jnp.sqrt(stats.sq_norm), pattern)[0]


@SPARSE_PRUNERS.register("magnitude")
def magnitude_layer(W: jax.Array, stats: InputStats, pattern: Pattern) -> jax.Array:
    """Magnitude: the largest |W|, data-free (`stats` unused)."""
    return magnitude_prune(W, pattern)[0]
