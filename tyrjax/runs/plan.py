"""A memory and time plan for Týr and SDS on a device mesh, computed from the model's shapes.

Every number is a product of a `ModelConfig`, a `MeshSpec` and the run's settings, counted
for the arrays tyrjax holds in each phase. Each array is split over the mesh exactly as
`tyrjax.parallel.sharding` lays it out (its logical axes through `LOGICAL_AXIS_RULES`): weights over
`fsdp` and `tensor`, calibration windows over `data` and `fsdp`, a layer's sparsity levels
over `data` while Týr's local pruner runs; Gram and inverse-Hessian matrices are whole on
every device. The search keeps the model resident and reads from the supernet on disk only
the levels one call uses (`tyr.fitness.blocks_per_call` blocks of one batch of candidates),
and scores a stage's windows in forwards of `forward_windows` windows.
Statistics are fp32, weights in the run's dtype, levels in `level_bytes` (fp32 as the local
pruner returns them).

Times are FLOPs over a stated peak throughput and utilisation: the model's matmuls in bf16
and the statistics in fp32 over every device; the per-layer solvers in fp32, Týr's local
pruner over the devices that share a layer's levels (the `level` axis), SDS's on one device.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from tyrjax.checkpoints.hf import abstract_params, global_shapes, layer_shapes
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.sharding import (GRAM, HIDDEN, MESH_AXES, MLP_HIDDEN, REPLICATED, Axes, axis_size, is_axes,
                                      round_up, spec)
from tyrjax.model.axes import MODEL_PARAM_AXES, layer_axes, param_axes
from tyrjax.tyr.baselines import CHUNK as BASELINE_CHUNK
from tyrjax.tyr.baselines import RESIDUAL_COPIES
from tyrjax.tyr.fitness import blocks_per_call
from tyrjax.tyr.pipeline import PRESETS
from tyrjax.tyr.supernet import ATTN_ROUNDS, MLP_ROUNDS

GB = 1e9
# What the compiled head keeps of one chunk's logits: the logits and their exponentials, fp32
# (the chunk sizes themselves are chosen with a wider margin, `model.vocab.LOGIT_BYTES`).
HEAD_LOGIT_BYTES = 2 * 4
SEARCH_HEAD = "search, head"  # the fitness step of the search (tyr.fitness.candidate_fitness)
F32 = 4
INDEX_AND_LOGP = 8  # one teacher top-k entry: int32 token id + fp32 log-prob


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """A device mesh (`data × fsdp × tensor`) and each device's memory and peak throughput."""

    name: str
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    hbm_bytes: float = 80e9
    bf16_flops: float = 1e15  # peak dense bf16 FLOP/s per device
    fp32_flops: float = 1e14  # peak fp32 matmul FLOP/s per device

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def shape(self) -> dict[str, int]:
        """Axis sizes by name, as `jax.sharding.Mesh.shape` gives them."""
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    @property
    def axes_text(self) -> str:
        """The `--mesh` value for this mesh."""
        return ",".join(f"{a}={self.shape[a]}" for a in MESH_AXES if self.shape[a] > 1) or "auto"


PAPER = PRESETS["paper"]


@dataclasses.dataclass(frozen=True)
class TyrRun:
    """Týr's settings that size memory and time (defaults: `--preset paper`)."""

    calib_windows: int = 256
    window: int = 512
    weight_bytes: int = 2
    level_bytes: int = 4
    n_levels: int = PAPER.n_levels
    topk: int = PAPER.topk
    candidate_batch: int = PAPER.candidate_batch
    stages: tuple[tuple[int, int], ...] = PAPER.stages
    generations: int = PAPER.generations
    iterations: int = PAPER.iterations
    head_chunk: int = 64  # positions per step of the student's top-k head (tyr.fitness.FitnessChunks.tokens)
    head_vocab: int = 0  # vocabulary columns per step of that head; 0: the head's rows at the top-k are gathered
    forward_windows: int = 1  # windows in one forward of the teacher or of a candidate batch
    level_density: float = 1.0  # kept rows over all rows of the levels: the store holds only the rows kept
    capture_windows: int = 0  # windows whose captured layer inputs the supernet build holds at once; 0: all
    levels_per_call: int = 0  # levels the local pruner runs at once on one device; 0: all
    stream_on_host: bool = False  # the build's stream waits on the host while the local pruner runs
    utilisation: float = 0.4
    stream: bool = False  # blocks read from the checkpoint when needed, only the head held

    @property
    def calib_tokens(self) -> int:
        return self.calib_windows * self.window


