"""SparseGPT (Frantar & Alistarh 2023): prune one layer and compensate with the inverse Hessian.

Inputs are swept in blocks of `block_size` rows of `W` (d_in, d_out). Within a block each
row's pruning error is pushed onto the later rows through the upper Cholesky factor `U` of
`H⁻¹` (`H⁻¹ = UᵀU`); the block's accumulated errors reach the rest of the layer in one
matmul (the "lazy batch" update). The loops are `lax.fori_loop`s over a layer padded to whole
blocks, so the function compiles once per (shape, pattern, block size).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tyrjax.calibration.hessian import damped_hessian
from tyrjax.errors import TyrjaxError
from tyrjax.sparse.patterns import (
    NByM,
    Pattern,
    Unstructured,
    check_groups,
    check_pattern,
    check_weight,
    mask_prune_lowest,
    nm_mask_from_scores,
    pruned_count,
)

_HIGHEST = lax.Precision.HIGHEST


def inverse_cholesky_upper(H: jax.Array) -> jax.Array:
    """Upper-triangular `U` with `UᵀU = H⁻¹`, both factorisations by Cholesky."""
    lower = jnp.linalg.cholesky(H)
    h_inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(H.shape[0], dtype=H.dtype))
    return jnp.triu(jnp.linalg.cholesky(h_inv).T)


def block_prune_counts(d_in: int, d_out: int, block: int, sparsity: float) -> np.ndarray:
    """Weights to prune in each block, by cumulative rounding so the layer total is exact.

    Block b removes `round(s·end_b·d_out) − round(s·start_b·d_out)`: the same fraction in
    every block (exactly so when it is a whole number), and `round(s·d_in·d_out)` in all.
    """
    ends = np.minimum(np.arange(1, -(-d_in // block) + 1) * block, d_in)
    cumulative = np.array([0] + [pruned_count(sparsity, int(e) * d_out) for e in ends])
    return np.diff(cumulative).astype(np.int32)


def _row_step(i: jax.Array, carry: tuple, U1: jax.Array) -> tuple:
    """Apply the mask to row i and push its error onto the later rows of the block."""
    W1, err1, mask1 = carry
    w = W1[i]
    err = (w - jnp.where(mask1[i], w, 0.0)) / U1[i, i]
    W1 = W1 - U1[i][:, None] * err[None, :]
    return W1, err1.at[i].set(err), mask1


def _sweep_unstructured(
    W1: jax.Array, U1: jax.Array, valid1: jax.Array, n_prune: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Block mask = all but the `n_prune` lowest `w²/U_ii²`, chosen at the block start."""
    scores = (W1 / jnp.diagonal(U1)[:, None]) ** 2
    scores = jnp.where(valid1[:, None], scores, jnp.inf)
    mask1 = mask_prune_lowest(scores, n_prune)
    step = functools.partial(_row_step, U1=U1)
    return lax.fori_loop(0, W1.shape[0], step, (W1, jnp.zeros_like(W1), mask1))


