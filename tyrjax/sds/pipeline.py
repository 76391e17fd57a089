"""Layer-sequential unstructured pruning of a whole model: one-shot pruners and SDS.

Blocks are processed in order, each on the calibration stream produced by the already
processed blocks (SparseGPT's sequential order). Inside a block: q/k/v from the attention
input; o_proj from the attention recomputed with the new q/k/v; gate/up from the MLP input;
down_proj from the hidden of the new gate/up. The new block's output feeds the next block.
SDS also carries the dense model's stream, whose layer outputs are the reconstruction target.

Both parameter forms are accepted: stacked (masked form, all layers alike) and compact (a list
of per-layer dicts, e.g. after Týr pruning, each layer with its own widths and `cfg.kv_map(i)`).
The result has the form of the input. Reports are plain JSON-ready dicts keyed "BLOCK.NAME".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from tyrjax.calibration.statistics import (GATE_UP, QKV, InputStats, attention_normed, attention_residual,
                                           check_finite, embed_windows, hidden_of, mlp_normed, mlp_residual, zero_padding)
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import (ModelBlocks, as_blocks, block_activation_bytes, data_split, device_bytes, layer,
                                 padded_windows, to_device)
from tyrjax.model.decoder import Params, is_stacked, stack_layers
from tyrjax.parallel.memory import chunking, device_memory_bytes
from tyrjax.sds.capture import WINDOW_CHUNK, GroupSums, add_sums, attention_heads_at, group_sums, layer_objective
from tyrjax.parallel.distributed import agree
from tyrjax.parallel.sharding import HIDDEN, Axes, axis_size, host_array, local_tree, put_axes, resolve_mesh
from tyrjax.model.axes import LAYER_PARAM_AXES
from tyrjax.sds.reconstruct import (DEFAULT_LEARNING_RATE, OPTIMIZERS, Objective, reconstruct_on_mesh,
                                    reconstruction_loss, redense, sparse_adjust)
from tyrjax.sds.store import PipelineStore, pipeline_key
from tyrjax.sparse import SPARSE_PRUNERS, NByM, Pattern, check_pattern

INPUTS = ("pruned", "dense")
ADJUST_MODES = ("paper", "always")  # where the sparse adjustment runs: see `sds_fit`
LINEAR = (*QKV, "wo", *GATE_UP, "w_down")

# SDS defaults, chosen on the default model (experiments/sds_hparams.py, RESULTS.md "SDS
# hyperparameters" and "SDS: where the adjustment runs"): every λ1 or λ2 > 0 tried raised both
# the layer losses and the held-out perplexity. The learning rate is the pruner's: SparseGPT's
# one-shot weights are already a least-squares fit, and re-densifying them with Adam at 1e-3
# moved them far enough to lose held-out pydoc at 50 %; 3e-4 gains on both corpora. Wanda's
# (and magnitude's) are not a fit, and 1e-3 was better for them; so is any other registered pruner's.
DEFAULT_SDS_LR = {"sparsegpt": 3e-4, "wanda": DEFAULT_LEARNING_RATE, "magnitude": DEFAULT_LEARNING_RATE}
DEFAULT_SDS_L1 = 0.0
DEFAULT_SDS_L2 = 0.0


class LayerInputs(NamedTuple):
    """What one linear layer's fit needs about its calibration inputs."""

    stats: InputStats  # pruned-stream statistics: what SparseGPT / Wanda see
    objective: Objective  # ||X_d W_d − X_s W||² / n (X_d = X_s in one-shot)
    fit: Objective  # what re-dense / adjustment optimise (= objective, or dense-only with inputs="dense")


LayerFit = Callable[[str, jax.Array, LayerInputs], tuple[jax.Array, dict[str, Any]]]


def pattern_name(pattern: Pattern) -> str:
    """'2:4' or '0.5': the pattern as the command line writes it."""
    return f"{pattern.n}:{pattern.m}" if isinstance(pattern, NByM) else f"{pattern.sparsity:g}"


def prune_weight(method: str, W: jax.Array, stats: InputStats, pattern: Pattern) -> jax.Array:
    """One-shot prune one linear layer `W (d_in, d_out)` with the sparse pruner `method` on its input statistics."""
    return SPARSE_PRUNERS.get(method)(W, stats, pattern)


def zero_fraction(W: jax.Array) -> float:
    """Achieved sparsity of one weight: the fraction of exact zeros."""
    return int(jnp.sum(W == 0)) / W.size if W.size else 0.0


def _loss(W: jax.Array, W_dense: jax.Array, objective: Objective) -> float:
    return float(reconstruction_loss(W, W_dense, objective))


