"""Streamed reading of Hugging Face safetensors checkpoints: one block, one device's slice at a time.

A 70B model fits nowhere whole, and the pruners only ever need one decoder block. A
`BlockSource` reads the shards' headers once and then reads a tensor only when it is asked
for. Each tensor becomes a `jax.Array` through `jax.make_array_from_callback`: on a mesh it is
laid out as `tyrjax.parallel.sharding` lays out parameters, every process reads from disk only the
slices its own devices hold, and a slice that several local devices share (replication) is
read once. Without a mesh, every tensor goes whole to one local device.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, Sharding, SingleDeviceSharding

from tyrjax.checkpoints.hf import GLOBAL_TENSORS, LAYER_TENSORS, TensorReader, global_shapes, layer_shapes, weight_files
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import ModelBlocks
from tyrjax.model.decoder import Params
from tyrjax.parallel.sharding import spec
from tyrjax.model.axes import LAYER_PARAM_AXES, MODEL_PARAM_AXES

Bounds = tuple[tuple[int, int], ...]  # (start, stop) per dimension


def bounds_of(index: tuple[slice, ...], shape: tuple[int, ...]) -> Bounds:
    """(start, stop) per dimension of a unit-step index into an array of `shape`."""
    out = []
    for s, n in zip(index, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"index {index} has a step; shards are contiguous")
        out.append((start, stop))
    return tuple(out)


def as_index(bounds: Bounds) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in bounds)


class BlockSource:
    """A checkpoint read on demand: `global_params()` (embedding, final norm, head), `block(i)`
    (layer i's parameters keyed as `tyrjax.calibration.statistics.layer` returns them) and `params()` (the
    whole model in the form `cfg` describes), laid out on `mesh` when one is given."""

    def __init__(self, model_dir: str | Path, cfg: ModelConfig | None = None, dtype=jnp.float32,
                 mesh: Mesh | None = None):
        self.directory = Path(model_dir)
        self.cfg = cfg if cfg is not None else ModelConfig.from_json_file(self.directory / "config.json")
        self.dtype = jnp.dtype(dtype)
        self.mesh = mesh
        self.bytes_read = 0  # bytes taken from the checkpoint files so far, in their stored dtype
        self._reader = TensorReader(weight_files(self.directory))

    def __enter__(self) -> "BlockSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def _sharding(self, axes: tuple[str | None, ...], shape: tuple[int, ...]) -> Sharding:
        if self.mesh is None:
            return SingleDeviceSharding(jax.local_devices()[0])
        return NamedSharding(self.mesh, spec(axes, shape, self.mesh, self.cfg.head_dim))

    def _array(self, shape: tuple[int, ...], sharding: Sharding, read: Callable[[Bounds], np.ndarray]) -> jax.Array:
        """A jax.Array whose local shards come from `read(bounds)`, each distinct slice read once."""
        np_dtype = np.dtype(self.dtype)
        done: dict[Bounds, np.ndarray] = {}

        def local_slice(index: tuple[slice, ...]) -> np.ndarray:
            bounds = bounds_of(index, shape)
            if bounds not in done:
                part = read(bounds)
                self.bytes_read += part.nbytes
                done[bounds] = np.ascontiguousarray(part, dtype=np_dtype)
            return done[bounds]

        return jax.make_array_from_callback(shape, sharding, local_slice, dtype=self.dtype)

    def _tensor(self, name: str, transpose: bool, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> jax.Array:
        read = lambda b: self._reader.get_slice(name, transpose, shape, as_index(b))  # noqa: E731
        return self._array(shape, self._sharding(axes, shape), read)

    def global_params(self) -> Params:
        """The parameters outside the decoder blocks: `embed`, `final_norm` and (untied) `lm_head`."""
        return {key: self._tensor(*GLOBAL_TENSORS[key], shape, MODEL_PARAM_AXES[key])
                for key, shape in global_shapes(self.cfg).items()}

    def block(self, index: int) -> Params:
        """Decoder layer `index`'s parameters, read from disk now."""
        if not 0 <= index < self.cfg.n_layers:
            raise TyrjaxError(f"block {index}: the model has blocks 0..{self.cfg.n_layers - 1}")
        out = {}
        for key, shape in layer_shapes(self.cfg, index).items():
            name, transpose = LAYER_TENSORS[key]
            out[key] = self._tensor(name.format(index), transpose, shape, LAYER_PARAM_AXES[key])
        return out

    def blocks(self) -> Iterator[Params]:
        """Every block in order, each read when the iteration reaches it."""
        for i in range(self.cfg.n_layers):
            yield self.block(i)

    def _stacked(self, key: str) -> jax.Array:
        """One layer tensor of every block, stacked on a leading layer axis (the masked form)."""
        name, transpose = LAYER_TENSORS[key]
        one = layer_shapes(self.cfg, 0)[key]
        shape = (self.cfg.n_layers, *one)

        def read(bounds: Bounds) -> np.ndarray:
            (first, stop), rest = bounds[0], as_index(bounds[1:])
            return np.stack([self._reader.get_slice(name.format(i), transpose, one, rest) for i in range(first, stop)])

        return self._array(shape, self._sharding(("layers", *LAYER_PARAM_AXES[key]), shape), read)

    def params(self) -> Params:
        """The whole model: layers stacked (masked form) for a dense config, a list for a compact one."""
        out = self.global_params()
        if self.cfg.is_compact:
            out["layers"] = list(self.blocks())
        else:
            out["layers"] = {key: self._stacked(key) for key in layer_shapes(self.cfg, 0)}
        return out


def load_params(model_dir: str | Path, cfg: ModelConfig, dtype=jnp.float32, mesh: Mesh | None = None) -> Params:
    """The model's parameters laid out on `mesh`, each process reading only its devices' slices."""
    with BlockSource(model_dir, cfg, dtype, mesh) as source:
        return source.params()


class StreamedBlocks(ModelBlocks):
    """Blocks read from a safetensors checkpoint on every request; only the head stays resident.

    The checkpoint's files are closed after each block, so the pages read do not stay mapped
    into the process either."""

    def __init__(self, model_dir: str | Path, cfg: ModelConfig, dtype=jnp.float32, mesh: Mesh | None = None):
        self.source = BlockSource(model_dir, cfg, dtype, mesh)
        self.cfg, self.mesh = cfg, mesh
        self.head = self.source.global_params()
        self.source.close()

    def block(self, index: int) -> Params:
        p = self.source.block(index)
        self.source.close()  # drops the open files only: the next read reopens them
        return p
