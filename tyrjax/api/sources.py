"""Where a call's model comes from: a loaded `Model`, a `ModelSpec`, or a path / hub name (None:
the embedded default)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from tyrjax.api.configs import ModelSpec
from tyrjax.checkpoints.loading import Model, check_model_spec, load_model
from tyrjax.model.blocks import ModelBlocks

ModelSource = Union[Model, ModelSpec, str, Path, None]


def as_spec(source: ModelSource) -> ModelSpec | None:
    """The spec to load, or None for a model already loaded."""
    if isinstance(source, Model):
        return None
    if isinstance(source, ModelSpec):
        return source
    return ModelSpec(path=None if source is None else str(source))


def is_streamed(source: ModelSource) -> bool:
    """Whether the decoder blocks are (to be) read from the checkpoint one at a time."""
    if isinstance(source, Model):
        return isinstance(source.params, ModelBlocks)
    return isinstance(source, ModelSpec) and source.stream


def _location(path: str | None) -> str | None:
    """A local path made absolute (a run resumed from another directory names the same files);
    a hub name as given."""
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def source_settings(source: ModelSource) -> dict:
    """What a run directory records of its model: where it is loaded from, the tokenizer and the
    dtype (streaming changes only how the blocks are read, not the results)."""
    if isinstance(source, Model):
        return {"model": source.source, "directory": _location(None if source.directory is None else str(source.directory))}
    spec = as_spec(source)
    return {"model": _location(spec.path), "tokenizer": _location(spec.tokenizer), "dtype": spec.dtype}


def source_paths(source: ModelSource) -> list[str]:
    """The local paths a call reads its model from (a run directory must not hold them to be replaced)."""
    spec = as_spec(source)
    if spec is None:
        return [] if source.directory is None else [str(source.directory)]
    return [p for p in (spec.path, spec.tokenizer) if p is not None and Path(p).expanduser().exists()]


def check_local(source: ModelSource, flag: str = "--model") -> None:
    """Raise TyrjaxError, before any work, when `source` names neither a path that exists nor a hub name."""
    spec = as_spec(source)
    if spec is not None:
        check_model_spec(spec.path, flag)


def open_model(source: ModelSource) -> Model:
    spec = as_spec(source)
    if spec is None:
        return source
    return load_model(spec.path, spec.dtype, spec.tokenizer, streamed=spec.stream)


def dtype_name(source: ModelSource, model: Model) -> str:
    """The parameter dtype by name, as `ModelSpec.dtype` gives it."""
    spec = as_spec(source)
    if spec is not None:
        return spec.dtype
    head = model.params.head if isinstance(model.params, ModelBlocks) else model.params
    return str(head["embed"].dtype)


def tokenizer_dir(source: ModelSource) -> Path | None:
    """A tokenizer directory given apart from the model, to copy beside a saved pruned model."""
    spec = as_spec(source)
    return Path(spec.tokenizer) if spec is not None and spec.tokenizer else None
