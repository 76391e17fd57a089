"""Hugging Face directories (config.json + safetensors) and orbax checkpoints.

Tensors are read one at a time into preallocated arrays and written one at a time, so a
checkpoint is never held twice in memory. HF stores linear weights as (out, in); tyrjax uses (in, out).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params, is_stacked

# tyrjax name -> (HF name template, transpose?)
LAYER_TENSORS = {
    "attn_norm": ("model.layers.{}.input_layernorm.weight", False),
    "wq": ("model.layers.{}.self_attn.q_proj.weight", True),
    "wk": ("model.layers.{}.self_attn.k_proj.weight", True),
    "wv": ("model.layers.{}.self_attn.v_proj.weight", True),
    "wo": ("model.layers.{}.self_attn.o_proj.weight", True),
    "bq": ("model.layers.{}.self_attn.q_proj.bias", False),
    "bk": ("model.layers.{}.self_attn.k_proj.bias", False),
    "bv": ("model.layers.{}.self_attn.v_proj.bias", False),
    "bo": ("model.layers.{}.self_attn.o_proj.bias", False),
    "mlp_norm": ("model.layers.{}.post_attention_layernorm.weight", False),
    "w_gate": ("model.layers.{}.mlp.gate_proj.weight", True),
    "w_up": ("model.layers.{}.mlp.up_proj.weight", True),
    "w_down": ("model.layers.{}.mlp.down_proj.weight", True),
    "b_down": ("model.layers.{}.mlp.down_proj.bias", False),
}
GLOBAL_TENSORS = {
    "embed": ("model.embed_tokens.weight", False),
    "final_norm": ("model.norm.weight", False),
    "lm_head": ("lm_head.weight", True),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def layer_shapes(cfg: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's tensors (tyrjax layout) for this config."""
    d, hd = cfg.hidden_size, cfg.head_dim
    q, kv, f = cfg.heads(layer) * hd, cfg.kv_heads(layer) * hd, cfg.ffn(layer)
    shapes = {
        "attn_norm": (d,), "wq": (d, q), "wk": (d, kv), "wv": (d, kv), "wo": (q, d),
        "mlp_norm": (d,), "w_gate": (d, f), "w_up": (d, f), "w_down": (f, d),
    }
    if cfg.attention_bias:
        shapes.update(bq=(q,), bk=(kv,), bv=(kv,))
    if cfg.o_bias:
        shapes["bo"] = (d,)
    if cfg.down_bias:
        shapes["b_down"] = (d,)
    return shapes


