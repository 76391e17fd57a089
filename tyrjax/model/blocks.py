"""A model's parameters one decoder block at a time, and the model run block by block.

Týr touches one block at a time (calibration, supernet, re-pruning) or a few (one scoring call
of the search), and a model's hidden states for a set of windows are small next to its
weights. So the pipeline takes `ModelBlocks`: the parameters outside the blocks (`head`:
embedding, final norm, LM head), which stay resident, and `block(i)`.

- `HeldBlocks` serves blocks from parameters in memory (either form).
- `checkpoints.streaming.StreamedBlocks` reads each block from the checkpoint when it is asked
  for and lets it go afterwards, so what a run holds does not grow with the model's depth.

`run_blocks` takes the hidden states of a set of windows through every block, one block (and
a few windows) at a time, holding them on the host when they exceed the per-device memory
budget; the teacher of the search and `evaluate.perplexity_blockwise` use it.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from tyrjax.model.config import ModelConfig
from tyrjax.model.layers import decoder_layer, rope_tables
from tyrjax.model.decoder import Params, embed, is_stacked
from tyrjax.parallel.memory import chunking, device_memory_bytes
from tyrjax.parallel.sharding import HIDDEN, Axes, axis_size, host_array, put_axes, sharded_call
from tyrjax.model.axes import LAYER_PARAM_AXES, MODEL_PARAM_AXES, axes_of_layer, shard_layer, shard_params


class ModelBlocks(abc.ABC):
    """A model as `head` (the parameters outside the blocks) and `block(i)` (laid out on `mesh`
    when there is one)."""

    cfg: ModelConfig
    head: Params
    mesh: Mesh | None

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @abc.abstractmethod
    def block(self, index: int) -> Params:
        """Decoder block `index`'s parameters."""

    def stacked(self, indices: Sequence[int]) -> Params:
        """Blocks `indices` of a dense-width model stacked on a leading axis (k, ...)."""
        wanted = {i: self.block(i) for i in sorted(set(indices))}
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(wanted[i] for i in indices))

    def head_axes(self) -> dict[str, Axes]:
        return {k: Axes(*MODEL_PARAM_AXES[k]) for k in self.head}

    def resident_bytes(self) -> int:
        """Bytes per device of the parameters held between calls (the head; blocks are read when asked for)."""
        return device_bytes(self.head)


class HeldBlocks(ModelBlocks):
    """Blocks of parameters held in memory: the masked (stacked) or the compact (list) form."""

    def __init__(self, params: Params, cfg: ModelConfig, mesh: Mesh | None = None):
        self.params = params if mesh is None else shard_params(params, cfg, mesh)
        self.cfg, self.mesh = cfg, mesh
        self.head = {k: v for k, v in self.params.items() if k != "layers"}

    def block(self, index: int) -> Params:
        if not is_stacked(self.params):
            return self.params["layers"][index]
        return layer(self.params, index, self.cfg, self.mesh)

    def stacked(self, indices: Sequence[int]) -> Params:
        if not is_stacked(self.params):
            return super().stacked(indices)
        idx = np.asarray(indices)
        return jax.tree_util.tree_map(lambda a: a[idx], self.params["layers"])

    def resident_bytes(self) -> int:
        return device_bytes(self.params)


def device_bytes(tree) -> int:
    """Bytes of `tree`'s arrays on one device (a sharded array counts one shard)."""
    def one(a) -> int:
        shards = getattr(a, "addressable_shards", None)
        return shards[0].data.nbytes if shards else np.asarray(a).nbytes
    return sum(one(a) for a in jax.tree_util.tree_leaves(tree))



def as_blocks(params: Params | ModelBlocks, cfg: ModelConfig, mesh: Mesh | None = None) -> ModelBlocks:
    """`params` as `ModelBlocks` (parameters in memory are served by `HeldBlocks`)."""
    return params if isinstance(params, ModelBlocks) else HeldBlocks(params, cfg, mesh)


@partial(jax.jit, static_argnames=("cfg", "kv_map"))
def block_output(p: Params, cfg: ModelConfig, x: jax.Array, kv_map: tuple[int, ...]) -> jax.Array:
    """One unmasked block applied to hidden states x (B, T, d)."""
    cos, sin = rope_tables(cfg, jnp.arange(x.shape[1]))
    return decoder_layer(p, cfg, x, cos, sin, kv_map)[0]


