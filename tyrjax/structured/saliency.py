"""Group saliencies for structured pruning, selected by name from the `SALIENCIES` registry.

A saliency estimates how much the layer's reconstruction error grows when one group of input
channels (an attention head of `o_proj`, an MLP neuron of `down_proj`) is removed; lower means
safer to remove. Every saliency has the signature
`saliency(W, W_dense, h_inv, H, group_size) -> scores (n_groups,)`, where `W` is the current
(possibly already OBS-updated) weight `(d_in, d_out)`, `W_dense` the dense weight, `h_inv` the
current inverse Hessian `(d_in, d_in)` and `H` the (damped) Hessian `XᵀX`.
"""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError
from tyrjax.registry import Registry

Saliency = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, int], jax.Array]

SALIENCIES: Registry[Saliency] = Registry("saliency", "tyrjax.structured.SALIENCIES")

register_saliency = SALIENCIES.register
"""`@register_saliency(name)`: make a saliency selectable by name (`TyrConfig.saliency`)."""

get_saliency = SALIENCIES.get
"""The saliency registered under a name; an unknown name fails naming the registered ones."""


def group_sum(per_channel: jax.Array, group_size: int) -> jax.Array:
    """Sum a per-input-channel vector `(d_in,)` over consecutive groups -> `(d_in // g,)`."""
    chex.assert_rank(per_channel, 1)
    return per_channel.reshape(-1, group_size).sum(axis=1)


def diagonal_blocks(h_inv: jax.Array, group_size: int) -> jax.Array:
    """The `(n_groups, g, g)` diagonal blocks of a `(d_in, d_in)` matrix."""
    n = h_inv.shape[0] // group_size
    blocks = h_inv.reshape(n, group_size, n, group_size)
    idx = jnp.arange(n)
    return blocks[idx, :, idx, :]


def _check(
    W: jax.Array, W_dense: jax.Array, h_inv: jax.Array, H: jax.Array, group_size: int
) -> None:
    """Shape checks shared by every saliency."""
    chex.assert_rank(W, 2)
    chex.assert_equal_shape([W, W_dense])
    d_in = W.shape[0]
    chex.assert_shape([h_inv, H], (d_in, d_in))
    if group_size < 1 or d_in % group_size:
        raise TyrjaxError(
            f"group_size={group_size} does not divide d_in={d_in}; pass the head_dim for "
            "o_proj or 1 for down_proj"
        )


def _obs_term(W: jax.Array, h_inv: jax.Array, group_size: int) -> jax.Array:
    """Per group `Σ W_g ⊙ inv(H⁻¹_gg) W_g / 2`: the OBS error of zeroing the group."""
    n = W.shape[0] // group_size
    W_g = W.reshape(n, group_size, -1)
    if group_size == 1:
        scaled = W_g / h_inv.diagonal().reshape(n, 1, 1)
    else:
        blocks = diagonal_blocks(h_inv, group_size)
        scaled = jnp.linalg.solve(blocks, W_g)
    return 0.5 * jnp.sum(W_g * scaled, axis=(1, 2))


@register_saliency("tyr")
def tyr_saliency(
    W: jax.Array, W_dense: jax.Array, h_inv: jax.Array, H: jax.Array, group_size: int
) -> jax.Array:
    """Týr: second-order OBS error plus the first-order term `Σ W ⊙ G`, `G = H W_dense`.

    The G term is signed (as in the reference code) and is not zero because calibration
    data is not the training data.
    """
    _check(W, W_dense, h_inv, H, group_size)
    G = H @ W_dense
    first = group_sum(jnp.sum(W * G, axis=1), group_size)
    return _obs_term(W, h_inv, group_size) + first


@register_saliency("obs")
def obs_saliency(
    W: jax.Array, W_dense: jax.Array, h_inv: jax.Array, H: jax.Array, group_size: int
) -> jax.Array:
    """Plain OBS: the second-order error only (the "without gradient" ablation)."""
    _check(W, W_dense, h_inv, H, group_size)
    return _obs_term(W, h_inv, group_size)


@register_saliency("magnitude")
def magnitude_saliency(
    W: jax.Array, W_dense: jax.Array, h_inv: jax.Array, H: jax.Array, group_size: int
) -> jax.Array:
    """Group L2 norm of the current weights (the "without Hessian" ablation)."""
    _check(W, W_dense, h_inv, H, group_size)
    return jnp.sqrt(group_sum(jnp.sum(W * W, axis=1), group_size))