@dataclasses.dataclass(frozen=True)
class SDSRun:
    """SDS's settings (defaults: the paper's 128 × 2048 calibration tokens, 200 + 200 steps)."""

    calib_windows: int = 128
    window: int = 2048
    weight_bytes: int = 2
    steps: int = 200
    adjust_steps: int = 200
    utilisation: float = 0.4
    stream: bool = False  # blocks read from the checkpoint, only the head held
    windows_on_device: int = 0  # windows of the streams on the device at once (the rest on the host); 0: all

    @property
    def calib_tokens(self) -> int:
        return self.calib_windows * self.window


class Line(NamedTuple):
    phase: str
    item: str
    bytes: float  # per device


# --- shapes --------------------------------------------------------------------------------
def q_width(cfg: ModelConfig) -> int:
    return cfg.n_heads * cfg.head_dim


def widest_input(cfg: ModelConfig) -> int:
    """The widest input of a pruned projection: o_proj's (all heads) or down_proj's (all neurons)."""
    return max(q_width(cfg), cfg.intermediate_size)


def level_params(cfg: ModelConfig) -> int:
    """One level of one block: its o_proj and down_proj weights."""
    return (q_width(cfg) + cfg.intermediate_size) * cfg.hidden_size


def supernet_disk_bytes(cfg: ModelConfig, run: TyrRun) -> float:
    """One supernet on disk: every block's levels (the rows they keep, `run.level_density` of
    the dense rows) with their keep masks, plus the calibration stream."""
    masks = run.n_levels * (cfg.n_heads + cfg.intermediate_size)  # bool
    per_block = run.n_levels * level_params(cfg) * run.level_bytes * run.level_density + masks
    return cfg.n_layers * per_block + run.calib_tokens * cfg.hidden_size * F32


def level_density(removed: np.ndarray, n_groups: np.ndarray, group_rows: np.ndarray) -> float:
    """The rows a supernet's levels keep over all their rows: `removed (layers, E)` groups of
    `n_groups (layers,)`, each group `group_rows (layers,)` rows of its layer's weight."""
    kept = (n_groups[:, None] - np.clip(removed, 0, n_groups[:, None])) * group_rows[:, None]
    return float(kept.sum() / (n_groups * group_rows).sum() / removed.shape[1])


# --- memory --------------------------------------------------------------------------------
def split_factor(shape: Sequence[int], axes: Axes, mesh: MeshSpec, head_dim: int = 1) -> int:
    """Over how many devices `tyrjax.parallel.sharding` splits an array of this shape and these axes."""
    split = 1
    for entry in spec(axes, shape, mesh, head_dim):
        for axis in (entry if isinstance(entry, tuple) else (entry,)) if entry else ():
            split *= mesh.shape[axis]
    return split


def per_device(shape: Sequence[int], axes: Axes, itemsize: float, mesh: MeshSpec, head_dim: int = 1) -> float:
    """Bytes of one device's shard of the array."""
    return math.prod(shape) * itemsize / split_factor(shape, axes, mesh, head_dim)