def global_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"embed": (cfg.vocab_size, cfg.hidden_size), "final_norm": (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (cfg.hidden_size, cfg.vocab_size)
    return shapes


def abstract_params(cfg: ModelConfig, dtype=jnp.float32) -> Params:
    """ShapeDtypeStructs of the params pytree: stacked for a dense config, a list for a compact one."""
    sds = lambda s: jax.ShapeDtypeStruct(s, dtype)  # noqa: E731
    out = {k: sds(s) for k, s in global_shapes(cfg).items()}
    if cfg.is_compact:
        out["layers"] = [{k: sds(s) for k, s in layer_shapes(cfg, i).items()} for i in range(cfg.n_layers)]
    else:
        out["layers"] = {k: sds((cfg.n_layers, *s)) for k, s in layer_shapes(cfg, 0).items()}
    return out


# --- reading -------------------------------------------------------------------------------
def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model directory (one, or the shards its index names)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise TyrjaxError(f"{index}: unreadable shard index ({e}); re-download the model") from None
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise TyrjaxError(
        f"{model_dir}: no model.safetensors or model.safetensors.index.json; "
        "point --model at a Hugging Face model directory, a .gguf file or an orbax run directory"
    )


class TensorReader:
    """Lazily opened safetensors shards; one tensor, or one slice of one, at a time (the loaders
    here and `tyrjax.checkpoints.streaming` read through it)."""

    def __init__(self, files: list[Path]):
        self.location: dict[str, Path] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="numpy") as h:
                    for k in h.keys():
                        self.location[k] = f
            except Exception as e:  # safetensors raises several internal types
                raise TyrjaxError(f"{f}: corrupt or unreadable safetensors file ({e}); re-download it") from None
        self._open: dict[Path, object] = {}

    def has(self, name: str) -> bool:
        return name in self.location

    def _handle(self, name: str) -> tuple[Path, object]:
        """The shard holding `name` and its open handle."""
        if name not in self.location:
            raise TyrjaxError(f"checkpoint lacks tensor {name!r}; the weights do not match config.json")
        f = self.location[name]
        if f not in self._open:
            self._open[f] = safe_open(str(f), framework="numpy")
        return f, self._open[f]

    def get(self, name: str, transpose: bool, expected: tuple[int, ...]) -> np.ndarray:
        f, handle = self._handle(name)
        try:
            a = handle.get_tensor(name)
        except Exception as e:
            raise TyrjaxError(f"{f}: cannot read tensor {name!r} ({e}); the file is corrupt, re-download it") from None
        a = a.T if transpose else a
        if tuple(a.shape) != tuple(expected):
            raise TyrjaxError(
                f"{f}: tensor {name!r} has shape {a.shape} (tyrjax layout), config.json implies {expected}"
            )
        return a

    def get_slice(self, name: str, transpose: bool, expected: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
        """Part `index` (tyrjax layout, unit-step slices) of a tensor; only that part is read from disk."""
        f, handle = self._handle(name)
        try:
            view = handle.get_slice(name)
            shape = tuple(view.get_shape())
        except Exception as e:
            raise TyrjaxError(f"{f}: cannot read tensor {name!r} ({e}); the file is corrupt, re-download it") from None
        shape = shape[::-1] if transpose else shape
        if shape != tuple(expected):
            raise TyrjaxError(f"{f}: tensor {name!r} has shape {shape} (tyrjax layout), config.json implies {expected}")
        if 0 in shape:  # a compact layer with every head or neuron removed: nothing to read
            return np.zeros(tuple(len(range(*s.indices(n))) for s, n in zip(index, shape)), np.float32)
        try:
            part = view[index[::-1] if transpose else index]
        except Exception as e:
            raise TyrjaxError(f"{f}: cannot read tensor {name!r} ({e}); the file is corrupt, re-download it") from None
        return part.T if transpose else part

    def close(self) -> None:
        for h in self._open.values():
            h.__exit__(None, None, None)
        self._open.clear()


def load_hf_params(model_dir: str | Path, cfg: ModelConfig, dtype=jnp.float32) -> Params:
    """Parameters from safetensors, read tensor by tensor into the form `cfg` describes."""
    model_dir = Path(model_dir)
    reader = TensorReader(weight_files(model_dir))
    np_dtype = np.dtype(jnp.dtype(dtype))
    try:
        params: Params = {}
        for key, shape in global_shapes(cfg).items():
            name, t = GLOBAL_TENSORS[key]
            params[key] = jnp.asarray(reader.get(name, t, shape).astype(np_dtype))
        if cfg.is_compact:
            params["layers"] = [
                {k: jnp.asarray(reader.get(LAYER_TENSORS[k][0].format(i), LAYER_TENSORS[k][1], s).astype(np_dtype))
                 for k, s in layer_shapes(cfg, i).items()}
                for i in range(cfg.n_layers)
            ]
        else:
            stacked = {}
            for k, s in layer_shapes(cfg, 0).items():
                buf = np.empty((cfg.n_layers, *s), np_dtype)
                for i in range(cfg.n_layers):
                    buf[i] = reader.get(LAYER_TENSORS[k][0].format(i), LAYER_TENSORS[k][1], s)
                stacked[k] = jnp.asarray(buf)
                del buf
            params["layers"] = stacked
    finally:
        reader.close()
    return params


# --- writing -------------------------------------------------------------------------------
class _FileTensor(NamedTuple):
    """A tensor to write: read from `source()` (an array of the params) when its turn comes."""

    source: Callable[[], Any]
    transpose: bool
    shape: tuple[int, ...]  # as stored in the file


def _hf_tensors(params: Params, cfg: ModelConfig) -> dict[str, _FileTensor]:
    """The HF tensors of `params`, by name, in file order; nothing is copied until written."""
    out = {}

    def add(name: str, get: Callable[[], Any], shape: tuple[int, ...], t: bool) -> None:
        out[name] = _FileTensor(get, t, tuple(reversed(shape)) if t else tuple(shape))

    for key, (name, t) in GLOBAL_TENSORS.items():
        if key in params:
            add(name, lambda key=key: params[key], params[key].shape, t)
    layers = params["layers"]
    for i in range(cfg.n_layers):
        keys = layers.keys() if is_stacked(params) else layers[i].keys()
        for key in keys:
            name, t = LAYER_TENSORS[key]
            if is_stacked(params):
                add(name.format(i), lambda key=key, i=i: layers[key][i], layers[key].shape[1:], t)
            else:
                add(name.format(i), lambda key=key, i=i: layers[i][key], layers[i][key].shape, t)
    return out


SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_safetensors(path: Path, tensors: dict[str, _FileTensor], dtype: np.dtype, metadata: dict[str, str]) -> None:
    """A safetensors file written tensor by tensor: one tensor is in host memory at a time."""
    itemsize, offset, header = dtype.itemsize, 0, {"__metadata__": metadata}
    for name, t in tensors.items():
        size = math.prod(t.shape) * itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype.name], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the format's writers do
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in tensors.values():
            a = np.asarray(t.source(), dtype)
            f.write(np.ascontiguousarray(a.T if t.transpose else a).data)


