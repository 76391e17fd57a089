"""Týr's local structured pruner: progressive OBS group removal and a least-squares refit.

One layer `y = x W`, `W (d_in, d_out)`, calibration Hessian `H = XᵀX (d_in, d_in)`. Input
channels are removed in groups (a head of `o_proj`, a neuron of `down_proj`) so that
`||X W_dense − X Ŵ||²` stays small. Removed sets are masks, never changed shapes, so one
`jax.vmap` over the number of removed groups prunes several sparsity levels of a layer at once:
as many as the per-device memory budget holds (`level_groups`), in groups of one size.

The inverse-Hessian state `h_inv` keeps this invariant: it is the inverse of the damped `H`
restricted to the alive channels, with removed channels' rows and columns zero except a 1 on
the diagonal (i.e. `inv(M H M + I − M)` for the alive mask `M`). That makes every group's
diagonal block invertible, so saliencies never see a singular block.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from tyrjax.calibration.hessian import damped_hessian
from tyrjax.errors import TyrjaxError
from tyrjax.parallel.memory import Chunking, chunking, device_memory_bytes
from tyrjax.parallel.sharding import (GRAM, REPLICATED, Axes, axis_size, host_array, put_axes, round_up, shards,
                                     sharded_call, spec)
from tyrjax.structured.saliency import get_saliency


def obs_remove(
    W: jax.Array, h_inv: jax.Array, remove: jax.Array, max_remove: int
) -> tuple[jax.Array, jax.Array]:
    """Remove the channels in the mask `remove` at once with the OBS block formula.

    `W −= H⁻¹[:,P] inv(H⁻¹[P,P]) W[P,:]`, `H⁻¹ −= H⁻¹[:,P] inv(H⁻¹[P,P]) H⁻¹[P,:]`, then the
    removed rows of `W` are zeroed and `h_inv` is restored to the module invariant. The set is
    gathered into a fixed buffer of `max_remove` slots (static; `remove` must have at most that
    many True), so the cost is O(d_in · max_remove · (d_in + d_out)) and shapes stay fixed.
    """
    d_in = W.shape[0]
    chex.assert_shape(h_inv, (d_in, d_in))
    chex.assert_shape(remove, (d_in,))
    # Unused slots point past the end: their gathers are clipped (and masked by `valid`), their
    # scatters dropped, so only the removed rows and columns are written, not all d_in² entries.
    idx = jnp.nonzero(remove, size=max_remove, fill_value=d_in)[0]
    valid = (jnp.arange(max_remove) < jnp.sum(remove)).astype(W.dtype)
    cols = h_inv.at[:, idx].get(mode="clip") * valid[None, :]
    block = cols.at[idx, :].get(mode="clip") * valid[:, None] + jnp.diag(1.0 - valid)
    rows = jnp.concatenate([cols.T, W.at[idx, :].get(mode="clip") * valid[:, None]], axis=1)
    coef = cho_solve(cho_factor(block, lower=True), rows)
    h_inv = h_inv - cols @ coef[:, :d_in]
    W = W - cols @ coef[:, d_in:]
    W = W.at[idx, :].set(0.0, mode="drop")
    h_inv = h_inv.at[idx, :].set(0.0, mode="drop").at[:, idx].set(0.0, mode="drop")
    h_inv = h_inv.at[idx, idx].set(1.0, mode="drop")
    return W, h_inv


def refit(W_target: jax.Array, H: jax.Array, keep: jax.Array) -> jax.Array:
    """Least-squares weights supported on the kept channels: `W_K = inv(H_KK) (H W_target)_K`.

    This minimises `||X W_target − X Ŵ||²` over `Ŵ` with rows outside `keep` zero when `H = XᵀX`.
    `keep` is a per-channel boolean `(d_in,)`; `H` must be positive definite on the kept block.
    """
    d_in = W_target.shape[0]
    chex.assert_shape(H, (d_in, d_in))
    chex.assert_shape(keep, (d_in,))
    m = keep.astype(H.dtype)
    A = H * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
    rhs = (H @ W_target) * m[:, None]
    return cho_solve(cho_factor(A, lower=True), rhs) * m[:, None]


def round_counts(n_remove: jax.Array, rounds: int) -> jax.Array:
    """Groups removed in each round, summing to `n_remove`; the remainder goes to the first rounds.

    Same split as the reference code (fewer groups than rounds: one per round, then none).
    """
    base, extra = jnp.divmod(n_remove, rounds)
    return base + (jnp.arange(rounds) < extra)


def select_lowest(scores: jax.Array, removed: jax.Array, count: jax.Array) -> jax.Array:
    """Mask of the `count` lowest-scoring groups among those not yet removed (ties: lower index)."""
    alive_scores = jnp.where(removed, jnp.inf, scores)
    rank = jnp.argsort(jnp.argsort(alive_scores, stable=True), stable=True)
    return (rank < count) & ~removed


def _prune_core(
    W_dense: jax.Array,
    H: jax.Array,
    n_remove: jax.Array,
    group_size: int,
    rounds: int,
    saliency: str,
    damp: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Traceable body of `prune_groups`; all static arguments already validated."""
    H_d, dead = damped_hessian(H.astype(jnp.float32), damp)
    return _prune_damped(W_dense, H_d, dead, n_remove, group_size, rounds, saliency)


