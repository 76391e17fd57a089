"""Týr's supernet: every layer pruned at E sparsity levels, built block by block.

Each block has two searchable layers (`tyr.genome`): its attention (groups = query heads, input
channels of o_proj) and its MLP (groups = neurons, input channels of down_proj). Only o_proj / down_proj
weights change between levels; q/k/v/gate/up are only masked.

Propagation (ALGORITHMS.md §1.3): the next block's calibration input is the density-weighted
expectation of the E pruned copies' outputs. The levels differ only in o_proj/down_proj, and
the output is linear in that weight, so the expectation equals one matmul with the expected
weight `Σ_e w_e · W_e` (rows of removed groups are zero in W_e, i.e. `diag(m_e) W_e`).
The alternatives of the paper's ablation are kept: dense inputs, one random path, uniform weights.

Storage (ALGORITHMS.md §1.3: 415 GB for a 70B model): a build with a store writes each block's
levels as one `.npy` file per field, while the next block is pruned, and keeps none of them in
memory once written; the search reads the levels its candidates use from memory maps of those
files, a block at a time. The levels are kept in the model's dtype (bf16 for a bf16 model: half
the bytes of float32) unless another is asked for, and their weights as the rows each level
keeps (`PackedLevels`: about half the dense rows at 50 %); the local pruner and the propagated
stream stay float32.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from tyrjax.calibration.statistics import (InputStats, attention_inputs, check_finite, embed_windows, mlp_inputs, stats_of,
                                           zero_padding)
from tyrjax.model.blocks import ModelBlocks, as_blocks, block_activation_bytes, data_split, device_bytes, map_chunks
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.distributed import agree
from tyrjax.runs.progress import BlockProgress
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params
from tyrjax.files import write_npy_atomic
from tyrjax.registry import Registry
from tyrjax.tyr.budget import KVLedger
from tyrjax.tyr.genome import Genome, layer_index, n_searchable
from tyrjax.tyr.search.levels import ATTENTION, MLP, LevelGrid
from tyrjax.parallel.memory import chunking, device_memory_bytes
from tyrjax.parallel.sharding import HIDDEN, host_array, put_axes, resolve_mesh
from tyrjax.structured.local_pruner import level_state_bytes, prune_levels, shared_state_bytes

PROPAGATIONS = ("expectation", "dense", "path", "uniform")

# name -> fn(W_dense, H, group_size, n_remove_per_level (E,), rounds, *, saliency[, mesh][, budget_bytes])
# -> (W_levels, keep_levels); `mesh` is passed only when the supernet is built on one, `budget_bytes`
# (the per-device memory budget) only when the build is given one.
LOCAL_PRUNERS: Registry[Callable] = Registry("local pruner", "tyrjax.tyr.supernet.LOCAL_PRUNERS")
LOCAL_PRUNERS.register("tyr", prune_levels)

register_local_pruner = LOCAL_PRUNERS.register
"""`@register_local_pruner(name)`: make a local pruner selectable by name (`TyrConfig.local_pruner`)."""

get_local_pruner = LOCAL_PRUNERS.get
"""The local pruner registered under a name; an unknown name fails naming the registered ones."""

ATTN_ROUNDS, MLP_ROUNDS = 1, 16  # the reference code: heads in one round, neurons in 16

LEVEL_DTYPES = ("float32", "bfloat16", "float16")  # what a supernet's levels may be stored in


def levels_dtype(name: str | None, model_dtype) -> np.dtype:
    """The dtype a supernet's o_proj/down_proj levels are kept in: `name`, or (None) the model's."""
    if name is None:
        return np.dtype(model_dtype)
    if name not in LEVEL_DTYPES:
        raise TyrjaxError(f"supernet dtype {name!r} unknown; use one of {', '.join(LEVEL_DTYPES)} "
                          "(or none for the model's dtype)")
    return np.dtype(jnp.dtype(name))


def stored_as(levels: BlockLevels, dtype: np.dtype) -> BlockLevels:
    """`levels` with their weights in `dtype` (rounded to nearest); the masks unchanged."""
    return levels._replace(wo=levels.wo.astype(dtype, copy=False), w_down=levels.w_down.astype(dtype, copy=False))


class BlockLevels(NamedTuple):
    """One block's levels: `wo (E, H*hd, d)`, `head_keep (E, H)`, `w_down (E, F, d)`, `ffn_keep (E, F)`;
    gathered for a batch of candidates, the leading axis holds one entry per candidate instead."""

    wo: np.ndarray
    head_keep: np.ndarray
    w_down: np.ndarray
    ffn_keep: np.ndarray


class Supernet:
    """Every block's levels, block by block and never stacked. A block of a build with a store
    is read from its files when a level is needed: each read maps them afresh and unmaps them
    when done, so the levels read do not stay in the process's memory. A block of a build
    without a store (`held[b]` not None) stays in memory. A candidate is an integer level per
    searchable layer (a `Genome`)."""

    def __init__(self, held: Sequence[BlockLevels | None], store: SupernetStore | None = None):
        if store is None and any(levels is None for levels in held):
            raise TyrjaxError("supernet: a block that is not held in memory needs the store it was written to")
        self.held = tuple(held)
        self.store = store

    @property
    def n_blocks(self) -> int:
        return len(self.held)

    def block(self, block: int) -> BlockLevels:
        """Block `block`'s levels: the held arrays, or memory maps of its files (nothing read yet)."""
        levels = self.held[block]
        return self.store.load_block(block) if levels is None else levels

    def gather(self, block: int, attn_levels: np.ndarray, mlp_levels: np.ndarray,
               out: BlockLevels | None = None) -> BlockLevels:
        """Block `block`'s levels for a batch of candidates, in memory (C, ...), written into `out`
        when given: only the levels named are read."""
        a, m = np.asarray(attn_levels), np.asarray(mlp_levels)
        levels = self.block(block)
        if out is None:
            out = BlockLevels(*(np.empty((len(i), *x.shape[1:]), x.dtype) for x, i in zip(levels, (a, a, m, m))))
        for source, chosen, target in zip(levels, (a, a, m, m), out):
            np.take(source, chosen, axis=0, out=target)  # from a memory map or packed rows: only these levels
        return out

    def candidate(self, genome: np.ndarray | Genome) -> BlockLevels:
        """One candidate's levels in every block, stacked on a leading block axis (L, ...)."""
        g = Genome(np.asarray(genome))
        first = self.block(0)
        out = BlockLevels(*(np.empty((self.n_blocks, *x.shape[1:]), x.dtype) for x in first))
        for b in range(self.n_blocks):
            self.gather(b, g.attention[b:b + 1], g.mlp[b:b + 1], out=BlockLevels(*(x[b:b + 1] for x in out)))
        return out

    def masks(self, genome: np.ndarray | Genome) -> tuple[np.ndarray, np.ndarray]:
        """One candidate's head and neuron keep masks (L, H), (L, F), read without its weights."""
        g = Genome(np.asarray(genome))
        blocks = [self.block(b) for b in range(self.n_blocks)]
        head = np.stack([levels.head_keep[g.attention[b]] for b, levels in enumerate(blocks)])
        ffn = np.stack([levels.ffn_keep[g.mlp[b]] for b, levels in enumerate(blocks)])
        return head, ffn