def _sweep_nm(
    W1: jax.Array, U1: jax.Array, n: int, m: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each group of m rows picks its n kept weights when the sweep reaches it."""
    diag = jnp.diagonal(U1)
    step = functools.partial(_row_step, U1=U1)

    def group(g: jax.Array, carry: tuple) -> tuple:
        W1, err1, mask1 = carry
        start = g * m
        rows = lax.dynamic_slice_in_dim(W1, start, m, axis=0)
        d = lax.dynamic_slice_in_dim(diag, start, m)
        group_mask = nm_mask_from_scores((rows / d[:, None]) ** 2, n, m)
        mask1 = lax.dynamic_update_slice_in_dim(mask1, group_mask, start, axis=0)
        return lax.fori_loop(start, start + m, step, (W1, err1, mask1))

    init = (W1, jnp.zeros_like(W1), jnp.ones(W1.shape, bool))
    return lax.fori_loop(0, W1.shape[0] // m, group, init)


def _sweep(
    W: jax.Array, U: jax.Array, d_in: int, pattern: Pattern, block: int
) -> tuple[jax.Array, jax.Array]:
    """Run the blocked sweep over a layer padded to whole blocks; returns `(W_pruned, mask)`."""
    d_pad, d_out = W.shape
    valid = jnp.arange(d_pad) < d_in
    n_blocks = d_pad // block
    if isinstance(pattern, Unstructured):
        counts = jnp.asarray(block_prune_counts(d_in, d_out, block, pattern.sparsity))

    def one_block(b: jax.Array, carry: tuple) -> tuple:
        W, mask = carry
        i1 = b * block
        W1 = lax.dynamic_slice(W, (i1, 0), (block, d_out))
        U1 = lax.dynamic_slice(U, (i1, i1), (block, block))
        if isinstance(pattern, NByM):
            W1, err1, mask1 = _sweep_nm(W1, U1, pattern.n, pattern.m)
        else:
            valid1 = lax.dynamic_slice_in_dim(valid, i1, block)
            W1, err1, mask1 = _sweep_unstructured(W1, U1, valid1, counts[b])
        rows_u = lax.dynamic_slice(U, (i1, 0), (block, d_pad))
        W = W - jnp.matmul(rows_u.T, err1, precision=_HIGHEST)
        W = lax.dynamic_update_slice(W, jnp.where(mask1, W1, 0.0), (i1, 0))
        mask = lax.dynamic_update_slice(mask, mask1, (i1, 0))
        return W, mask

    return lax.fori_loop(0, n_blocks, one_block, (W, jnp.ones(W.shape, bool)))


@functools.partial(jax.jit, static_argnames=("pattern", "block_size"))
def sparsegpt_prune(
    W: jax.Array,
    H: jax.Array,
    pattern: Pattern | str,
    block_size: int = 128,
    damp: float | jax.Array = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Prune `W` (d_in, d_out) to `pattern`, updating kept weights to absorb the error.

    `H = XᵀX` (d_in, d_in) from the calibration inputs (any positive scale). `damp` is the
    fraction of the mean diagonal added to it. Unstructured removes exactly
    `round(s·d_in·d_out)` weights, spread evenly over blocks by cumulative rounding; N:M keeps N
    of every M inputs per output. `block_size` is clamped to d_in and must be a multiple of M.
    Returns `(W_pruned, mask)` in W's dtype, mask True = kept. Being jitted, it cannot inspect
    values: a non-finite H (NaN in calibration) gives NaN weights, so check H beforehand.
    """
    pattern = check_pattern(pattern)
    check_weight(W)
    d_in, d_out = W.shape
    if H.shape != (d_in, d_in):
        raise TyrjaxError(
            f"H has shape {tuple(H.shape)} but W has d_in={d_in}; pass H = XᵀX of the layer's "
            f"calibration inputs, shape ({d_in}, {d_in})"
        )
    block = min(int(block_size), d_in)
    if block < 1:
        raise TyrjaxError(f"block_size={block_size} must be a positive number of input rows")
    if isinstance(pattern, NByM):
        check_groups(d_in, pattern.m)
        if block % pattern.m:
            raise TyrjaxError(
                f"block_size={block_size} is not a multiple of M={pattern.m} of pattern "
                f"{pattern.n}:{pattern.m}; use a block size divisible by M (e.g. 128)"
            )

    H_damped, dead = damped_hessian(H.astype(jnp.float32), damp)
    W32 = jnp.where(dead[:, None], 0.0, W.astype(jnp.float32))
    d_pad = -(-d_in // block) * block
    H_pad = jnp.eye(d_pad, dtype=jnp.float32).at[:d_in, :d_in].set(H_damped)
    W_pad = jnp.zeros((d_pad, d_out), jnp.float32).at[:d_in].set(W32)

    U = inverse_cholesky_upper(H_pad)
    W_pruned, mask = _sweep(W_pad, U, d_in, pattern, block)
    W_pruned, mask = W_pruned[:d_in], mask[:d_in]
    chex.assert_shape([W_pruned, mask], (d_in, d_out))
    return W_pruned.astype(W.dtype), mask