def tree_per_device(shapes: dict, axes: dict, itemsize: float, mesh: MeshSpec, head_dim: int) -> float:
    """Bytes per device of a pytree of shapes laid out by a parallel tree of `Axes`."""
    pairs = zip(jax.tree_util.tree_leaves(axes, is_leaf=is_axes), jax.tree_util.tree_leaves(shapes))
    return sum(per_device(s.shape, ax, itemsize, mesh, head_dim) for ax, s in pairs)


def block_per_device(cfg: ModelConfig, itemsize: float, mesh: MeshSpec) -> float:
    """Bytes per device of one dense block's parameters."""
    axes = layer_axes(cfg)
    return sum(per_device(shape, axes[name], itemsize, mesh, cfg.head_dim) for name, shape in layer_shapes(cfg, 0).items())


def head_per_device(cfg: ModelConfig, itemsize: float, mesh: MeshSpec) -> float:
    """Bytes per device of the parameters outside the blocks (embedding, final norm, LM head)."""
    return sum(per_device(shape, Axes(*MODEL_PARAM_AXES[name]), itemsize, mesh, cfg.head_dim)
               for name, shape in global_shapes(cfg).items())


def tyr_memory(cfg: ModelConfig, mesh: MeshSpec, run: TyrRun) -> list[Line]:
    """Per-device bytes of each array alive in Týr's phases."""
    d, f, L, hd, T = cfg.hidden_size, cfg.intermediate_size, cfg.n_layers, cfg.head_dim, run.window
    wb, lb, C, B, E, k = run.weight_bytes, run.level_bytes, run.candidate_batch, run.forward_windows, run.n_levels, run.topk
    D = widest_input(cfg)
    N = run.calib_windows
    # One device prunes all levels at once (vmap: the damped Gram and its inverse are shared); on a
    # mesh each device damps the gathered Gram once, then prunes its share one level at a time,
    # inverting the damped Gram for each (Cholesky factor, inverse, refit matrix, weight).
    E_call = run.levels_per_call or E
    pruner_state = (f"pruner state of {E_call} levels at once (inverse, refit matrix, weight; fp32)",
                    E_call * (2 * D * D + D * d))
    if mesh.devices > 1:
        pruner_state = ("pruner state of one level at a time (factor, inverse, refit matrix, weight; fp32)",
                        3 * D * D + D * d)
    logits = (B, T, cfg.vocab_size)

    def dev(shape, axes, itemsize, head_dim=1):
        return per_device(shape, axes, itemsize, mesh, head_dim)

    model = tree_per_device(abstract_params(cfg), param_axes(cfg, stacked=True), wb, mesh, hd)
    level_masks = cfg.n_heads + cfg.intermediate_size  # bool
    per_call = blocks_per_call(level_params(cfg) * lb + level_masks, C, L, block_per_device(cfg, wb, mesh))
    head, block = head_per_device(cfg, wb, mesh), block_per_device(cfg, wb, mesh)
    teacher_weights = ("model head and one block (streamed)", head + block) if run.stream else ("model weights", model)
    search_weights = (("model head and the blocks of one call (streamed)", head + per_call * block) if run.stream
                      else ("model weights", model))
    levels_of_call = (dev((per_call, C, q_width(cfg), d), Axes(None, "candidate", "heads", "embed"), lb, hd)
                      + dev((per_call, C, f, d), Axes(None, "candidate", "mlp", "embed"), lb))
    return [
        Line("teacher", *teacher_weights),
        Line("teacher", "logits of one forward, and whole on every device for the replicated top-k (fp32)",
             dev(logits, Axes("batch", "seq", "vocab"), F32) + dev(logits, REPLICATED, F32)),
        Line("teacher", "hidden states of all calibration windows (run block by block)", dev((N, T, d), HIDDEN, wb)),
        Line("teacher", "top-k of all calibration tokens (replicated)", dev((N, T, k), REPLICATED, INDEX_AND_LOGP)),
        *supernet_lines(cfg, run, mesh, model, pruner_state),
        Line("search", *search_weights),
        Line("search", f"supernet levels of one call ({C} candidates x {per_call} blocks, read from disk)",
             levels_of_call),
        Line("search", "parent's input of every block", dev((L + 1, B, T, d), Axes("layers", *HIDDEN), wb)),
        Line("search", f"{C} candidates' hidden states (in, out)",
             2 * dev((C, B, T, d), Axes("candidate", *HIDDEN), wb)),
        Line("search", f"{C} candidates' attention scores of one block (fp32)",
             dev((C, B, cfg.n_heads, T, T), Axes("candidate", "batch", "heads"), F32)),
        Line("search", f"{C} candidates' MLP hidden of one block (gate, up, product)",
             3 * dev((C, B, T, f), Axes("candidate", *MLP_HIDDEN), wb)),
        Line("search", "teacher top-k of the forward", dev((B, T, k), Axes("batch", "seq"), INDEX_AND_LOGP)),
        # the fitness runs after the candidates' last block, so its head step peaks on its own
        Line(SEARCH_HEAD, *search_weights),
        Line(SEARCH_HEAD, "parent's input of every block", dev((L + 1, B, T, d), Axes("layers", *HIDDEN), wb)),
        Line(SEARCH_HEAD, f"{C} candidates' last hidden states", dev((C, B, T, d), Axes("candidate", *HIDDEN), wb)),
        Line(SEARCH_HEAD, "teacher top-k of the forward", dev((B, T, k), Axes("batch", "seq"), INDEX_AND_LOGP)),
        Line(SEARCH_HEAD, "student logits at the teacher's top-k (fp32)", dev((B, T, k), Axes("batch", "seq"), F32)),
        head_line(cfg, run, dev),
    ]