def level_weights(grid: LevelGrid, row: int, propagation: str, rng: np.random.Generator) -> np.ndarray:
    """Weights w_e of the E levels of searchable layer `row` in the propagated input."""
    valid = grid.valid[row]
    if propagation == "uniform":
        w = valid.astype(np.float64)
    elif propagation == "path":
        w = np.zeros(grid.n_levels)
        w[rng.choice(np.flatnonzero(valid))] = 1.0
    else:
        density = 1.0 - np.clip(grid.level_sparsity[row], 0.0, 1.0)
        w = np.where(valid, density, 0.0)
        if w.sum() == 0:  # every valid level removes everything: the expectation is zero output
            return w.astype(np.float32)
    return (w / w.sum()).astype(np.float32)


def _removal_counts(grid: LevelGrid, row: int) -> np.ndarray:
    """Groups removed per level, clipped into range (invalid levels are never used)."""
    return np.clip(grid.removed[row], 0, grid.n_groups[row]).astype(np.int32)


@jax.jit
def _expected_weight(levels: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.einsum("e,eio->io", weights, levels)


F32 = 4
STATS_CHUNK = 8  # windows per device of one capture call: bounds the attention scores' temporaries


def widest_input(cfg: ModelConfig) -> int:
    """The widest input a block's pruned projections read: o_proj's (all heads) or down_proj's (all neurons)."""
    return max(cfg.n_heads * cfg.head_dim, cfg.intermediate_size)


def capture_fixed_bytes(cfg: ModelConfig, n_local: int, length: int, resident_bytes: float) -> float:
    """What a capture call of the build holds per device besides its captured inputs: the
    weights held (`resident_bytes`: the model's resident part and the block), the fp32
    calibration stream in and out, the Gram of the widest input and one capture call's
    temporaries."""
    stream = n_local * length * cfg.hidden_size * F32
    return (resident_bytes + 2 * stream + widest_input(cfg) ** 2 * F32
            + min(STATS_CHUNK, n_local) * block_activation_bytes(cfg, length))


def capture_windows(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, resident_bytes: float,
                    phase: str = "supernet build", copies: int = 1) -> int:
    """Windows per device whose captured o_proj / down_proj inputs (fp32) the build holds at
    once: all of them when they fit `budget_bytes` (then each layer is captured once and the
    capture feeds both its Gram and the next block's input), else the largest multiple of
    `STATS_CHUNK` that fits (each chunk is captured twice: for the Gram, then after the layer
    is pruned for the stream). `copies`: the captured input's size a window needs at once (a
    caller that applies the layer to all captured windows in one call holds its temporaries
    too). Fails naming the phase when not even one capture call fits."""
    return chunking(n_local, copies * length * widest_input(cfg) * F32, budget_bytes,
                    fixed_bytes=capture_fixed_bytes(cfg, n_local, length, resident_bytes), phase=phase,
                    multiple=min(STATS_CHUNK, n_local)).size


def held_while_pruning(cfg: ModelConfig, n_local: int, length: int, resident_bytes: float, chunked: bool,
                       stream_on_host: bool = False) -> float:
    """Per-device bytes the build holds while the local pruner runs: the weights held, the fp32
    stream (unless it waits on the host) and, unless the captures are chunked, the widest
    layer's captured input."""
    stream = 0 if stream_on_host else n_local * length * cfg.hidden_size * F32
    captured = 0 if chunked else n_local * length * widest_input(cfg) * F32
    return resident_bytes + stream + captured


def one_level_bytes(cfg: ModelConfig, weight_bytes: int) -> int:
    """Per-device bytes of the local pruner on one level of the block's larger pruned layer."""
    return max(shared_state_bytes(d_in, cfg.hidden_size, weight_bytes) + level_state_bytes(d_in, cfg.hidden_size, rounds)
               for d_in, rounds in ((cfg.n_heads * cfg.head_dim, ATTN_ROUNDS), (cfg.intermediate_size, MLP_ROUNDS)))


def pruner_fits(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, resident_bytes: float,
                chunked: bool, weight_bytes: int, stream_on_host: bool = False) -> bool:
    """Whether one level of the local pruner fits beside what the build holds while it runs."""
    held = held_while_pruning(cfg, n_local, length, resident_bytes, chunked, stream_on_host)
    return held + one_level_bytes(cfg, weight_bytes) <= budget_bytes


def stream_waits_on_host(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, resident_bytes: float,
                         chunked: bool, weight_bytes: int) -> bool:
    """Whether the calibration stream waits on the host while the local pruner runs: when one
    level does not fit beside it and does without it (the same values come back)."""
    args = (cfg, n_local, length, budget_bytes, resident_bytes, chunked, weight_bytes)
    return not pruner_fits(*args) and pruner_fits(*args, stream_on_host=True)


def build_capture_windows(cfg: ModelConfig, n_local: int, length: int, budget_bytes: int, resident_bytes: float,
                          weight_bytes: int) -> int:
    """Windows per device the build captures at once (`capture_windows`), fewer than all of them
    when every window's captured input held while the pruner runs leaves no room for one of its
    levels: then halves, rounded up to a multiple of `STATS_CHUNK`."""
    size = capture_windows(cfg, n_local, length, budget_bytes, resident_bytes)
    if size < n_local or pruner_fits(cfg, n_local, length, budget_bytes, resident_bytes, False, weight_bytes):
        return size
    multiple = min(STATS_CHUNK, n_local)
    half = -(-(-(-n_local // 2)) // multiple) * multiple
    return half if half < n_local else size


def _window_chunks(x: jax.Array, size: int, mesh: Mesh | None):
    """(chunk, windows in it) of `size` windows of `x` at a time, the last padded with copies
    of its last window so every chunk has one shape."""
    for start in range(0, x.shape[0], size):
        part = x[start:start + size]
        valid = part.shape[0]
        if valid < size:
            part = jnp.concatenate([part, jnp.repeat(part[-1:], size - valid, 0)])
        yield (part if mesh is None else put_axes(part, HIDDEN, mesh)), valid


def chunked_stats(capture: Callable, x: jax.Array, size: int, mesh: Mesh | None) -> InputStats:
    """Statistics of `capture`'s output over every window of `x`, summed over chunks of `size`
    windows (padding windows zeroed)."""
    gram = total = None
    for part, valid in _window_chunks(x, size, mesh):
        s = stats_of(zero_padding(capture(part), jnp.int32(valid)), mesh)
        gram, total = (s.gram, s.total) if gram is None else (gram + s.gram, total + s.total)
    return InputStats(gram, total, x.shape[0] * x.shape[1])


def chunked_stream(step: Callable, x: jax.Array, size: int, mesh: Mesh | None) -> jax.Array:
    """`step` applied to `x` in chunks of `size` windows, concatenated over the windows."""
    out = jnp.concatenate([step(part)[:valid] for part, valid in _window_chunks(x, size, mesh)])
    return out if mesh is None else put_axes(out, HIDDEN, mesh)


class Capture:
    """A layer's inputs over every window of a block's stream `x`: held for every window (`size`
    None), or in chunks of `size` windows (all devices), captured once for the statistics and
    again for the next stream (`capture` maps windows to the layer's inputs)."""

    def __init__(self, capture: Callable, x: jax.Array, size: int | None, mesh: Mesh | None):
        self.capture, self.size, self.mesh = capture, size, mesh
        self.whole = capture(x) if size is None else None
        self.stats = stats_of(self.whole, mesh) if size is None else chunked_stats(capture, x, size, mesh)

    def next_stream(self, step: Callable, x: jax.Array) -> jax.Array:
        """`step(x, captured)` over every window: at once, or chunk by chunk."""
        if self.size is None:
            return step(x, self.whole)
        return chunked_stream(lambda xs: step(xs, self.capture(xs)), x, self.size, self.mesh)


def prune_block(
    p: Params, cfg: ModelConfig, x: jax.Array, grid: LevelGrid, block: int, propagation: str,
    rng: np.random.Generator, saliency: str = "tyr", chunk: int = STATS_CHUNK, local_pruner: str = "tyr",
    mesh: Mesh | None = None, budget_bytes: int | None = None, ledger: KVLedger | None = None,
    resident_bytes: float = 0,
) -> tuple[BlockLevels, jax.Array]:
    """All levels of block `block`'s attention and MLP (float32), and the next block's
    calibration input.

    With a `ledger` (one-level grids), the MLP's removal pays for the KV heads the attention frees.
    On a mesh, windows are split over the data axes, heads and neurons over tensor, and the
    local pruner receives the mesh (its levels spread over devices).

    Memory: beside `resident_bytes` per device (the weights the caller holds), a layer's
    captured input for all windows is held when it fits the budget (`budget_bytes`, default
    `parallel.memory.device_memory_bytes()`); else its Gram is summed over chunks of windows
    (`capture_windows`) and each chunk is captured again for the next block's input. With
    `budget_bytes` the local pruner receives what is left of it beside what the build holds
    while it runs (`held_while_pruning`), to group its levels to."""
    prune_levels = get_local_pruner(local_pruner)
    split = data_split(mesh)
    n_local, length = -(-x.shape[0] // split), x.shape[1]
    resident = resident_bytes + device_bytes(p)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    size = build_capture_windows(cfg, n_local, length, budget, resident, p["wo"].dtype.itemsize)
    chunked = size < n_local
    on_host = stream_waits_on_host(cfg, n_local, length, budget, resident, chunked, p["wo"].dtype.itemsize)
    options = {"mesh": mesh}
    if budget_bytes is not None:
        held = held_while_pruning(cfg, n_local, length, resident, chunked, on_host)
        options["budget_bytes"] = max(int(budget_bytes - held), 1)
    options = {name: value for name, value in options.items() if value is not None}

    def pruned(*args, **kwargs):
        """`prune_levels`, with the stream on the host meanwhile when it must wait there."""
        nonlocal x
        if not on_host:
            return prune_levels(*args, **kwargs, **options)
        x_host, x = host_array(x), None
        out = prune_levels(*args, **kwargs, **options)
        x = jnp.asarray(x_host) if mesh is None else put_axes(x_host, HIDDEN, mesh)
        return out

    def heads_of(xs: jax.Array) -> jax.Array:
        return map_chunks(lambda c: attention_inputs(p, cfg, c, mesh=mesh)[1], xs, chunk)

    def hidden_of(xs: jax.Array) -> jax.Array:
        return map_chunks(lambda c: mlp_inputs(p, cfg, c, mesh=mesh)[1], xs, chunk)

    a_row, m_row = layer_index(block, ATTENTION), layer_index(block, MLP)
    windows = size * split if chunked else None
    heads = Capture(heads_of, x, windows, mesh)
    stats = heads.stats
    check_finite(stats, f"block {block} o_proj")
    wo_lv, head_keep = pruned(p["wo"], stats.gram, cfg.head_dim, _removal_counts(grid, a_row), ATTN_ROUNDS,
                              saliency=saliency)
    wo_in = p["wo"] if propagation == "dense" else _expected_weight(wo_lv, level_weights(grid, a_row, propagation, rng))
    bo = p["bo"] if "bo" in p else 0.0
    x = heads.next_stream(lambda xs, h: xs + h @ wo_in + bo, x)
    del heads
    hidden = Capture(hidden_of, x, windows, mesh)
    stats = hidden.stats
    check_finite(stats, f"block {block} down_proj")
    mlp_counts = _removal_counts(grid, m_row)
    if ledger is not None:
        mlp_counts = np.asarray([ledger.mlp_removal(host_array(head_keep)[0], int(mlp_counts[0]))], np.int32)
    wd_lv, ffn_keep = pruned(p["w_down"], stats.gram, 1, mlp_counts, MLP_ROUNDS, saliency=saliency)
    wd_in = p["w_down"] if propagation == "dense" else _expected_weight(wd_lv, level_weights(grid, m_row, propagation, rng))
    b_down = p["b_down"] if "b_down" in p else 0.0
    x = hidden.next_stream(lambda xs, h: xs + h @ wd_in + b_down, x)
    del hidden
    # on a mesh the levels are split over the devices (of every process): gathered here
    levels = BlockLevels(host_array(wo_lv), host_array(head_keep), host_array(wd_lv), host_array(ffn_keep))
    return levels, x


LEVEL_GROUPS = {"wo": "head_keep", "w_down": "ffn_keep"}  # a stored weight field and the keep mask of its rows


class PackedLevels:
    """One weight field of a block's levels, (E, rows, d), stored as only the rows each level
    keeps: level e's kept rows (its keep mask repeated over `group` rows per group), levels one
    after another in `packed (R, d)`. A level's removed rows are exactly zero, so a level read
    back equals the one written, and the file takes the levels' mean density of the dense bytes.
    Reads expand only the levels asked for (`take`, `[e]`); `numpy.asarray` expands them all."""

    ndim = 3

    def __init__(self, packed: np.ndarray, keep: np.ndarray, group: int):
        self.packed = packed
        self.rows = np.repeat(np.asarray(keep, bool), group, axis=1)  # (E, rows)
        self.offsets = np.concatenate([[0], np.cumsum(self.rows.sum(1))])
        self.shape = (*self.rows.shape, packed.shape[1])
        self.dtype = packed.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def level_into(self, level: int, out: np.ndarray) -> None:
        out[...] = 0
        out[self.rows[level]] = self.packed[self.offsets[level]:self.offsets[level + 1]]

    def __getitem__(self, level: int) -> np.ndarray:
        out = np.empty(self.shape[1:], self.dtype)
        self.level_into(int(level), out)
        return out

    def take(self, indices, axis: int = 0, out: np.ndarray | None = None, mode: str = "raise") -> np.ndarray:
        """Levels `indices` (E',  rows, d), written into `out` when given (as `numpy.take` on axis 0)."""
        if axis != 0:
            raise TyrjaxError("packed supernet levels are read by level (axis 0) only")
        indices = np.asarray(indices).reshape(-1)
        if out is None:
            out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        for j, level in enumerate(indices):
            self.level_into(int(level), out[j])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


def packed_rows(levels: np.ndarray, keep: np.ndarray, group: int) -> np.ndarray:
    """The rows each level keeps, levels one after another (R, d) (`PackedLevels`)."""
    return np.asarray(levels)[np.repeat(np.asarray(keep, bool), group, axis=1)]


class SupernetStore:
    """Levels on disk, one `.npy` file per block and field, plus the stream entering the next
    block, so an interrupted build resumes at the first missing block and produces the same
    supernet. `supernet.json` names the build's key and the blocks completed: a block's files
    count only once it lists them (files of a stale or unfinished build are rewritten).
    The weights' files hold `dtype` (`.npy` stores bfloat16 as raw 2-byte items, read back as
    bfloat16 here), and only the rows each level keeps (`PackedLevels`); `head_dim` is the
    rows of one o_proj group."""

    def __init__(self, directory: Path, key: str, dtype: np.dtype = np.dtype(np.float32), head_dim: int = 1):
        self.dir = Path(directory)
        self.key = key
        self.dtype = np.dtype(dtype)
        self.groups = {"wo": head_dim, "w_down": 1}
        self.progress = BlockProgress(self.dir / "supernet.json", key)

    @property
    def earlier_s(self) -> float:
        """Wall seconds earlier runs spent building the blocks found on disk."""
        return self.progress.earlier_s

    def start_clock(self) -> None:
        self.progress.start_clock()

    def completed(self) -> int:
        """Number of consecutive blocks already built for this key (0 when stale or absent)."""
        return self.progress.completed()

    def field_path(self, block: int, field: str) -> Path:
        return self.dir / f"block_{block:04d}.{field}.npy"

    def save_block(self, block: int, levels: BlockLevels, stream: jax.Array) -> None:
        fields = levels._asdict()
        for field, array in fields.items():
            if field in LEVEL_GROUPS:
                array = packed_rows(array, fields[LEVEL_GROUPS[field]], self.groups[field])
            write_npy_atomic(self.field_path(block, field), np.asarray(array))
        write_npy_atomic(self.progress.stream_path("stream", block + 1), host_array(stream))
        self.progress.mark(block + 1, streams=("stream",))

    def load_block(self, block: int) -> BlockLevels:
        """Block `block`'s levels over read-only memory maps of its files (nothing read yet)."""
        maps = {f: np.load(self.field_path(block, f), mmap_mode="r") for f in BlockLevels._fields}
        for field, keep in LEVEL_GROUPS.items():
            maps[field] = PackedLevels(maps[field].view(self.dtype), maps[keep], self.groups[field])
        return BlockLevels(**maps)

    def load_stream(self) -> np.ndarray:
        """The stream entering the first block not yet built."""
        return np.load(self.progress.stream_path("stream", self.completed()))


STORE_FORMAT = "rows-kept/stream-per-block"  # stores of another layout are rebuilt, not misread


def supernet_key(cfg: ModelConfig, grid: LevelGrid, windows: np.ndarray, *settings,
                 dtype: np.dtype = np.dtype(np.float32)) -> str:
    """Identifies a build: a store with another key is rebuilt, never mixed. The levels' dtype
    is part of it (named only when not float32), and so is the store's layout."""
    if np.dtype(dtype) != np.float32:
        settings = (*settings, np.dtype(dtype).name)
    h = hashlib.sha256()
    h.update(json.dumps([cfg.to_hf(), grid.to_dict(), *settings, STORE_FORMAT], sort_keys=True).encode())
    h.update(np.ascontiguousarray(windows).tobytes())
    return h.hexdigest()[:20]


def build_supernet(
    params: Params | ModelBlocks,
    cfg: ModelConfig,
    windows: np.ndarray,
    grid: LevelGrid,
    *,
    propagation: str = "expectation",
    saliency: str = "tyr",
    local_pruner: str = "tyr",
    store_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    mesh: Mesh | None = None,
    dtype: str | None = None,
    budget_bytes: int | None = None,
    settle_kv: int = 0,
) -> Supernet:
    """Prune every block at its E levels, propagating calibration inputs per `propagation`.

    The levels are kept in `dtype` (one of `LEVEL_DTYPES`; None: the model's dtype); the local
    pruner works in float32 and groups its levels to `budget_bytes` per device (None: its default,
    the device's own budget). The propagated calibration inputs come from the float32 levels.
    `settle_kv > 0` (one-level grids only): each block's MLP removes fewer neurons, in multiples
    of `settle_kv`, worth the KV heads its attention frees (`budget.KVLedger`), so the compact
    model removes the grid's parameter total.

    With `store_dir`, finished blocks are written there, the supernet reads them from disk (its
    memory does not grow with depth) and a rerun resumes after the last one; without, the levels
    stay in memory. On a mesh (default: the one of `sharding.use_mesh`, if any) every block runs
    sharded; the levels come back on the host, equal to the one-device ones, and the scorer lays
    out the ones a batch of candidates uses.
    """
    mesh = resolve_mesh(mesh)
    model = as_blocks(params, cfg, mesh)
    if propagation not in PROPAGATIONS:
        raise TyrjaxError(f"supernet: propagation {propagation!r} unknown; use one of {', '.join(PROPAGATIONS)}")
    if grid.n_layers != n_searchable(cfg.n_layers):
        raise TyrjaxError(f"supernet: the grid has {grid.n_layers} layers, the model needs {n_searchable(cfg.n_layers)}")
    get_local_pruner(local_pruner)
    if settle_kv and grid.n_levels != 1:
        raise TyrjaxError(f"supernet: settle_kv needs a one-level grid (one distribution); this one has {grid.n_levels}")
    stored_dtype = levels_dtype(dtype, model.head["embed"].dtype)
    settings = (propagation, saliency, local_pruner, seed) + ((settle_kv,) if settle_kv else ())
    key = supernet_key(cfg, grid, windows, *settings, dtype=stored_dtype)
    store = SupernetStore(store_dir, key, stored_dtype, cfg.head_dim) if store_dir else None
    start = agree(store.completed(), f"supernet store {store.dir}") if store else 0
    if store:
        store.start_clock()
    if start:
        stream = store.load_stream()
        x = jnp.asarray(stream) if mesh is None else put_axes(stream, HIDDEN, mesh)
    else:
        x = embed_windows(model.head, windows, mesh)
    held: list[BlockLevels | None] = [None] * start
    ledger = KVLedger(cfg, settle_kv) if settle_kv else None
    for b in range(start if ledger else 0):  # the blocks built before a resume
        done = store.load_block(b)
        ledger.record(done.head_keep[0], int(grid.removed[layer_index(b, MLP), 0]), int((~done.ffn_keep[0]).sum()))
    bar = tqdm(range(start, cfg.n_layers), desc="supernet", unit="block", disable=not progress,
               initial=start, total=cfg.n_layers)
    writes = BlockWrites(store, held)
    try:
        for b in bar:
            rng = np.random.default_rng([seed, b])
            p = model.block(b)
            levels, x = prune_block(p, cfg, x, grid, b, propagation, rng, saliency, local_pruner=local_pruner,
                                    mesh=mesh, budget_bytes=budget_bytes, ledger=ledger,
                                    resident_bytes=model.resident_bytes())
            held.append(stored_as(levels, stored_dtype))
            writes.submit(b, x)
        writes.finish()
    finally:
        writes.close()
    return Supernet(held, store)


class BlockWrites:
    """A build's writes to its store, each block's while the next block is pruned: the disk's
    time hides behind the computation. A block counts as built once its write is done (the
    store's `supernet.json` lists it); the next write starts only then, so a killed build
    resumes as it would have without the overlap. The stream is gathered to the host here, in
    the calling thread (on a multi-process mesh a gather every process joins)."""

    def __init__(self, store: SupernetStore | None, held: list):
        self.store, self.held = store, held
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supernet-store") if store else None
        self.pending: tuple[int, Future] | None = None

    def submit(self, block: int, stream: jax.Array) -> None:
        """Start writing block `block` (its levels are `held[block]`) and the stream entering the
        next block, once the write before it is done."""
        if self.store is None:
            return
        stream = host_array(stream)
        self.finish()
        self.pending = block, self.pool.submit(self.store.save_block, block, self.held[block], stream)

    def finish(self) -> None:
        """Wait for the last write (its error raised here); then its block is read from disk.
        Only process 0 writes: another process reads the files where it shares the store's
        directory and otherwise keeps its own copy of the levels."""
        if self.pending is None:
            return
        block, write = self.pending
        self.pending = None
        write.result()
        agree(block, f"supernet store {self.store.dir}")  # process 0 has written the block before anyone maps it
        if self.store.completed() > block:
            self.held[block] = None

    def close(self) -> None:
        """Let a write under way finish (a block is written whole or not at all), then stop."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
