"""Resolve `--model` (default, directory, .gguf, orbax run, hub name) to a loaded model."""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from jax.sharding import Mesh
from tokenizers import Tokenizer

from tyrjax.checkpoints.streaming import StreamedBlocks
from tyrjax.checkpoints.hf import is_orbax_dir, load_hf_params, load_orbax
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params
from tyrjax.parallel.sharding import resolve_mesh
from tyrjax.model.axes import shard_params
from tyrjax.checkpoints.streaming import load_params

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# `Model.source` of the embedded default; run lineage recognises it by this name.
DEFAULT_SOURCE = "SmolLM2-135M-Instruct (embedded default)"


@dataclasses.dataclass
class Model:
    """A loaded model: parameters (masked or compact form), config, tokenizer, where from."""

    params: Params
    cfg: ModelConfig
    tokenizer: Tokenizer | None
    source: str
    directory: Path | None = None


def parse_dtype(name: str):
    if name not in DTYPES:
        raise TyrjaxError(f"--dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def gguf_cache_dir(gguf_path: Path) -> Path:
    from tyrjax.files import cache_dir

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"


def check_model_spec(spec: str | None, flag: str = "--model") -> None:
    """Raise TyrjaxError unless `spec` is None (the default model), an existing path or a hub name."""
    if spec is None or Path(spec).expanduser().exists() or HUB_NAME.match(spec):
        return
    raise TyrjaxError(f"{flag} {spec}: no such file or directory, and not a hub name of the form org/name")


def resolve_model_dir(spec: str | None) -> Path:
    """A local directory holding config.json and weights for `spec`."""
    if spec is None:
        from tyrjax.checkpoints.assets import default_model_dir

        return default_model_dir()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TyrjaxError(f"--model {spec}: no such GGUF file")
        out = gguf_cache_dir(path)
        if not (out / "config.json").exists():
            from tyrjax.checkpoints.gguf import convert_gguf

            convert_gguf(path, out)
        return out
    if path.is_dir():
        check_not_a_run_dir(path, spec)
        return path
    if path.exists():
        raise TyrjaxError(f"--model {spec}: not a directory or a .gguf file; pass a model directory, a .gguf file or a hub name")
    check_model_spec(spec)
    return _download_from_hub(spec)


def check_not_a_run_dir(path: Path, spec: str) -> None:
    """Refuse a run directory given where its model is meant (RUN for RUN/model)."""
    if (path / "config.json").exists():
        return
    for name in ("model", "hf"):
        if (path / name / "config.json").exists():
            raise TyrjaxError(f"--model {spec} is a run directory; its model is {path / name}: pass --model {path / name}")


def _download_from_hub(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:
        raise TyrjaxError(
            f"--model {name}: cannot download from the Hugging Face hub ({type(e).__name__}: {e}); "
            "check the name and the network, or pass a local directory or .gguf file"
        ) from None


def load_tokenizer(model_dir: Path, cfg: ModelConfig) -> Tokenizer | None:
    """The directory's tokenizer.json, checked against the model's vocabulary; None if absent."""
    f = model_dir / "tokenizer.json"
    if not f.exists():
        return None
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as e:
        raise TyrjaxError(f"{f}: unreadable tokenizer ({e}); re-download or re-convert the model") from None
    check_tokenizer(tok, cfg, str(f))
    return tok


def check_tokenizer(tok: Tokenizer, cfg: ModelConfig, where: str) -> None:
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > cfg.vocab_size:
        raise TyrjaxError(
            f"{where}: the tokenizer has {n} tokens but the model's vocabulary has {cfg.vocab_size}; "
            "they do not belong together: use the tokenizer that came with the model (--tokenizer)"
        )


def load_model(spec: str | None = None, dtype: str = "float32", tokenizer: str | None = None,
               mesh: Mesh | None = None, streamed: bool = False) -> Model:
    """Load `spec` (None = the embedded default SmolLM2-135M-Instruct) in the given dtype.

    On a mesh (default: the one of `sharding.use_mesh`, if any) a Hugging Face checkpoint is read
    straight into its sharded layout, each process reading only its own devices' slices. With
    `streamed`, only the parameters outside the decoder blocks are read now: `params` is a
    `blocks.StreamedBlocks` that reads each block from the checkpoint when it is needed.
    """
    jdtype = parse_dtype(dtype)
    model_dir = resolve_model_dir(spec)
    mesh = resolve_mesh(mesh)
    if streamed and is_orbax_dir(model_dir):
        raise TyrjaxError(f"--stream: {model_dir} is an orbax checkpoint; streaming reads Hugging Face "
                          "safetensors checkpoints: drop --stream")
    if is_orbax_dir(model_dir):
        params, cfg = load_orbax(model_dir, jdtype)
    elif streamed:
        cfg = ModelConfig.from_json_file(model_dir / "config.json")
        params = StreamedBlocks(model_dir, cfg, jdtype, mesh)
    else:
        cfg = ModelConfig.from_json_file(model_dir / "config.json")
        params = load_hf_params(model_dir, cfg, jdtype) if mesh is None else load_params(model_dir, cfg, jdtype, mesh)
    if tokenizer is not None:
        tok_dir = Path(tokenizer)
        if not (tok_dir / "tokenizer.json").exists():
            raise TyrjaxError(f"--tokenizer {tokenizer}: no tokenizer.json in that directory")
        tok = load_tokenizer(tok_dir, cfg)
    else:
        tok = load_tokenizer(model_dir, cfg)
    return Model(params, cfg, tok, spec or DEFAULT_SOURCE, model_dir)


def require_tokenizer(model: Model) -> Tokenizer:
    if model.tokenizer is None:
        raise TyrjaxError(
            f"{model.directory}: the model has no tokenizer.json; pass --tokenizer DIR with the model's tokenizer"
        )
    return model.tokenizer


def on_active_mesh(model: Any) -> Any:
    """A loaded `Model` with its parameters laid out on the mesh of `use_mesh`,
    so evaluation runs sharded; unchanged when no mesh is active or when its parameters are
    served block by block (`blocks.ModelBlocks` lay blocks out as they serve them)."""
    mesh = resolve_mesh(None)
    if mesh is None or not isinstance(model.params, dict):
        return model
    return dataclasses.replace(model, params=shard_params(model.params, model.cfg, mesh))