# --- per-layer fits --------------------------------------------------------------------------
def oneshot_fit(method: str, pattern: Pattern) -> LayerFit:
    """Prune each layer once; record `||X W − X Ŵ||² / n` on its (pruned-stream) inputs."""

    def fit(name: str, W_dense: jax.Array, inputs: LayerInputs) -> tuple[jax.Array, dict[str, Any]]:
        W = prune_weight(method, W_dense, inputs.stats, pattern)
        return W, {"loss": _loss(W, W_dense, inputs.objective)}

    return fit


def sds_fit(
    pruner: str,
    pattern: Pattern,
    *,
    steps: int,
    adjust_steps: int,
    adjust: str,
    lr: float,
    l1: float,
    l2: float,
    optimizer: str,
    mesh: Mesh | None = None,
    head_dim: int = 1,
) -> LayerFit:
    """SDS on one layer: prune, re-dense with L1/L2, re-prune, adjust; keep the best by the objective.

    The candidates are the step-1 result, the re-pruned re-dense weights and the adjusted ones.
    The adjustment (`adjust_steps > 0`) runs where re-pruning did not beat step 1
    (`adjust="paper"`, ALGORITHMS.md §2) or in every layer (`"always"`). All candidates satisfy
    the pattern, so the lowest-loss one is kept, which makes SDS never worse than one-shot
    layer by layer on the calibration objective.
    On a mesh the re-dense and adjustment steps run with each layer's weights split by its
    logical axes (`head_dim` lets head columns split in whole heads).
    """

    def reconstruct(step, name: str, W_init: jax.Array, W_dense: jax.Array, objective: Objective, **settings: Any):
        if mesh is None:
            return step(W_init, W_dense, objective, **settings)
        axes = Axes(*LAYER_PARAM_AXES[name])
        return reconstruct_on_mesh(step, mesh, W_init, W_dense, objective, axes, head_dim, **settings)

    def fit(name: str, W_dense: jax.Array, inputs: LayerInputs) -> tuple[jax.Array, dict[str, Any]]:
        W1 = prune_weight(pruner, W_dense, inputs.stats, pattern)
        W_re, _ = reconstruct(redense, name, W1, W_dense, inputs.fit, l1=l1, l2=l2, steps=steps, learning_rate=lr,
                              optimizer=optimizer)
        W3 = prune_weight(pruner, W_re, inputs.stats, pattern)
        candidates = {"oneshot": W1, "repruned": W3}
        losses = {k: _loss(W, W_dense, inputs.objective) for k, W in candidates.items()}
        if adjust_steps > 0 and (adjust == "always" or losses["repruned"] >= losses["oneshot"]):
            candidates["adjusted"] = reconstruct(
                sparse_adjust, name, W3, W_dense, inputs.fit, pattern=pattern, steps=adjust_steps, learning_rate=lr,
                optimizer=optimizer,
            )[0]
            losses["adjusted"] = _loss(candidates["adjusted"], W_dense, inputs.objective)
        chosen = min(losses, key=losses.get)  # ties keep the earlier (simpler) candidate
        record = {
            "loss": {"oneshot": losses["oneshot"], "redense": _loss(W_re, W_dense, inputs.objective),
                     **{k: v for k, v in losses.items() if k != "oneshot"}, "chosen": losses[chosen]},
            "chosen": chosen,
        }
        return candidates[chosen], record

    return fit


# --- the block loop --------------------------------------------------------------------------
def _group_sums(a_s: jax.Array, a_d: jax.Array | None, dense: Params, names: tuple[str, ...],
                inputs: str) -> GroupSums:
    return group_sums(a_s, a_d, {name: dense[name] for name in names if dense[name].size}, inputs == "dense")


def _fit_group(
    p: Params, dense: Params, names: tuple[str, ...], sums: GroupSums, fit: LayerFit,
    records: dict[str, dict[str, Any]], where: str,
) -> None:
    """Fit the layers `names` that read the inputs summed in `sums`, in place in `p`."""
    check_finite(sums.stats, where)
    for name in names:
        W_dense = dense[name]
        if W_dense.size == 0:  # a compact layer with every head / neuron removed
            records[name] = {"sparsity": None, "numel": 0}
            continue
        W, record = fit(name, W_dense, LayerInputs(sums.stats, *layer_objective(sums, name, W_dense)))
        p[name] = W
        records[name] = {"sparsity": zero_fraction(W), "numel": int(W.size), **record}