def _block_on(p: Params, cfg: ModelConfig, x: jax.Array, kv_map: tuple[int, ...], mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return block_output(p, cfg, x, kv_map)
    inputs = {"p": (p, axes_of_layer(p)), "x": (x, HIDDEN)}
    return sharded_call(block_output, mesh, inputs, HIDDEN, head_dim=cfg.head_dim, static={"cfg": cfg, "kv_map": kv_map})


def embedded(blocks: ModelBlocks, windows: np.ndarray) -> jax.Array:
    """The hidden states entering block 0 (n_windows, T, d) in the model's dtype; on a mesh,
    split by windows."""
    x = embed(blocks.head, jnp.asarray(windows))
    return x if blocks.mesh is None else put_axes(x, HIDDEN, blocks.mesh)


def block_activation_bytes(cfg: ModelConfig, length: int) -> int:
    """Bytes of one window's temporaries inside one block (fp32 attention scores, MLP hidden,
    projections): what a call on `chunk` windows adds to the hidden states."""
    return 4 * length * (cfg.n_heads * length + 3 * cfg.intermediate_size + 4 * cfg.hidden_size)


def hidden_chunk(blocks: ModelBlocks, n_windows: int, length: int, chunk: int, budget_bytes: int, phase: str) -> int:
    """Windows per device whose hidden states (into and out of a block) stay on the device at
    once: all of them when they fit `budget_bytes` next to the parameters held and one block's
    temporaries for `chunk` windows, else the largest multiple of `chunk` that fits (the rest
    wait on the host). Fails naming `phase` when not even `chunk` windows fit."""
    cfg = blocks.cfg
    itemsize = jnp.dtype(blocks.head["embed"].dtype).itemsize
    block = cfg.attn_mlp_params() // cfg.n_layers * itemsize
    fixed = blocks.resident_bytes() + block + chunk * block_activation_bytes(cfg, length)
    return chunking(n_windows, 2 * length * cfg.hidden_size * itemsize, budget_bytes, fixed_bytes=fixed, phase=phase,
                    multiple=chunk).size


def run_blocks(blocks: ModelBlocks, windows: np.ndarray, chunk: int = 2, desc: str | None = None,
               budget_bytes: int | None = None, phase: str = "forward") -> jax.Array | np.ndarray:
    """The last block's output (n_windows, T, d) for token `windows`, computed block by block,
    `chunk` windows (per device) at a time; `desc` shows a progress bar over the blocks.

    When the hidden states of all windows do not fit `budget_bytes` per device (default:
    `parallel.memory.device_memory_bytes()`; see `hidden_chunk`), they stay on the host and
    stream to the device a fixed number of windows at a time (the last chunk padded), and the
    result is a numpy array."""
    cfg = blocks.cfg
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    split = data_split(blocks.mesh)
    n_local = -(-len(windows) // split)
    size = hidden_chunk(blocks, n_local, windows.shape[1], chunk, budget, phase)
    bar = tqdm(range(cfg.n_layers), desc=desc, unit="block", disable=desc is None, leave=False)
    if size >= n_local:
        x = embedded(blocks, windows)
        for i in bar:
            p = blocks.block(i)
            x = map_chunks(lambda h, p=p, i=i: _block_on(p, cfg, h, cfg.kv_map(i), blocks.mesh), x, chunk)
        return x
    size *= split
    padded = padded_windows(windows, size)
    x = None
    for i in bar:
        p = blocks.block(i)
        for start in range(0, len(padded), size):
            part = padded[start:start + size]
            h = embedded(blocks, part) if i == 0 else to_device(x[start:start + size], blocks.mesh)
            out = map_chunks(lambda h, p=p, i=i: _block_on(p, cfg, h, cfg.kv_map(i), blocks.mesh), h, chunk)
            if x is None:
                x = np.empty((len(padded), *out.shape[1:]), out.dtype)
            x[start:start + size] = host_array(out)
    return x[:len(windows)]


def data_split(mesh: Mesh | None) -> int:
    """Over how many devices windows are split on `mesh`."""
    return 1 if mesh is None else axis_size(mesh, "batch")


def padded_windows(x: np.ndarray, size: int) -> np.ndarray:
    """`x` with copies of its last window appended up to a multiple of `size` windows."""
    pad = -len(x) % size
    return np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x


def to_device(x: np.ndarray | jax.Array, mesh: Mesh | None) -> jax.Array:
    """Hidden states (n, T, d) or tokens (n, T) on the device, split by windows on a mesh."""
    if mesh is None:
        return jnp.asarray(x)
    return put_axes(x, HIDDEN if x.ndim == 3 else Axes("batch", "seq"), mesh)


def map_to_host(fn, arrays: tuple, chunk: int, mesh: Mesh | None):
    """`fn` applied to `chunk` windows (per device) of every array of `arrays` at a time, each
    output brought to the host as it is made; the last chunk is padded to `chunk`, so every call
    has one shape. Returns `fn`'s outputs (numpy) concatenated over the windows."""
    n = len(arrays[0])
    size = chunk * data_split(mesh)
    outs = []
    for start in range(0, n, size):
        parts = [a[start:start + size] for a in arrays]
        if len(parts[0]) < size:
            parts = [padded_windows(np.asarray(host_array(a)), size) for a in parts]
        outs.append(jax.tree_util.tree_map(host_array, fn(*(to_device(a, mesh) for a in parts))))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a)[:n], *outs)


def stacked_axes(layers: Params) -> dict[str, Axes]:
    """Logical axes of blocks stacked on a leading axis (`ModelBlocks.stacked`)."""
    return {k: Axes("layers", *LAYER_PARAM_AXES[k]) for k in layers}


def layer(params: Params, index: int, cfg: ModelConfig | None = None, mesh: Mesh | None = None) -> Params:
    """Layer `index` of the stacked (masked-form) parameters; on a mesh (with `cfg`), laid out
    over it by the layer's logical axes."""
    p = jax.tree_util.tree_map(lambda a: a[index], params["layers"])
    return p if mesh is None else shard_layer(p, cfg, mesh)


def _window_split(x: jax.Array) -> int:
    """Over how many devices the windows (axis 0) of `x` are split."""
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or x.ndim == 0:
        return 1
    return x.shape[0] // sharding.shard_shape(x.shape)[0]


def map_chunks(fn, x: jax.Array, chunk: int):
    """Apply `fn` to windows in chunks (bounds peak memory of attention scores); concatenates outputs.

    For windows split over devices, `chunk` counts windows per device.
    """
    split = _window_split(x)
    if split > 1:
        chunk *= split
        if x.shape[0] <= chunk:
            return fn(x)
    outs = [fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *outs)
