"""SDS steps 2 and 3 for one layer: re-dense reconstruction and sparse weight adjustment.

The target is the dense layer on dense-model inputs, `X_d W_dense`; the layer being fitted sees
`X_s` (inputs produced by the pruned model). The data enter only through Gram matrices:

    ||X_d W_d − X_s W||² = tr(W_dᵀ H_dd W_d) − 2 tr(Wᵀ H_sd W_d) + tr(Wᵀ H_ss W)

with `H_ss = X_sᵀX_s`, `H_sd = X_sᵀX_d`, `H_dd = X_dᵀX_d`, so every step is full-batch and
costs one `(d_in, d_in) @ (d_in, d_out)` matmul whatever the token count. The loss is divided by the
number of tokens (a mean over tokens of the squared output error summed over outputs), so
learning rates and the λ's do not depend on how much calibration data was used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh

from tyrjax.errors import TyrjaxError
from tyrjax.parallel.sharding import REPLICATED, Axes, sharded_call
from tyrjax.sparse.patterns import (
    NByM,
    Pattern,
    check_groups,
    check_pattern,
    check_weight,
    mask_from_scores,
)

_HIGHEST = lax.Precision.HIGHEST

# Adam moves every weight by about the learning rate per step, whatever the loss scale, so the
# rate is in weight units: 1e-3 is a few percent of a typical LLM weight (RMS ≈ 0.01–0.05) and
# lets a pruned weight travel back to full size within the 200 steps, while the cosine decay
# to zero removes Adam's end-of-run jitter. The paper's 0.1 (optimizer unstated) would move
# weights by several times their size per step under Adam.
DEFAULT_LEARNING_RATE = 1e-3
OPTIMIZERS = ("adam", "adamw", "sgd")


class Grams(NamedTuple):
    """Second moments of one layer's calibration inputs, summed over `n_tokens` tokens."""

    h_ss: jax.Array  # X_sᵀ X_s, (d_in, d_in): pruned-model inputs
    h_sd: jax.Array  # X_sᵀ X_d, (d_in, d_in)
    h_dd: jax.Array  # X_dᵀ X_d, (d_in, d_in): dense-model inputs
    n_tokens: jax.Array | int


class Objective(NamedTuple):
    """One layer's loss written around `W_dense`: `(tr(ΔᵀhΔ) + 2 tr(Δᵀb) + const) / n` in
    `Δ = W − W_dense`. It holds one `(d_in, d_in)` matrix where the Grams hold three, so a layer
    can be fitted once its Grams are gone."""

    h: jax.Array  # H_ss, (d_in, d_in)
    b: jax.Array  # (H_ss − H_sd) W_dense, (d_in, d_out)
    const: jax.Array  # tr(W_dᵀ (X_s − X_d)ᵀ(X_s − X_d) W_d)
    n: jax.Array  # tokens


def _check_layer(W: jax.Array, W_dense: jax.Array, grams: Grams | Objective) -> None:
    """Raise TyrjaxError unless the weights and Grams (or objective) describe the same layer."""
    check_weight(W)
    if W_dense.shape != W.shape:
        raise TyrjaxError(
            f"W_dense has shape {tuple(W_dense.shape)} but W has {tuple(W.shape)}; pass the dense "
            "weights of the same layer"
        )
    d_in = W.shape[0]
    expected = ({"h": (d_in, d_in), "b": tuple(W.shape)} if isinstance(grams, Objective)
                else {name: (d_in, d_in) for name in ("h_ss", "h_sd", "h_dd")})
    for name, want in expected.items():
        shape = tuple(getattr(grams, name).shape)
        if shape != want:
            raise TyrjaxError(
                f"grams.{name} has shape {shape} but W has shape {tuple(W.shape)}; "
                f"build it from this layer's inputs and weights, shape {want}"
            )