def atomic_dir(target: Path):
    """A temp directory beside `target`, renamed onto it by `commit`, removed on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return _AtomicDir(target)


class _AtomicDir:
    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        umask = os.umask(0)
        os.umask(umask)
        self.tmp.chmod(0o777 & ~umask)  # mkdtemp's directory is private; give it a new directory's mode
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)


def save_hf(
    params: Params,
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype=jnp.float32,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Write config.json + safetensors (sharded beyond `max_shard_bytes`) + tokenizer files."""
    out_dir = Path(out_dir)
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = _hf_tensors(params, cfg)
    metadata = {"format": "pt"}
    with atomic_dir(out_dir) as tmp:
        hf = cfg.to_hf()
        hf["torch_dtype"] = str(jnp.dtype(dtype))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        shards, current, size = [], {}, 0
        for name, t in tensors.items():
            nbytes = math.prod(t.shape) * np_dtype.itemsize
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = t
            size += nbytes
        shards.append(current)
        if len(shards) == 1:
            write_safetensors(tmp / "model.safetensors", shards[0], np_dtype, metadata)
        else:
            weight_map = {}
            for j, shard in enumerate(shards):
                fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / fname, shard, np_dtype, metadata)
                weight_map.update({k: fname for k in shard})
            total = sum(math.prod(t.shape) for t in tensors.values()) * np_dtype.itemsize
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, tmp)
    return out_dir


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    for name in TOKENIZER_FILES:
        f = Path(src) / name
        if f.exists():
            shutil.copyfile(f, Path(dst) / name)


# --- orbax ---------------------------------------------------------------------------------
ORBAX_SUBDIR = "orbax"


def save_orbax(params: Params, cfg: ModelConfig, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Parameters with orbax plus config.json (and tokenizer), as one atomic directory."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / ORBAX_SUBDIR, params)
            ckpt.wait_until_finished()
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, tmp)
    return out_dir


def is_orbax_dir(path: Path) -> bool:
    return (path / ORBAX_SUBDIR).is_dir() and (path / "config.json").exists()


def load_orbax(model_dir: str | Path, dtype=jnp.float32) -> tuple[Params, ModelConfig]:
    import orbax.checkpoint as ocp

    model_dir = Path(model_dir).absolute()
    cfg = ModelConfig.from_json_file(model_dir / "config.json")
    target = abstract_params(cfg, jnp.float32)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(model_dir / ORBAX_SUBDIR, target)
    except Exception as e:
        raise TyrjaxError(f"{model_dir}: cannot restore the orbax checkpoint ({e}); it is corrupt or incomplete") from None
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params), cfg