def process_block(
    dense: Params,
    cfg: ModelConfig,
    kv_map: tuple[int, ...],
    x_s: jax.Array,
    x_d: jax.Array | None,
    fit: LayerFit,
    *,
    block: int = 0,
    inputs: str = "pruned",
    chunk: int = WINDOW_CHUNK,
) -> tuple[Params, jax.Array, jax.Array | None, dict[str, dict[str, Any]]]:
    """Fit every linear layer of one block in order; returns (new layer, next x_s, next x_d, records).

    `x_s` is the block input on the processed model, `x_d` on the dense model (None when the
    fit does not need dense targets).
    """
    p, records = dict(dense), {}

    def group(names: tuple[str, ...], a_s: jax.Array, a_d: jax.Array | None, what: str) -> None:
        if all(dense[name].size == 0 for name in names):  # nothing left to prune, no inputs to measure
            records.update({name: {"sparsity": None, "numel": 0} for name in names})
            return
        _fit_group(p, dense, names, _group_sums(a_s, a_d, dense, names, inputs), fit, records, f"block {block} {what}")

    normed_s = attention_normed(dense, cfg, x_s)
    normed_d = None if x_d is None else attention_normed(dense, cfg, x_d)
    group(QKV, normed_s, normed_d, "q/k/v")
    heads_s = attention_heads_at(p, cfg, normed_s, kv_map, chunk)
    heads_d = None if x_d is None else attention_heads_at(dense, cfg, normed_d, kv_map, chunk)
    del normed_s, normed_d
    group(("wo",), heads_s, heads_d, "o_proj")
    mid_s = attention_residual(p, cfg, x_s, heads_s)
    mid_d = None if x_d is None else attention_residual(dense, cfg, x_d, heads_d)
    del heads_s, heads_d

    normed_s = mlp_normed(dense, cfg, mid_s)
    normed_d = None if x_d is None else mlp_normed(dense, cfg, mid_d)
    group(GATE_UP, normed_s, normed_d, "gate/up")
    hidden_s = hidden_of(p, normed_s)
    hidden_d = None if x_d is None else hidden_of(dense, normed_d)
    del normed_s, normed_d
    group(("w_down",), hidden_s, hidden_d, "down_proj")
    out_s = mlp_residual(p, mid_s, hidden_s).astype(jnp.float32)
    out_d = None if x_d is None else mlp_residual(dense, mid_d, hidden_d).astype(jnp.float32)
    return p, out_s, out_d, records


STAGES = ("q/k/v", "o_proj", "gate/up", "down_proj", "output")  # the inputs of each group, then the block's output


def stage_inputs(p: Params, dense: Params, cfg: ModelConfig, kv_map: tuple[int, ...], x_s: jax.Array,
                 x_d: jax.Array | None, stage: str, chunk: int = WINDOW_CHUNK) -> tuple[jax.Array, jax.Array | None]:
    """The pruned and dense streams' inputs of `stage` (one of `STAGES`) for block inputs
    `x_s`, `x_d`: computed through the layers before it, with `p`'s fitted weights on the
    pruned stream and `dense` on the dense one (as `process_block` computes them)."""
    def both(fn_s, fn_d, *args):
        return fn_s(*(a[0] for a in args)), None if x_d is None else fn_d(*(a[1] for a in args))

    normed = both(lambda x: attention_normed(dense, cfg, x), lambda x: attention_normed(dense, cfg, x), (x_s, x_d))
    if stage == "q/k/v":
        return normed
    heads = both(lambda n: attention_heads_at(p, cfg, n, kv_map, chunk),
                 lambda n: attention_heads_at(dense, cfg, n, kv_map, chunk), normed)
    if stage == "o_proj":
        return heads
    mid = both(lambda x, h: attention_residual(p, cfg, x, h), lambda x, h: attention_residual(dense, cfg, x, h),
               (x_s, x_d), heads)
    normed = both(lambda m: mlp_normed(dense, cfg, m), lambda m: mlp_normed(dense, cfg, m), mid)
    if stage == "gate/up":
        return normed
    hidden = both(lambda n: hidden_of(p, n), lambda n: hidden_of(dense, n), normed)
    if stage == "down_proj":
        return hidden
    return both(lambda m, h: mlp_residual(p, m, h).astype(jnp.float32),
                lambda m, h: mlp_residual(dense, m, h).astype(jnp.float32), mid, hidden)


def _chunks(x_s: np.ndarray, x_d: np.ndarray | None, size: int, mesh: Mesh | None):
    """(pruned chunk, dense chunk, windows in it) on the device, `size` windows at a time, the
    last padded with copies of its last window."""
    padded_s = padded_windows(x_s, size)
    padded_d = None if x_d is None else padded_windows(x_d, size)
    for start in range(0, len(x_s), size):
        part_d = None if x_d is None else to_device(padded_d[start:start + size], mesh)
        yield to_device(padded_s[start:start + size], mesh), part_d, min(size, len(x_s) - start)