def _quadratic(
    W_dense: jax.Array, grams: Grams | Objective, n_tokens: jax.Array | int | None = None
) -> Objective:
    """Rewrite the Gram-form loss around `W_dense`, which avoids cancelling large terms."""
    if isinstance(grams, Objective):
        return grams if n_tokens is None else grams._replace(n=jnp.asarray(n_tokens, jnp.float32))
    h_ss, h_sd, h_dd = (g.astype(jnp.float32) for g in grams[:3])
    W_d = W_dense.astype(jnp.float32)
    b = jnp.matmul(h_ss - h_sd, W_d, precision=_HIGHEST)
    e = h_ss - h_sd - h_sd.T + h_dd  # (X_s − X_d)ᵀ(X_s − X_d)
    const = jnp.sum(W_d * jnp.matmul(e, W_d, precision=_HIGHEST))
    n = jnp.asarray(grams.n_tokens if n_tokens is None else n_tokens, jnp.float32)
    return Objective(h_ss, b, const, n)


def _value_and_grad(
    W: jax.Array, W_dense: jax.Array, q: Objective
) -> tuple[jax.Array, jax.Array]:
    """Loss and its gradient `2(H_ss W − H_sd W_d)/n` from one matmul (Grams are symmetric)."""
    delta = W.astype(jnp.float32) - W_dense.astype(jnp.float32)
    h_delta = jnp.matmul(q.h, delta, precision=_HIGHEST)
    loss = (jnp.sum(delta * h_delta) + 2.0 * jnp.sum(delta * q.b) + q.const) / q.n
    return loss, 2.0 * (h_delta + q.b) / q.n


def reconstruction_loss(
    W: jax.Array, W_dense: jax.Array, grams: Grams | Objective, n_tokens: jax.Array | int | None = None
) -> jax.Array:
    """`||X_d W_dense − X_s W||² / n_tokens` from the Grams (`n_tokens` defaults to theirs)."""
    _check_layer(W, W_dense, grams)
    return _value_and_grad(W, W_dense, _quadratic(W_dense, grams, n_tokens))[0]


def reconstruction_value_and_grad(
    W: jax.Array, W_dense: jax.Array, grams: Grams | Objective
) -> tuple[jax.Array, jax.Array]:
    """The reconstruction loss and its gradient in W, in closed form (what the loops use)."""
    _check_layer(W, W_dense, grams)
    return _value_and_grad(W, W_dense, _quadratic(W_dense, grams))


