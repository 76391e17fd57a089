"""Sparsity patterns and the score-to-mask rules every pruner shares.

A mask has the shape of the weight `W` (`(d_in, d_out)`), True = kept. N:M groups run along
the input dimension: for each output column, every M consecutive input rows keep N weights.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from tyrjax.errors import TyrjaxError

_ACCEPTED = (
    "accepted forms: a fraction strictly between 0 and 1 such as '0.5' (unstructured), "
    "or 'N:M' with 0 < N < M such as '2:4' or '4:8' (N kept out of every M inputs)"
)


class Unstructured(NamedTuple):
    """Remove a fraction `sparsity` of the weights, anywhere."""

    sparsity: float


class NByM(NamedTuple):
    """Keep `n` of every `m` consecutive input weights of each output (2:4 keeps 2 of 4)."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        """Fraction of weights removed."""
        return 1.0 - self.n / self.m


Pattern = Unstructured | NByM


def parse_pattern(text: str) -> Pattern:
    """Parse '0.5' (unstructured) or '2:4' / '4:8' (N:M) into a checked pattern."""
    raw = str(text).strip()
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise TyrjaxError(f"sparsity pattern {text!r} is not valid; {_ACCEPTED}")
        return check_pattern(NByM(int(parts[0]), int(parts[1])), source=text)
    try:
        value = float(raw)
    except ValueError:
        raise TyrjaxError(f"sparsity pattern {text!r} is not valid; {_ACCEPTED}") from None
    return check_pattern(Unstructured(value), source=text)


def check_pattern(pattern: Pattern | str, source: object = None) -> Pattern:
    """Return `pattern` (parsing strings) after checking its values; raise TyrjaxError if bad."""
    if isinstance(pattern, str):
        return parse_pattern(pattern)
    shown = repr(source if source is not None else pattern)
    if isinstance(pattern, NByM):
        n, m = pattern
        integers = isinstance(n, numbers.Integral) and isinstance(m, numbers.Integral)
        if not (integers and 0 < n < m):
            raise TyrjaxError(
                f"sparsity pattern {shown} is not valid (needs integers 0 < N < M); {_ACCEPTED}"
            )
        return NByM(int(n), int(m))
    if isinstance(pattern, Unstructured):
        s = pattern.sparsity
        if not (isinstance(s, numbers.Real) and math.isfinite(s) and 0.0 < s < 1.0):
            raise TyrjaxError(
                f"sparsity pattern {shown} is not valid (sparsity must be in (0, 1)); {_ACCEPTED}"
            )
        return Unstructured(float(s))
    raise TyrjaxError(
        f"sparsity pattern {shown} is not valid; pass Unstructured, NByM or a string; {_ACCEPTED}"
    )


def pruned_count(sparsity: float, total: int) -> int:
    """Number of weights removed out of `total` at `sparsity` (Python round, as everywhere)."""
    return int(round(sparsity * total))


def check_weight(W: jax.Array, what: str = "W") -> None:
    """Raise TyrjaxError unless `W` is a 2-D `(d_in, d_out)` weight."""
    if W.ndim != 2:
        raise TyrjaxError(
            f"{what} must be a 2-D (d_in, d_out) weight, got shape {tuple(W.shape)}; "
            "prune one linear layer at a time"
        )


def check_groups(d_in: int, m: int, what: str = "W") -> None:
    """Raise TyrjaxError unless `d_in` splits into whole groups of `m` inputs."""
    if d_in % m != 0:
        raise TyrjaxError(
            f"{what} has d_in={d_in} input rows, not a multiple of M={m}, so N:M groups do not "
            f"fit; use an N:M pattern whose M divides {d_in}, or an unstructured sparsity"
        )


def _order_keys(scores: jax.Array) -> jax.Array:
    """uint32 keys whose unsigned order is the float order of `scores` (+0 and -0 made equal)."""
    x = jnp.where(scores == 0, jnp.zeros_like(scores), scores).astype(jnp.float32)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _kth_smallest_key(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The smallest key t with at least `k` keys <= t (k >= 1), by bisection over the 32 bits.

    32 counting passes over the array instead of a full sort: the sort dominated the projected
    gradient steps of the sparse adjustment, which select a mask at every step.
    """

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(keys <= mid) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = lax.fori_loop(0, 32, halve, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))
    return lo


def _prune_lowest_flat(scores: jax.Array, n_prune: jax.Array) -> jax.Array:
    """Keep-mask of a 1-D array removing its `n_prune` lowest entries (ties: lower index first)."""
    keys = _order_keys(scores)
    k = jnp.asarray(n_prune, jnp.int32)
    threshold = _kth_smallest_key(keys, jnp.maximum(k, 1))
    below = keys < threshold
    tied = keys == threshold
    tied_to_remove = k - jnp.sum(below)
    removed = below | (tied & (jnp.cumsum(tied) <= tied_to_remove))
    return jnp.where(k > 0, ~removed, jnp.ones_like(removed))


def mask_prune_lowest(scores: jax.Array, n_prune: jax.Array | int) -> jax.Array:
    """Mask keeping all but the `n_prune` lowest scores (over all entries; ties: lower index first).

    `n_prune` may be traced, so one compiled function serves different counts.
    """
    return _prune_lowest_flat(scores.reshape(-1), n_prune).reshape(scores.shape)


def unstructured_mask_from_scores(scores: jax.Array, sparsity: float) -> jax.Array:
    """Keep the highest scores of the whole array; exactly `round(sparsity * size)` are removed."""
    chex.assert_rank(scores, 2)
    return mask_prune_lowest(scores, pruned_count(sparsity, scores.size))


def unstructured_mask_per_output(scores: jax.Array, sparsity: float) -> jax.Array:
    """Keep the highest scores within each output column, each removing `round(sparsity * d_in)`."""
    chex.assert_rank(scores, 2)
    n_prune = pruned_count(sparsity, scores.shape[0])
    return jax.vmap(_prune_lowest_flat, in_axes=(1, None), out_axes=1)(scores, n_prune)


def nm_mask_from_scores(scores: jax.Array, n: int, m: int) -> jax.Array:
    """Keep the `n` highest scores in every group of `m` consecutive inputs of each output."""
    chex.assert_rank(scores, 2)
    d_in, d_out = scores.shape
    check_groups(d_in, m, "the score array")
    groups = scores.reshape(d_in // m, m, d_out)
    position = jnp.arange(m)[None, :, None]
    # rank within the group (as a stable ascending sort would give), by m comparisons: no sort,
    # which is slow on accelerators, and no m×m intermediate
    ranks = jnp.zeros(groups.shape, jnp.int32)
    for j in range(m):
        other = groups[:, j : j + 1, :]
        ahead = (other < groups) | ((other == groups) & (j < position))
        ranks = ranks + ahead.astype(jnp.int32)
    return (ranks >= m - n).reshape(d_in, d_out)


def mask_from_scores(scores: jax.Array, pattern: Pattern) -> jax.Array:
    """Layer-wide mask: global for unstructured, per group for N:M."""
    if isinstance(pattern, NByM):
        return nm_mask_from_scores(scores, pattern.n, pattern.m)
    return unstructured_mask_from_scores(scores, pattern.sparsity)