def chunked_group_sums(p: Params, dense: Params, cfg: ModelConfig, kv_map: tuple[int, ...], x_s: np.ndarray,
                       x_d: np.ndarray | None, stage: str, names: tuple[str, ...], size: int, inputs: str,
                       mesh: Mesh | None = None, chunk: int = WINDOW_CHUNK) -> GroupSums:
    """`GroupSums` of `stage`'s inputs for the layers `names`, summed over chunks of `size`
    windows of the host streams."""
    sums = None
    for part_s, part_d, valid in _chunks(x_s, x_d, size, mesh):
        a_s, a_d = stage_inputs(p, dense, cfg, kv_map, part_s, part_d, stage, chunk)
        valid = jnp.int32(valid)
        a_s = zero_padding(a_s, valid)
        a_d = None if a_d is None else zero_padding(a_d, valid)
        sums = add_sums(sums, _group_sums(a_s, a_d, dense, names, inputs))
        del a_s, a_d
    return sums._replace(stats=sums.stats._replace(n_tokens=len(x_s) * x_s.shape[1]))


def process_block_chunked(
    dense: Params, cfg: ModelConfig, kv_map: tuple[int, ...], x_s: np.ndarray, x_d: np.ndarray | None, fit: LayerFit,
    size: int, *, block: int = 0, inputs: str = "pruned", chunk: int = WINDOW_CHUNK, mesh: Mesh | None = None,
) -> tuple[Params, np.ndarray, np.ndarray | None, dict[str, dict[str, Any]]]:
    """`process_block` for streams held on the host: each group's inputs are recomputed from
    the block inputs, `size` windows at a time, and their Grams summed over the chunks; the
    next block's streams come back to the host the same way."""
    p, records = dict(dense), {}
    for names, stage in ((QKV, "q/k/v"), (("wo",), "o_proj"), (GATE_UP, "gate/up"), (("w_down",), "down_proj")):
        if all(dense[name].size == 0 for name in names):
            records.update({name: {"sparsity": None, "numel": 0} for name in names})
            continue
        sums = chunked_group_sums(p, dense, cfg, kv_map, x_s, x_d, stage, names, size, inputs, mesh, chunk)
        _fit_group(p, dense, names, sums, fit, records, f"block {block} {stage}")
        del sums
    outs_s, outs_d = [], []
    for part_s, part_d, valid in _chunks(x_s, x_d, size, mesh):
        out_s, out_d = stage_inputs(p, dense, cfg, kv_map, part_s, part_d, "output", chunk)
        outs_s.append(host_array(out_s)[:valid])
        if out_d is not None:
            outs_d.append(host_array(out_d)[:valid])
    return p, np.concatenate(outs_s), (np.concatenate(outs_d) if outs_d else None), records


def window_bytes(cfg: ModelConfig, length: int, tensor: int = 1) -> int:
    """Per-device bytes one window adds to a chunk of the SDS loop: both streams' block input
    and output and every stage's inputs (fp32), the objective's residuals of one layer, and one
    block's temporaries; heads and neurons split over `tensor` devices."""
    q = cfg.n_heads * cfg.head_dim
    stages = 4 * cfg.hidden_size + (q + 2 * cfg.intermediate_size) / tensor
    residuals = widest_fit(cfg)[0] + cfg.hidden_size
    return int(2 * length * stages * 4 + length * residuals * 4 + block_activation_bytes(cfg, length) / tensor)


def widest_fit(cfg: ModelConfig) -> tuple[int, int]:
    """(the widest input of a fitted layer, the most weights of one layer)."""
    q = cfg.n_heads * cfg.head_dim
    return max(cfg.hidden_size, q, cfg.intermediate_size), max(cfg.hidden_size * cfg.intermediate_size, cfg.hidden_size * q)


def sums_bytes(cfg: ModelConfig, dense_fit: bool = False) -> int:
    """A group's sums over the chunks beside one chunk's being added (fp32), at the group that
    needs the most: the Gram of its inputs (and the dense stream's, for a fit on them) and each
    of its layers' objective term `b`."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    grams = 2 if dense_fit else 1
    groups = ((d, d * (q + 2 * kv)), (q, q * d), (d, 2 * d * f), (f, f * d))  # (input width, the layers' weights)
    return 2 * 4 * max(grams * width * width + weights for width, weights in groups)


def fit_state_bytes(cfg: ModelConfig, dense_fit: bool = False) -> int:
    """Per-device bytes of fitting the widest layer once its sums are taken (fp32): SparseGPT
    beside the Gram (its damped Hessian, inverse and a working copy; weights in and out; the
    objectives' `b`), or re-dense and adjustment on the objective (its `b`; weights, dense
    weights, gradient, two moments and the candidates kept)."""
    widest, largest = widest_fit(cfg)
    grams = 2 if dense_fit else 1
    return 4 * max((grams + 3) * widest * widest + 4 * largest, grams * widest * widest + 9 * largest)


def stream_windows(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, resident_bytes: float,
                   tensor: int = 1, dense_fit: bool = False) -> int:
    """Windows per device the SDS loop holds on the device at once: all of them when both
    streams' block inputs and outputs and a block's stage inputs fit `budget_bytes` beside
    `resident_bytes` (the weights held) and a group's sums; else the most that fit (the streams
    then wait on the host). Fails naming the phase when the widest layer's fit or one window
    does not fit. `dense_fit`: the fit sees the dense stream's inputs (`inputs="dense"`)."""
    chunking(1, fit_state_bytes(cfg, dense_fit), budget_bytes, fixed_bytes=resident_bytes, phase="SDS")
    return chunking(n_local, window_bytes(cfg, length, tensor), budget_bytes,
                    fixed_bytes=resident_bytes + sums_bytes(cfg, dense_fit), phase="SDS").size