def make_optimizer(
    optimizer: str | optax.GradientTransformation, learning_rate: float | jax.Array, steps: int
) -> optax.GradientTransformation:
    """An optax optimizer by name, with cosine decay from `learning_rate` to 0 over `steps`.

    A `GradientTransformation` passed in is returned unchanged (`learning_rate` is then unused).
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise TyrjaxError(
            f"optimizer {optimizer!r} is unknown; pass one of {', '.join(OPTIMIZERS)} or an "
            "optax.GradientTransformation"
        )
    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    return {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[optimizer](schedule)


def _check_steps(steps: int) -> None:
    """Raise TyrjaxError unless `steps` is a positive integer."""
    if not isinstance(steps, int) or steps < 1:
        raise TyrjaxError(f"steps={steps!r} must be a positive integer number of optimizer steps")


@functools.partial(jax.jit, static_argnames=("steps", "optimizer"))
def redense(
    W_init: jax.Array,
    W_dense: jax.Array,
    grams: Grams | Objective,
    *,
    l1: float | jax.Array,
    l2: float | jax.Array,
    steps: int = 200,
    learning_rate: float | jax.Array = DEFAULT_LEARNING_RATE,
    optimizer: str | optax.GradientTransformation = "adam",
) -> tuple[jax.Array, jax.Array]:
    """SDS step 2: free all weights and minimise reconstruction + `l1·||W||₁ + l2·||W||₂²`.

    Starts from the pruned `W_init`; the penalties (on the raw sums, next to the per-token
    reconstruction loss) make the weight distribution peak at zero so the next pruning loses
    less. Returns `(W, losses)`, `losses` of shape `(steps + 1,)`: the reconstruction loss
    (without penalties) of the start, after each step, ending with the returned `W`.
    """
    _check_layer(W_init, W_dense, grams)
    _check_steps(steps)
    q = _quadratic(W_dense, grams)
    tx = make_optimizer(optimizer, learning_rate, steps)
    W0 = W_init.astype(jnp.float32)

    def step(carry: tuple, _: None) -> tuple:
        W, opt_state = carry
        loss, grad = _value_and_grad(W, W_dense, q)
        grad = grad + l1 * jnp.sign(W) + 2.0 * l2 * W
        updates, opt_state = tx.update(grad, opt_state, W)
        return (optax.apply_updates(W, updates), opt_state), loss

    (W, _), losses = lax.scan(step, (W0, tx.init(W0)), None, length=steps)
    final = _value_and_grad(W, W_dense, q)[0]
    chex.assert_equal_shape([W, W_init])
    return W.astype(W_init.dtype), jnp.append(losses, final)


@functools.partial(jax.jit, static_argnames=("pattern", "steps", "optimizer"))
def sparse_adjust(
    W_init: jax.Array,
    W_dense: jax.Array,
    grams: Grams | Objective,
    pattern: Pattern | str,
    *,
    steps: int = 200,
    learning_rate: float | jax.Array = DEFAULT_LEARNING_RATE,
    optimizer: str | optax.GradientTransformation = "adam",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SDS step 3: projected gradient toward the dense output under `pattern`.

    Each step takes an optimizer step on the reconstruction loss, then keeps the largest |W|
    allowed by the pattern (global for unstructured, per group for N:M) and zeros the rest.
    The start is projected the same way. Returns `(W, mask, losses)`: the best projected iterate
    seen, so never worse than magnitude re-pruning of `W_init`; `losses` `(steps + 1,)` are the
    projected iterates' reconstruction losses, start first.
    """
    pattern = check_pattern(pattern)
    _check_layer(W_init, W_dense, grams)
    _check_steps(steps)
    if isinstance(pattern, NByM):
        check_groups(W_init.shape[0], pattern.m, "W_init")
    q = _quadratic(W_dense, grams)
    tx = make_optimizer(optimizer, learning_rate, steps)

    def project(W: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = mask_from_scores(jnp.abs(W), pattern)
        return jnp.where(mask, W, 0.0), mask

    def keep_best(best: tuple, W: jax.Array, mask: jax.Array, loss: jax.Array) -> tuple:
        better = loss < best[2]
        return (jnp.where(better, W, best[0]), jnp.where(better, mask, best[1]),
                jnp.where(better, loss, best[2]))

    def step(carry: tuple, _: None) -> tuple:
        W, mask, opt_state, best = carry
        loss, grad = _value_and_grad(W, W_dense, q)
        best = keep_best(best, W, mask, loss)
        updates, opt_state = tx.update(grad, opt_state, W)
        W, mask = project(optax.apply_updates(W, updates))
        return (W, mask, opt_state, best), loss

    W0, mask0 = project(W_init.astype(jnp.float32))
    best0 = (W0, mask0, jnp.asarray(jnp.inf, jnp.float32))
    init = (W0, mask0, tx.init(W0), best0)
    (W, mask, _, best), losses = lax.scan(step, init, None, length=steps)
    final = _value_and_grad(W, W_dense, q)[0]
    W_best, mask_best, _ = keep_best(best, W, mask, final)
    chex.assert_equal_shape([W_best, mask_best, W_init])
    return W_best.astype(W_init.dtype), mask_best, jnp.append(losses, final)


def reconstruct_on_mesh(
    step: Callable, mesh: Mesh, W_init: jax.Array, W_dense: jax.Array, grams: Grams | Objective, w_axes: Axes,
    head_dim: int = 1, **settings: Any,
) -> Any:
    """`redense` or `sparse_adjust` (`step`) on a mesh, `settings` being its keyword arguments.

    The weights are laid out by `w_axes` (the layer's logical axes): their output columns never
    interact in the loss or its gradient, so each device steps its own columns (only the
    unstructured projection's global top-k spans them); the Grams and the result are replicated,
    and an `Objective`'s `b` is laid out as the weights.
    """
    layout = Objective(REPLICATED, w_axes, REPLICATED, REPLICATED) if isinstance(grams, Objective) else REPLICATED
    inputs = {"W_init": (W_init, w_axes), "W_dense": (W_dense, w_axes), "grams": (grams, layout)}
    return sharded_call(step, mesh, inputs, REPLICATED, head_dim=head_dim, static=settings)