def _prune_damped(
    W_dense: jax.Array,
    H_d: jax.Array,
    dead: jax.Array,
    n_remove: jax.Array,
    group_size: int,
    rounds: int,
    saliency: str,
) -> tuple[jax.Array, jax.Array]:
    """`_prune_core` on the float32 damped Hessian and its dead inputs (`damped_hessian`)."""
    score_fn = get_saliency(saliency)
    d_in = W_dense.shape[0]
    n_groups = d_in // group_size
    max_remove = math.ceil(n_groups / rounds) * group_size
    W0 = jnp.where(dead[:, None], 0.0, W_dense.astype(jnp.float32))
    h_inv = cho_solve(cho_factor(H_d, lower=True), jnp.eye(d_in, dtype=H_d.dtype))
    h_inv = 0.5 * (h_inv + h_inv.T)
    counts = round_counts(jnp.clip(n_remove, 0, n_groups), rounds)
    dead_group = jnp.all(dead.reshape(n_groups, group_size), axis=1)

    def choose(W: jax.Array, h_inv: jax.Array, removed: jax.Array, r: jax.Array) -> jax.Array:
        scores = score_fn(W, W0, h_inv, H_d, group_size)
        scores = jnp.where(dead_group, -jnp.inf, scores)  # removing a dead group is free
        return select_lowest(scores, removed, counts[r])

    def one_round(r: jax.Array, state: tuple) -> tuple:
        W, h_inv, removed = state
        chosen = choose(W, h_inv, removed, r)
        W, h_inv = obs_remove(W, h_inv, jnp.repeat(chosen, group_size), max_remove)
        return W, h_inv, removed | chosen

    removed = jnp.zeros(n_groups, dtype=bool)
    W, h_inv, removed = jax.lax.fori_loop(0, rounds - 1, one_round, (W0, h_inv, removed))
    removed = removed | choose(W, h_inv, removed, rounds - 1)
    keep = ~removed
    return refit(W0, H_d, jnp.repeat(keep, group_size)), keep


_prune_jit = jax.jit(_prune_core, static_argnames=("group_size", "rounds", "saliency"))