def streams_fit(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, held_bytes: float,
                tensor: int = 1, dense_fit: bool = False) -> bool:
    """Whether the loop with the model held (`held_bytes`, with the block being fitted and the
    fitted blocks) keeps every window's streams on the device within `budget_bytes`."""
    try:
        return stream_windows(cfg, n_local, length, budget_bytes, held_bytes, tensor, dense_fit) >= n_local
    except TyrjaxError:
        return False


def _check_windows(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 1 or not np.issubdtype(windows.dtype, np.integer):
        raise TyrjaxError(
            f"calibration windows have shape {windows.shape} and dtype {windows.dtype}; pass a non-empty "
            "(n_windows, length) integer token array (api.calibration_windows makes one)"
        )
    return windows.astype(np.int32)


def _block_of(params: Params, i: int) -> Params:
    """Block `i`'s parameters; of the stacked form, a copy made when it is asked for, so one
    block is copied at a time rather than the whole model."""
    return layer(params, i) if is_stacked(params) else params["layers"][i]


def _stack_emptying(layers: list[Params]) -> Params:
    """`stack_layers(layers)`, taking each parameter out of the blocks once it is stacked: the
    blocks are held twice for one parameter at a time, not for all of them."""
    return {name: stack_layers([p.pop(name) for p in layers]) for name in list(layers[0])}


def _linear_shapes(params: Params) -> list[dict[str, tuple[int, ...]]]:
    """Per block, the shape of each linear weight (either form), without copying arrays."""
    layers = params["layers"]
    if is_stacked(params):
        n = jax.tree_util.tree_leaves(layers)[0].shape[0]
        return [{name: tuple(layers[name].shape[1:]) for name in LINEAR}] * n
    return [{name: tuple(p[name].shape) for name in LINEAR} for p in layers]


def check_pattern_fits(params: Params, pattern: Pattern | str) -> Pattern:
    """Refuse an N:M pattern whose M does not divide some layer's input width, before any work."""
    pattern = check_pattern(pattern)
    if not isinstance(pattern, NByM):
        return pattern
    for i, shapes in enumerate(_linear_shapes(params)):
        for name, shape in shapes.items():
            if np.prod(shape) and shape[0] % pattern.m:
                raise TyrjaxError(
                    f"pattern {pattern_name(pattern)}: block {i} {name} has {shape[0]} inputs, not a multiple of "
                    f"M={pattern.m}; use an N:M pattern whose M divides every layer's input width, or an "
                    "unstructured sparsity such as 0.5"
                )
    return pattern


def _check_method(method: str, what: str) -> None:
    if method not in SPARSE_PRUNERS:
        raise TyrjaxError(f"{what} {method!r} is unknown; use one of {', '.join(SPARSE_PRUNERS.names())} "
                          "(or add one with tyrjax.sparse.SPARSE_PRUNERS.register)")


def _resume_start(store: PipelineStore | None, n_blocks: int) -> int:
    """Blocks a store already holds for this run's settings (0 without one), the same on every
    process; a resume says so in one line."""
    if store is None:
        return 0
    store.progress.start_clock()
    start = agree(store.completed(), f"pipeline store {store.dir}")
    if start:
        print(f"resuming from {store.dir}: {start} of {n_blocks} blocks finished", flush=True)
    return start


def _resumed_blocks(store: PipelineStore, start: int) -> tuple[list[Params], dict[str, dict]]:
    """The first `start` blocks' new weights (host arrays) and records, as the run made them."""
    layers, records = [], {}
    for i in range(start):
        p, block_records = store.load_block(i)
        layers.append(p)
        records.update({f"{i}.{name}": r for name, r in block_records.items()})
    return layers, records


def run_pipeline(
    params: Params | ModelBlocks,
    cfg: ModelConfig,
    calib_windows: np.ndarray,
    fit: LayerFit,
    *,
    dense_stream: bool,
    inputs: str = "pruned",
    pattern: Pattern | None = None,
    desc: str = "prune",
    progress: bool = True,
    chunk: int = WINDOW_CHUNK,
    mesh: Mesh | None = None,
    budget_bytes: int | None = None,
    store: PipelineStore | None = None,
) -> tuple[Params, dict[str, dict[str, Any]]]:
    """Apply `fit` to every linear layer, block by block, on the sequential calibration stream.

    `pattern`, when given, is checked against every layer's shape up front. Returns the new
    parameters (same form as `params`) and per-layer records "BLOCK.NAME". On a mesh the
    calibration streams are split by windows over the data axes.

    When the streams and a block's inputs do not fit `budget_bytes` per device (default:
    `parallel.memory.device_memory_bytes()`; see `stream_windows`), the streams stay on the
    host, every group's Grams are summed over chunks of windows, and each fitted block leaves
    the device (the new parameters are then host arrays). `params` may be `ModelBlocks` (e.g.
    streamed from the checkpoint): the result is then the compact form, its blocks on the host.

    With `store`, each finished block (its weights, records and the streams entering the next)
    is written there, and a rerun with the same store resumes after the last one, with the
    result of an uninterrupted run.
    """
    windows = _check_windows(calib_windows)
    if isinstance(params, ModelBlocks):
        return _run_blocks_pipeline(params, windows, fit, dense_stream=dense_stream, inputs=inputs, pattern=pattern,
                                    desc=desc, progress=progress, chunk=chunk, budget_bytes=budget_bytes, store=store)
    stacked = is_stacked(params)
    n_layers = len(_linear_shapes(params))
    if n_layers != cfg.n_layers:
        raise TyrjaxError(f"params have {n_layers} layers but the config says {cfg.n_layers}; pass the model's own config")
    if pattern is not None:
        check_pattern_fits(params, pattern)
    split = data_split(mesh)
    n_local = -(-len(windows) // split)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    tensor = 1 if mesh is None else axis_size(mesh, "mlp")
    dense_fit = dense_stream and inputs == "dense"
    if not streams_fit(cfg, n_local, windows.shape[1], budget, 2 * device_bytes(params), tensor, dense_fit):
        model = as_blocks(params, cfg, mesh)
        out, records = _run_blocks_pipeline(model, windows, fit, dense_stream=dense_stream, inputs=inputs,
                                            pattern=None, desc=desc, progress=progress, chunk=chunk,
                                            budget_bytes=budget, resident_bytes=device_bytes(params), store=store)
        if stacked:
            out["layers"] = jax.tree_util.tree_map(lambda *a: np.stack(a), *out["layers"])
        return out, records
    start = _resume_start(store, cfg.n_layers)
    if start:
        place = jnp.asarray if mesh is None else (lambda a: put_axes(a, HIDDEN, mesh))
        x_s, x_d = (None if a is None else place(a) for a in store.load_streams(dense_stream))
        resumed, records = _resumed_blocks(store, start)
        new_layers = [{k: jnp.asarray(v) for k, v in p.items()} for p in resumed]
    else:
        x_s = embed_windows(params, windows, mesh)
        x_d = x_s if dense_stream else None
        new_layers, records = [], {}
    bar = tqdm(range(start, n_layers), desc=desc, unit="block", disable=not progress, initial=start, total=n_layers)
    for i in bar:
        p, x_s, x_d, block_records = process_block(
            _block_of(params, i), cfg, cfg.kv_map(i), x_s, x_d, fit, block=i, inputs=inputs, chunk=chunk
        )
        if store is not None:
            store.save_block(i, p, block_records, (x_s, x_d))
        new_layers.append(p)
        records.update({f"{i}.{name}": r for name, r in block_records.items()})
    x_s = x_d = None
    out = {k: v for k, v in params.items() if k != "layers"}
    out["layers"] = _stack_emptying(new_layers) if stacked else new_layers
    return out, records


def _run_blocks_pipeline(
    model: ModelBlocks, windows: np.ndarray, fit: LayerFit, *, dense_stream: bool, inputs: str,
    pattern: Pattern | None, desc: str, progress: bool, chunk: int, budget_bytes: int | None,
    resident_bytes: float | None = None, store: PipelineStore | None = None,
) -> tuple[Params, dict[str, dict[str, Any]]]:
    """`run_pipeline` over `model`'s blocks one at a time, with the streams on the host in
    chunks of `stream_windows` windows; each fitted block comes back to the host."""
    cfg, mesh = model.cfg, model.mesh
    split = data_split(mesh)
    n_local = -(-len(windows) // split)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    block_bytes = cfg.attn_mlp_params() // cfg.n_layers * model.head["embed"].dtype.itemsize
    resident = model.resident_bytes() if resident_bytes is None else resident_bytes
    tensor = 1 if mesh is None else axis_size(mesh, "mlp")
    size = min(n_local, stream_windows(cfg, n_local, windows.shape[1], budget, resident + 2 * block_bytes,
                                       tensor, dense_stream and inputs == "dense")) * split
    start = _resume_start(store, cfg.n_layers)
    if start:
        x_s, x_d = store.load_streams(dense_stream)
        new_layers, records = _resumed_blocks(store, start)
    else:
        x_s = np.concatenate([host_array(embed_windows(model.head, windows[i:i + size]))
                              for i in range(0, len(windows), size)])
        x_d = x_s if dense_stream else None
        new_layers, records = [], {}
    bar = tqdm(range(start, cfg.n_layers), desc=desc, unit="block", disable=not progress, initial=start,
               total=cfg.n_layers)
    for i in bar:
        dense = model.block(i)
        if pattern is not None:
            check_pattern_fits({"layers": [dense]}, pattern)
        p, x_s, x_d, block_records = process_block_chunked(dense, cfg, cfg.kv_map(i), x_s, x_d, fit, size, block=i,
                                                           inputs=inputs, chunk=chunk, mesh=mesh)
        if store is not None:
            store.save_block(i, p, block_records, (x_s, x_d))
        new_layers.append(jax.tree_util.tree_map(host_array, p))
        records.update({f"{i}.{name}": r for name, r in block_records.items()})
    head = {k: host_array(v) for k, v in model.head.items()}
    return {**head, "layers": new_layers}, records


def overall_sparsity(records: dict[str, dict[str, Any]]) -> float:
    """Zeros over all pruned linear weights (attention + MLP), weighted by size."""
    numel = sum(r["numel"] for r in records.values())
    zeros = sum(round(r["sparsity"] * r["numel"]) for r in records.values() if r["numel"])
    return zeros / numel if numel else 0.0


def _store(store_dir: Path | None, cfg: ModelConfig, windows: np.ndarray, **settings: Any) -> PipelineStore | None:
    return None if store_dir is None else PipelineStore(store_dir, pipeline_key(cfg, _check_windows(windows), **settings))


def _resumed_s(store: PipelineStore | None) -> dict[str, float]:
    """The report's `resumed_s`: wall seconds earlier, interrupted runs spent on the blocks this
    one took from `store`."""
    return {} if store is None else {"resumed_s": store.progress.earlier_s}


def _report(method: str, pattern: Pattern, records: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "pattern": pattern_name(pattern),
        "sparsity": {"target": pattern.sparsity, "achieved": overall_sparsity(records)},
        **extra,
        "layers": records,
    }


def prune_oneshot(
    params: Params,
    cfg: ModelConfig,
    calib_windows: np.ndarray,
    pattern: Pattern | str,
    method: str,
    *,
    progress: bool = True,
    mesh: Mesh | None = None,
    budget_bytes: int | None = None,
    store_dir: Path | None = None,
) -> tuple[Params, dict[str, Any]]:
    """One-shot SparseGPT / Wanda / magnitude pruning of every attention and MLP linear layer.

    Sequential: each block is pruned on the inputs produced by the already pruned blocks.
    The report holds the overall and per-layer achieved sparsity and each layer's
    reconstruction loss `||X W − X Ŵ||² / n_tokens` on its inputs. On a mesh (default: the one
    of `sharding.use_mesh`, if any) the stream is split by windows; the result comes back on
    this process's default device. With `store_dir`, a rerun resumes after the last finished
    block (`run_pipeline`); the report's `resumed_s` is the time earlier runs spent.
    """
    pattern = check_pattern(pattern)
    _check_method(method, "pruning method")
    mesh = resolve_mesh(mesh)
    fit = oneshot_fit(method, pattern)
    store = _store(store_dir, cfg, calib_windows, method=method, pattern=pattern_name(pattern))
    new, records = run_pipeline(params, cfg, calib_windows, fit, dense_stream=False, pattern=pattern,
                                desc=f"{method} {pattern_name(pattern)}", progress=progress, mesh=mesh,
                                budget_bytes=budget_bytes, store=store)
    return (new if mesh is None else local_tree(new)), _report(method, pattern, records, **_resumed_s(store))


def run_sds_pipeline(
    params: Params,
    cfg: ModelConfig,
    calib_windows: np.ndarray,
    pattern: Pattern | str,
    pruner: str,
    *,
    steps: int = 200,
    adjust_steps: int | None = None,
    adjust: str = "paper",
    lr: float | None = None,
    l1: float | None = None,
    l2: float | None = None,
    optimizer: str = "adam",
    inputs: str = "pruned",
    progress: bool = True,
    mesh: Mesh | None = None,
    budget_bytes: int | None = None,
    store_dir: Path | None = None,
) -> tuple[Params, dict[str, Any]]:
    """SDS (Sparse-Dense-Sparse) on every attention and MLP linear layer, block by block.

    Per layer: prune one-shot with `pruner`; re-dense from the pruned weights toward the dense
    layer's output (`steps` full-batch optimizer steps on the Gram-form loss plus
    `l1·||W||₁ + l2·||W||₂²`); re-prune with the same pruner; where that did not beat
    the one-shot weights (or everywhere, with `adjust="always"`) adjust the sparse weights for
    `adjust_steps` (default `steps`, 0 skips); keep the candidate with the lowest loss
    `||X_d W_d − X_s W||² / n`. `inputs="pruned"` optimises on the processed model's inputs
    X_s (the paper's choice), `"dense"` on the dense model's. None means the tuned default.
    The report gives, per layer, each step's loss and which candidate was kept.
    On a mesh (default: the one of `sharding.use_mesh`, if any) the streams are split by
    windows and the reconstructions by their weights' logical axes; the result comes back on
    this process's default device and equals the one-device result. `budget_bytes` per device
    (default: what the device reports) decides whether the streams stay on the device or wait
    on the host in chunks (`run_pipeline`); `params` may be `ModelBlocks`. With `store_dir`, a
    rerun resumes after the last finished block; the report's `resumed_s` is the time earlier
    runs spent.
    """
    pattern = check_pattern(pattern)
    settings = sds_settings(pruner, steps, adjust_steps, lr, l1, l2, optimizer, inputs, adjust)
    mesh = resolve_mesh(mesh)
    fit = sds_fit(pruner, pattern, **{k: v for k, v in settings.items() if k != "inputs"}, mesh=mesh,
                  head_dim=cfg.head_dim)
    store = _store(store_dir, cfg, calib_windows, method=f"sds-{pruner}", pattern=pattern_name(pattern), **settings)
    new, records = run_pipeline(params, cfg, calib_windows, fit, dense_stream=True, inputs=inputs, pattern=pattern,
                                desc=f"sds-{pruner} {pattern_name(pattern)}", progress=progress, mesh=mesh,
                                budget_bytes=budget_bytes, store=store)
    if mesh is not None:
        new = local_tree(new)
    chosen = [r["chosen"] for r in records.values() if "chosen" in r]
    counts = {k: chosen.count(k) for k in ("oneshot", "repruned", "adjusted")}
    return new, _report(f"sds-{pruner}", pattern, records, hyperparameters=settings, chosen=counts,
                        **_resumed_s(store))


def sds_settings(
    pruner: str, steps: int, adjust_steps: int | None, lr: float | None, l1: float | None, l2: float | None,
    optimizer: str, inputs: str, adjust: str = "paper",
) -> dict[str, Any]:
    """The resolved SDS hyperparameters of `pruner` (defaults filled in), checked."""
    _check_method(pruner, "SDS pruner")
    adjust_steps = steps if adjust_steps is None else adjust_steps
    lr = DEFAULT_SDS_LR.get(pruner, DEFAULT_LEARNING_RATE) if lr is None else float(lr)
    l1 = DEFAULT_SDS_L1 if l1 is None else float(l1)
    l2 = DEFAULT_SDS_L2 if l2 is None else float(l2)
    if not isinstance(steps, int) or steps < 1:
        raise TyrjaxError(f"steps={steps!r} must be a positive integer number of re-dense optimizer steps")
    if not isinstance(adjust_steps, int) or adjust_steps < 0:
        raise TyrjaxError(f"adjust_steps={adjust_steps!r} must be an integer >= 0 (0 skips the sparse adjustment)")
    if not (np.isfinite(lr) and lr > 0):
        raise TyrjaxError(f"lr={lr!r} must be a positive learning rate, e.g. {DEFAULT_LEARNING_RATE}")
    for name, value in (("l1", l1), ("l2", l2)):
        if not (np.isfinite(value) and value >= 0):
            raise TyrjaxError(f"{name}={value!r} must be a finite weight >= 0 (0 disables the penalty)")
    if optimizer not in OPTIMIZERS:
        raise TyrjaxError(f"optimizer {optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
    if inputs not in INPUTS:
        raise TyrjaxError(f"inputs {inputs!r} is unknown; use 'pruned' (the paper's) or 'dense'")
    if adjust not in ADJUST_MODES:
        raise TyrjaxError(f"adjust {adjust!r} is unknown; use 'paper' (only where re-pruning did not beat one-shot) "
                          "or 'always'")
    return {"steps": steps, "adjust_steps": adjust_steps, "adjust": adjust, "lr": lr, "l1": l1, "l2": l2,
            "optimizer": optimizer, "inputs": inputs}