def supernet_lines(cfg: ModelConfig, run: TyrRun, mesh: MeshSpec, model: float,
                   pruner_state: tuple[str, float]) -> list[Line]:
    """The supernet build at its widest layer. With every window's captured input held, the
    capture and the local pruner are alive together; with captures in window chunks, the
    pruner runs after the chunks (`"supernet, local pruner"`) beside the stream alone."""
    d, f, N, T = cfg.hidden_size, cfg.intermediate_size, run.calib_windows, run.window
    D, E = widest_input(cfg), run.n_levels
    E_pad = round_up(E, axis_size(mesh, "level"))  # the pruner pads the levels to the level axis
    captured = min(N, run.capture_windows or N)
    chunked = captured < N

    def dev(shape, axes, itemsize):
        return per_device(shape, axes, itemsize, mesh, cfg.head_dim)

    weights = [Line("supernet", *(("model head (blocks streamed)", head_per_device(cfg, run.weight_bytes, mesh))
                                  if run.stream else ("model weights", model))),
               Line("supernet", "weights of one block", block_per_device(cfg, run.weight_bytes, mesh)),
               Line("supernet", f"{E} levels of one block's o_proj + down_proj (split by level over the devices, fp32)",
                    E_pad // axis_size(mesh, "level") * (q_width(cfg) + f) * d * F32)]
    stream = dev((N, T, d), HIDDEN, F32)
    capture = [Line("supernet", "calibration stream (fp32)" + (", in and out" if chunked else ""),
                    (1 + chunked) * stream),
               Line("supernet", f"captured input of the widest layer, {captured} windows (fp32)",
                    dev((captured, T, f), MLP_HIDDEN, F32))]
    pruner = [Line("supernet", "Gram of the widest input (fp32, split by rows)", dev((D, D), GRAM, F32)),
              Line("supernet", "damped Gram, inverse of the widest input (fp32)", 2 * dev((D, D), REPLICATED, F32)),
              Line("supernet", pruner_state[0], pruner_state[1] * F32)]
    if not chunked:
        return [*weights, *capture, *pruner]
    step = "supernet, local pruner"
    gram = Line("supernet", "Gram of the widest input (fp32, split by rows)", dev((D, D), GRAM, F32))
    return [*weights, *capture, gram,
            *(Line(step, line.item, line.bytes) for line in (*weights, *pruner)),
            Line(step, "calibration stream (fp32)" + (", on the host" if run.stream_on_host else ""),
                 0.0 if run.stream_on_host else stream)]


def head_line(cfg: ModelConfig, run: TyrRun, dev: Callable) -> Line:
    """The search's LM head: for one candidate at a time, one step of positions over one chunk of
    the vocabulary (normed hidden, ids, picked values and output as `tyr.fitness.fitness_chunks`
    counts them, and the chunk's logits); or the head's rows gathered at the top-k of one step
    of positions, once for all the batch's candidates."""
    B, k, d = run.forward_windows, run.topk, cfg.hidden_size
    if run.head_vocab:
        return Line(SEARCH_HEAD, f"the student's head over {run.head_chunk} positions x {run.head_vocab} vocabulary "
                              "columns (one candidate at a time)",
                    dev((B, run.head_chunk), Axes("batch", "seq"), 4 * d + 16 * k + HEAD_LOGIT_BYTES * run.head_vocab))
    return Line(SEARCH_HEAD, "head rows gathered for one chunk of the student's top-k (shared by the candidates)",
                dev((B, run.head_chunk, k, d), Axes("batch", None, None, "embed"), run.weight_bytes))


def baseline_memory(cfg: ModelConfig, mesh: MeshSpec, run: TyrRun) -> list[Line]:
    """Per-device bytes of the structured baselines' block loop (Wanda-sp, FLAP) at down_proj:
    the held model (the head when blocks are streamed) and a copy of the block, the fp32 stream, down_proj's captured input (of
    `run.capture_windows` windows when they are chunked), and the MLP of one capture call."""
    d, f, N, T, wb = cfg.hidden_size, cfg.intermediate_size, run.calib_windows, run.window, run.weight_bytes
    chunk = min(N, BASELINE_CHUNK * split_factor((N,), Axes("batch"), mesh))
    captured = min(N, run.capture_windows or N)

    def dev(shape, axes, itemsize):
        return per_device(shape, axes, itemsize, mesh, cfg.head_dim)

    model = (("model head (blocks streamed)", head_per_device(cfg, wb, mesh)) if run.stream else
             ("model weights", tree_per_device(abstract_params(cfg), param_axes(cfg, stacked=True), wb, mesh,
                                               cfg.head_dim)))
    return [
        Line("baselines", *model),
        Line("baselines", "calibration stream, in and out of the MLP (fp32)", 2 * dev((N, T, d), HIDDEN, F32)),
        Line("baselines", "weights of one block", block_per_device(cfg, wb, mesh)),
        Line("baselines", f"captured input of down_proj, {captured} windows (fp32)",
             dev((captured, T, f), MLP_HIDDEN, F32)),
        Line("baselines", f"the MLP's residual on the {captured} captured windows (masked copy, operand; fp32)",
             (RESIDUAL_COPIES - 1) * dev((captured, T, f), MLP_HIDDEN, F32)),
        Line("baselines", f"MLP of one capture call of {chunk} windows (gate, up, product; fp32)",
             3 * dev((chunk, T, f), MLP_HIDDEN, F32)),
    ]


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """Perplexity's settings: `windows` windows of `window` tokens, `batch` windows per call."""

    windows: int = 16
    window: int = 1024
    weight_bytes: int = 2
    batch: int = 1
    stream: bool = False
    blockwise: bool = False  # a held model scored block by block (its whole forward does not fit)


def evaluation_memory(cfg: ModelConfig, mesh: MeshSpec, run: EvalRun) -> list[Line]:
    """Per-device bytes of scoring one batch of windows: the whole forward when the model is
    held, the LM head on the last block's output when blocks are streamed or a held model is
    scored block by block."""
    d, T, B, wb = cfg.hidden_size, run.window, run.batch, run.weight_bytes

    def dev(shape, axes, itemsize):
        return per_device(shape, axes, itemsize, mesh, cfg.head_dim)

    if run.stream:
        weights = Line("evaluation", "model head (blocks streamed)", head_per_device(cfg, wb, mesh))
    else:
        weights = Line("evaluation", "model weights", tree_per_device(abstract_params(cfg), param_axes(cfg, stacked=True),
                                                                       wb, mesh, cfg.head_dim))
    if run.stream or run.blockwise:
        hidden = Line("evaluation", "hidden states of all windows", dev((run.windows, T, d), HIDDEN, wb))
    else:
        hidden = Line("evaluation", "hidden states of the batch", dev((B, T, d), HIDDEN, wb))
    return [
        weights,
        hidden,
        Line("evaluation", "logits of the batch", dev((B, T, cfg.vocab_size), Axes("batch", "seq", "vocab"), wb)),
        Line("evaluation", "log-softmax of the batch (fp32)", dev((B, T, cfg.vocab_size), Axes("batch", "seq", "vocab"), F32)),
    ]


def sds_memory(cfg: ModelConfig, mesh: MeshSpec, run: SDSRun) -> list[Line]:
    """Per-device bytes of SDS's block loop at its widest layer (gate/up or down_proj): with the
    streams on the device, or (`run.windows_on_device`, or blocks streamed) on the host with a
    chunk of windows on the device and each fitted block sent back to the host."""
    d, f, N, T = cfg.hidden_size, cfg.intermediate_size, run.calib_windows, run.window
    D = max(d, widest_input(cfg))

    def dev(shape, axes, itemsize):
        return per_device(shape, axes, itemsize, mesh, cfg.head_dim)

    wb, L = run.weight_bytes, cfg.n_layers
    linear = sum(math.prod(shape) for name, shape in layer_shapes(cfg, 0).items() if name.startswith("w"))
    model = tree_per_device(abstract_params(cfg), param_axes(cfg, stacked=True), wb, mesh, cfg.head_dim)
    fitting = [
        Line("sds", "Gram X_sᵀX_s of the widest input (fp32)", dev((D, D), REPLICATED, F32)),
        Line("sds", "the objective's b = X_sᵀ(X_s − X_d)W_d of the largest weight (fp32)", dev((f, d), REPLICATED, F32)),
        Line("sds", "SparseGPT damped Hessian and its inverse (fp32)", 2 * dev((D, D), REPLICATED, F32)),
        Line("sds", "re-dense state of the largest weight (W, dense W, gradient, Adam m, v; fp32)",
             5 * dev((f, d), REPLICATED, F32)),
    ]
    if run.stream or run.windows_on_device:
        n = min(N, run.windows_on_device or N)
        weights = (Line("sds", "model head (blocks streamed)", head_per_device(cfg, wb, mesh)) if run.stream
                   else Line("sds", "model weights (held)", model))
        return [
            weights,
            Line("sds", "the block, dense and fitted", 2 * block_per_device(cfg, wb, mesh)),
            Line("sds", f"a chunk of {n} windows: block inputs and outputs, both streams (fp32)",
                 4 * dev((n, T, d), HIDDEN, F32)),
            Line("sds", f"a chunk of {n} windows: inputs of the widest layer, both streams (fp32)",
                 2 * dev((n, T, f), MLP_HIDDEN, F32)),
            Line("sds", "the chunk's Gram, while it is added (fp32)", dev((D, D), REPLICATED, F32)),
            *fitting,
        ]
    return [
        Line("sds", "model weights (held)", model),
        Line("sds", "the block being fitted (a copy)", block_per_device(cfg, wb, mesh)),
        Line("sds", "fitted weights of every block (replicated)", L * linear * wb),
        Line("sds", "block inputs and attention outputs, pruned and dense streams (fp32)", 4 * dev((N, T, d), HIDDEN, F32)),
        Line("sds", "captured inputs of the widest layer, both streams (fp32)", 2 * dev((N, T, f), MLP_HIDDEN, F32)),
        *fitting,
    ]


def phase_peaks(lines: list[Line]) -> dict[str, float]:
    """Bytes per device of each phase with all its arrays alive at once (an upper bound); a
    phase's later step (`"PHASE, STEP"`) does not overlap its first, so the phase peaks at the
    larger of the two."""
    peaks: dict[str, float] = {}
    for line in lines:
        peaks[line.phase] = peaks.get(line.phase, 0.0) + line.bytes
    for step in [name for name in peaks if ", " in name]:
        phase = step.split(", ")[0]
        peaks[phase] = max(peaks.get(phase, 0.0), peaks.pop(step))
    return peaks


def largest_forward(cfg: ModelConfig, mesh: MeshSpec, run: TyrRun, headroom: float = 0.9) -> int:
    """The most windows in one forward (a power of two, at most the last stage's) whose teacher
    and search peaks fit in `headroom` of the device memory; 0 when one window does not fit."""
    most = max(1, math.ceil(run.stages[-1][1] / run.window))
    best, b = 0, 1
    while b <= most:
        peaks = phase_peaks(tyr_memory(cfg, mesh, dataclasses.replace(run, forward_windows=b)))
        if max(peaks["teacher"], peaks["search"]) > headroom * mesh.hbm_bytes:
            break
        best, b = b, 2 * b
    return best


# --- FLOPs and time ------------------------------------------------------------------------
def block_flops_per_token(cfg: ModelConfig, window: int) -> float:
    """One block's forward FLOPs for one token: projections plus attention over the window."""
    return 2 * (cfg.attn_params(0) + cfg.mlp_params(0)) + 4 * window * q_width(cfg)


def forward_flops_per_token(cfg: ModelConfig, window: int, head_outputs: int) -> float:
    """A whole forward for one token whose head computes `head_outputs` logits."""
    return cfg.n_layers * block_flops_per_token(cfg, window) + 2 * cfg.hidden_size * head_outputs


def pruner_flops(d_in: int, d_out: int, group_size: int, rounds: int, n_levels: int) -> float:
    """fp32 FLOPs of `tyrjax.structured.local_pruner.prune_levels` for one layer.

    Shared: Cholesky and inverse of H (d³/3 + 2d³). Per level and round: the saliency's
    G = H W (2 d² o) and the OBS update of H⁻¹ and W over the round's removal slots
    (2 d r (d + o), r = ⌈groups / rounds⌉ · group size); per level: the refit's Cholesky and
    solve (d³/3 + 2 d² o) and right-hand side H W (2 d² o).
    """
    r = math.ceil(d_in / group_size / rounds) * group_size
    per_round = 2 * d_in**2 * d_out + 2 * d_in * r * (d_in + d_out)
    refit = d_in**3 / 3 + 4 * d_in**2 * d_out
    return 7 / 3 * d_in**3 + n_levels * (rounds * per_round + refit)


def pruning_flops(cfg: ModelConfig, levels: int) -> float:
    """fp32 FLOPs of pruning every block's o_proj and down_proj at `levels` levels."""
    return cfg.n_layers * (pruner_flops(q_width(cfg), cfg.hidden_size, cfg.head_dim, ATTN_ROUNDS, levels)
                           + pruner_flops(cfg.intermediate_size, cfg.hidden_size, 1, MLP_ROUNDS, levels))


def search_flops(cfg: ModelConfig, run: TyrRun) -> float:
    """All generations of all iterations: each stage scores its candidates (the last stage also
    the parent) on its tokens, after one pass of the parent for its block inputs. Candidates
    start at their first changed block in tyrjax; counting every block makes this an upper bound."""
    candidate = forward_flops_per_token(cfg, run.window, run.topk)
    parent = cfg.n_layers * block_flops_per_token(cfg, run.window)
    last = len(run.stages) - 1
    per_generation = sum((count + (i == last)) * tokens * candidate + tokens * parent
                         for i, (count, tokens) in enumerate(run.stages))
    return run.iterations * run.generations * per_generation


def tyr_flops(cfg: ModelConfig, run: TyrRun) -> dict[str, float]:
    """FLOPs of each phase of a whole Týr run (its iterations and the final re-prune along the found path)."""
    n = run.calib_tokens
    stream = n * cfg.n_layers * block_flops_per_token(cfg, run.window)
    grams = 2 * n * cfg.n_layers * (q_width(cfg) ** 2 + cfg.intermediate_size**2)
    return {
        "teacher": n * forward_flops_per_token(cfg, run.window, cfg.vocab_size),
        "supernet stream + Grams (fp32)": (run.iterations + 1) * (stream + grams),
        "local pruner (fp32)": run.iterations * pruning_flops(cfg, run.n_levels) + pruning_flops(cfg, 1),
        "search": search_flops(cfg, run),
    }


def tyr_seconds(cfg: ModelConfig, mesh: MeshSpec, run: TyrRun) -> dict[str, float]:
    """Wall seconds of each phase at `run.utilisation` of the mesh's peak; each device of the
    `level` axis prunes its share of a layer's levels."""
    flops = tyr_flops(cfg, run)
    bf16 = mesh.devices * mesh.bf16_flops * run.utilisation
    fp32 = mesh.fp32_flops * run.utilisation
    levels_per_device = math.ceil(run.n_levels / axis_size(mesh, "level"))
    pruner = run.iterations * pruning_flops(cfg, levels_per_device) + pruning_flops(cfg, 1)
    return {
        "teacher": flops["teacher"] / bf16,
        "supernet stream + Grams (fp32)": flops["supernet stream + Grams (fp32)"] / (mesh.devices * fp32),
        "local pruner (fp32)": pruner / fp32,
        "search": flops["search"] / bf16,
    }


def sds_flops(cfg: ModelConfig, run: SDSRun) -> dict[str, float]:
    """FLOPs of SDS: two streams forward, the Grams and objective terms, SparseGPT twice, re-dense
    and adjustment steps."""
    d, q, kv, f = cfg.hidden_size, q_width(cfg), cfg.n_kv_heads * cfg.head_dim, cfg.intermediate_size
    layers = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]  # (d_in, d_out) of each projection
    inputs = [d, q, d, f]  # distinct inputs: q/k/v, o_proj, gate/up, down_proj
    n = run.calib_tokens
    sparsegpt = sum(d_in**3 + 2 * d_in**2 * d_out for d_in, d_out in layers)
    step = sum(2 * d_in**2 * d_out for d_in, d_out in layers)
    L = cfg.n_layers
    return {
        "forward, both streams": 2 * n * L * block_flops_per_token(cfg, run.window),
        "Grams and objective terms (fp32)": 2 * n * L * (sum(w * w for w in inputs)
                                                         + 2 * sum(d_in * d_out for d_in, d_out in layers)),
        "SparseGPT + re-dense + adjustment (fp32)": L * (2 * sparsegpt + (run.steps + run.adjust_steps) * step),
    }


def sds_seconds(cfg: ModelConfig, mesh: MeshSpec, run: SDSRun) -> dict[str, float]:
    flops = sds_flops(cfg, run)
    return {
        "forward, both streams": flops["forward, both streams"] / (mesh.devices * mesh.bf16_flops * run.utilisation),
        "Grams and objective terms (fp32)":
            flops["Grams and objective terms (fp32)"] / (mesh.devices * mesh.fp32_flops * run.utilisation),
        "SparseGPT + re-dense + adjustment (fp32)":
            flops["SparseGPT + re-dense + adjustment (fp32)"] / (mesh.fp32_flops * run.utilisation),
    }