@functools.partial(jax.jit, static_argnames=("group_size", "rounds", "saliency"))
def _prune_levels_jit(
    W_dense: jax.Array,
    H: jax.Array,
    n_remove: jax.Array,
    group_size: int,
    rounds: int,
    saliency: str,
    damp: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """`_prune_core` vmapped over the levels' removal counts; H's damping/inverse is shared."""
    core = functools.partial(
        _prune_core, group_size=group_size, rounds=rounds, saliency=saliency, damp=damp
    )
    return jax.vmap(core, in_axes=(None, None, 0))(W_dense, H, n_remove)


def _validate(W_dense: jax.Array, H: jax.Array, group_size: int, rounds: int, saliency: str) -> int:
    """Check the static inputs; return n_groups."""
    if W_dense.ndim != 2:
        raise TyrjaxError(f"W_dense must be (d_in, d_out); got shape {W_dense.shape}")
    d_in = W_dense.shape[0]
    if H.shape != (d_in, d_in):
        raise TyrjaxError(
            f"H must be (d_in, d_in) = ({d_in}, {d_in}) to match W_dense; got {H.shape}"
        )
    if not isinstance(group_size, int) or group_size < 1 or d_in % group_size:
        raise TyrjaxError(
            f"group_size={group_size!r} must be a positive int dividing d_in={d_in}; pass the "
            "head_dim for o_proj or 1 for down_proj"
        )
    if not isinstance(rounds, int) or rounds < 1:
        raise TyrjaxError(f"rounds={rounds!r} must be a positive int (1 for heads, 16 for MLP)")
    get_saliency(saliency)
    return d_in // group_size


def _check_counts(n_remove: jax.Array | int, n_groups: int) -> None:
    """Range-check concrete removal counts; traced ones are clipped to [0, n_groups] instead."""
    try:
        values = np.asarray(n_remove)
    except jax.errors.TracerArrayConversionError:
        return
    if not np.issubdtype(values.dtype, np.integer):
        raise TyrjaxError(f"n_remove must be an integer count of groups; got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > n_groups):
        raise TyrjaxError(
            f"n_remove={values.tolist()} must lie in [0, {n_groups}] (the layer's group count)"
        )


def prune_groups(
    W_dense: jax.Array,
    H: jax.Array,
    group_size: int,
    n_remove: jax.Array | int,
    *,
    rounds: int,
    saliency: str = "tyr",
    damp: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Remove `n_remove` input-channel groups of one layer; return `(W_new, keep)`.

    Týr's effective local pruning: damp `H`, then `rounds` rounds each removing the
    lowest-saliency alive groups (the cumulative count reaches `n_remove` after the last) with
    OBS weight updates and inverse-Hessian downdates, then refit the kept set exactly.

    The refit uses the damped `H_d = H + damp·mean(diag H)·I` on both sides, `W_K =
    inv(H_d,KK) (H_d W_dense)_K`: the minimiser of `||X(W_dense − Ŵ)||² + λ||W_dense − Ŵ||²`
    over `Ŵ` supported on K, `λ = damp·mean(diag H)`. It is the plain least-squares optimum as
    `damp → 0`, and it returns `W_dense` (up to float32 rounding) when nothing is removed.
    Inputs with `diag H == 0` are dead: their rows are zero in `W_new` (kept or not), and
    groups made only of dead inputs are removed before any other.
    Saliency and refit follow the reference code: `G = H_d W_dense`, scores use the damped H.

    `n_remove` may be traced (under `jit`/`vmap`; then it is clipped to `[0, n_groups]`).
    Returns float32 `W_new (d_in, d_out)` with removed groups' rows exactly zero and `keep
    (n_groups,)` bool with exactly `n_groups − n_remove` True.
    """
    n_groups = _validate(W_dense, H, group_size, rounds, saliency)
    _check_counts(n_remove, n_groups)
    return _prune_jit(
        W_dense, H, jnp.asarray(n_remove, jnp.int32), group_size, rounds, saliency,
        jnp.float32(damp),
    )


FP32 = 4  # bytes: the pruner computes in float32 whatever the weights' dtype


def shared_state_bytes(d_in: int, d_out: int, weight_bytes: int = FP32, hessian_bytes: float = FP32) -> float:
    """Device bytes the levels of one call share: the inputs `W_dense (d_in, d_out)` and `H
    (d_in, d_in)` at their bytes per element (on a mesh, H's per device: it arrives split by
    rows), and in float32 the damped `H` and its inverse (d_in, d_in) and the starting weights
    (d_in, d_out)."""
    return weight_bytes * d_in * d_out + hessian_bytes * d_in * d_in + FP32 * (2 * d_in * d_in + d_in * d_out)


def level_state_bytes(d_in: int, d_out: int, rounds: int) -> int:
    """Device bytes one level adds, float32. With OBS rounds (`rounds > 1`): the inverse-Hessian
    state and its updated copy (d_in, d_in), the weights, their update and the result (d_in,
    d_out). In one round there is no OBS step: the refit's factor (d_in, d_in), its right-hand
    side and the result (d_in, d_out). (These match XLA's memory analysis of the compiled
    pruner on CPU to within a fifth, never under it.)"""
    if rounds > 1:
        return FP32 * (2 * d_in * d_in + 3 * d_in * d_out)
    return FP32 * (d_in * d_in + 2 * d_in * d_out)


def level_groups(n_levels: int, d_in: int, d_out: int, rounds: int, budget_bytes: int, weight_bytes: int = FP32,
                 hessian_bytes: float = FP32) -> Chunking:
    """How many levels of a (d_in, d_out) layer the pruner runs at once within `budget_bytes`:
    the group size, fixed for the whole layer (the last group is padded to it). A budget below
    one level stops here, naming the smallest budget that works."""
    return chunking(n_levels, level_state_bytes(d_in, d_out, rounds), budget_bytes,
                    fixed_bytes=shared_state_bytes(d_in, d_out, weight_bytes, hessian_bytes),
                    phase=f"local pruner ({d_in}×{d_out} layer)")


def pad_levels(n_remove: jax.Array, padded: int) -> jax.Array:
    """`n_remove (E,)` padded to `padded` entries with copies of the last level."""
    return jnp.concatenate([n_remove, jnp.repeat(n_remove[-1:], padded - n_remove.shape[0])])


def prune_levels(
    W_dense: jax.Array,
    H: jax.Array,
    group_size: int,
    n_remove_per_level: jax.Array,
    rounds: int,
    *,
    saliency: str = "tyr",
    damp: float = 0.01,
    mesh: Mesh | None = None,
    budget_bytes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """All sparsity levels of one layer, in vmapped, jitted calls of `prune_groups`.

    Each level is pruned independently from the dense weights with the same `H` (which is
    damped and inverted once per call, shared by its levels). Returns `W_levels (E, d_in,
    d_out)` and `keep_levels (E, n_groups)` for `n_remove_per_level (E,)`.

    The levels run in groups of one size, as many per group as fit `budget_bytes` per device
    (default: `device_memory_bytes()`): one call for all of them when they fit, else one call
    per group, the last padded with copies of the last level, so every group runs the same
    compiled function. Groups give the same masks and weights as all levels at once.

    On a mesh the levels are spread over the `level` mesh axes, every device (padded to a
    multiple of their size with copies of the last level), each device pruning its own one at a
    time and keeping only its own: the result stays split over the devices by level. `H` may
    arrive split by rows (`GRAM`, as `stats_of` leaves it on a mesh); each device gathers it. When a
    device's levels and their results do not fit the budget together (`mesh_levels_per_call`),
    the levels run in calls of one level per device, each call's levels leaving the devices
    before the next starts, and come back split by level; the same masks and weights.
    """
    n_groups = _validate(W_dense, H, group_size, rounds, saliency)
    n_remove = jnp.asarray(n_remove_per_level)
    if n_remove.ndim != 1:
        raise TyrjaxError(
            f"n_remove_per_level must be a 1-D integer array (one count per level); got "
            f"shape {n_remove.shape}"
        )
    _check_counts(n_remove_per_level, n_groups)
    n_remove = n_remove.astype(jnp.int32)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    d_in, d_out = W_dense.shape
    sizes = {"weight_bytes": W_dense.dtype.itemsize, "hessian_bytes": H.dtype.itemsize}
    if mesh is not None:  # H reaches the pruner split by rows (`_levels_per_device`)
        sizes["hessian_bytes"] = H.dtype.itemsize / shards(GRAM, H.shape, mesh)
        per_call = mesh_levels_per_call(n_remove.shape[0], axis_size(mesh, "level"), d_in, d_out, rounds, budget,
                                        **sizes)
        return _prune_levels_sharded(W_dense, H, n_remove, group_size, rounds, saliency, damp, mesh, per_call)
    groups = level_groups(n_remove.shape[0], d_in, d_out, rounds, budget, **sizes)
    return prune_level_groups(W_dense, H, n_remove, group_size, rounds, saliency, damp, groups.size)


def prune_level_groups(
    W_dense: jax.Array, H: jax.Array, n_remove: jax.Array, group_size: int, rounds: int, saliency: str,
    damp: float, levels_per_group: int,
) -> tuple[jax.Array, jax.Array]:
    """`prune_levels` in groups of `levels_per_group` levels; inputs already validated.

    Finished groups leave the device before the next one starts, so a group's state is all
    the pruner holds there; the levels come back on the device once every group is done."""
    n_levels = n_remove.shape[0]
    n_calls = -(-n_levels // levels_per_group)
    n_remove = pad_levels(n_remove, n_calls * levels_per_group)
    calls = (_prune_levels_jit(W_dense, H, n_remove[i:i + levels_per_group], group_size, rounds, saliency,
                               jnp.float32(damp))
             for i in range(0, n_remove.shape[0], levels_per_group))
    if n_calls == 1:
        W_levels, keep = next(calls)
        return W_levels[:n_levels], keep[:n_levels]
    parts = [jax.device_get(levels) for levels in calls]
    W_levels, keep = (np.concatenate(field)[:n_levels] for field in zip(*parts))
    return jnp.asarray(W_levels), jnp.asarray(keep)


def mesh_levels_per_call(n_levels: int, devices: int, d_in: int, d_out: int, rounds: int, budget_bytes: int,
                         weight_bytes: int = FP32, hessian_bytes: float = FP32) -> int:
    """Levels of one sharded call of the pruner over `devices` devices: all of them (padded to
    a multiple of `devices`) when a device's share fits `budget_bytes` as `level_groups` counts
    levels, else one per device. A budget below one level stops here, naming the smallest
    budget that works."""
    level_groups(1, d_in, d_out, rounds, budget_bytes, weight_bytes, hessian_bytes)
    share = -(-n_levels // devices)
    fits = level_groups(share, d_in, d_out, rounds, budget_bytes, weight_bytes, hessian_bytes).size >= share
    return round_up(n_levels, devices) if fits else devices


def _prune_levels_sharded(
    W_dense: jax.Array, H: jax.Array, n_remove: jax.Array, group_size: int, rounds: int, saliency: str,
    damp: float, mesh: Mesh, per_call: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`prune_levels` with the levels split over the mesh's `level` axes, `per_call` levels
    (a multiple of their size; default all) per call."""
    n_levels = n_remove.shape[0]
    n_remove = pad_levels(n_remove, round_up(n_levels, axis_size(mesh, "level")))
    per_call = per_call or n_remove.shape[0]

    def call(part: jax.Array) -> tuple[jax.Array, jax.Array]:
        inputs = {
            "W_dense": (W_dense, REPLICATED),
            "H": (H, GRAM),
            "n_remove": (part, Axes("level")),
            "damp": (jnp.float32(damp), REPLICATED),
        }
        return sharded_call(_levels_per_device, mesh, inputs, (Axes("level"), Axes("level")), static={
            "group_size": group_size, "rounds": rounds, "saliency": saliency, "mesh": mesh})

    if per_call >= n_remove.shape[0]:
        W_levels, keep = call(n_remove)
        return W_levels[:n_levels], keep[:n_levels]
    parts = [tuple(host_array(a) for a in call(n_remove[i:i + per_call]))
             for i in range(0, n_remove.shape[0], per_call)]
    W_levels, keep = (put_axes(np.concatenate(field), Axes("level"), mesh) for field in zip(*parts))
    return W_levels[:n_levels], keep[:n_levels]


def _levels_per_device(
    W_dense: jax.Array, H: jax.Array, n_remove: jax.Array, damp: jax.Array, *, group_size: int, rounds: int,
    saliency: str, mesh: Mesh,
) -> tuple[jax.Array, jax.Array]:
    """Each device prunes its own levels one after another (`lax.map`, not `vmap`): the CPU
    LAPACK kernels of jaxlib 0.10 fan a batched factorisation out to the thread pool the
    devices themselves run on and can deadlock when every device does so at once.

    `H` arrives split by rows (`GRAM`); each device gathers it whole and damps it once before
    its levels, so the undamped copy is gone while they run: a device holds one (d_in, d_in)
    fewer than with `H` replicated as an argument."""
    levels = spec(Axes("level"), n_remove.shape, mesh)
    rows = spec(GRAM, H.shape, mesh)
    split = rows[0] if len(rows) else None

    def local(W: jax.Array, H: jax.Array, n: jax.Array, damp: jax.Array) -> tuple[jax.Array, jax.Array]:
        if split is not None:
            H = jax.lax.all_gather(H, split, axis=0, tiled=True)
        H_d, dead = damped_hessian(H.astype(jnp.float32), damp)
        core = functools.partial(_prune_damped, W, H_d, dead, group_size=group_size, rounds=rounds,
                                 saliency=saliency)
        return jax.lax.map(core, n)

    spread = jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, levels, P()), out_specs=(levels, levels),
                           check_vma=False)
    return spread(W_dense, H, n_remove, damp)
