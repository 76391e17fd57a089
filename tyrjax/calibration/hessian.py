"""The damped layer Hessian shared by the second-order pruners (Týr's local pruner, SparseGPT).

Dead-input rule. An input whose Hessian diagonal is 0 never fired on the calibration data. As
in the SparseGPT reference, its diagonal entry is set to 1 first, so the damped Hessian stays
invertible even when every input is dead, and the damping `damp · mean(diag)` is then taken
over that diagonal (dead entries count as 1). The caller zeroes the dead inputs' rows of `W`:
nothing the layer sees depends on them, and removing them costs nothing. Without dead inputs
the result is `H + damp · mean(diag H) · I`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError


def damped_hessian(H: jax.Array, damp: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(H_damped, dead)`: unit diagonal on dead inputs (`diag H == 0`), then `damp · mean(diag) · I`."""
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise TyrjaxError(f"damped_hessian: H must be a square (d_in, d_in) matrix, got shape {H.shape}")
    diag = jnp.diagonal(H)
    dead = diag == 0
    unit = jnp.where(dead, 1.0, 0.0).astype(H.dtype)
    return H + jnp.diag(unit + damp * jnp.mean(diag + unit)), dead
