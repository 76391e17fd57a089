"""Model files in and out: Hugging Face safetensors, Orbax, GGUF, streaming, export and the default assets."""

from tyrjax.checkpoints.loading import Model, load_model, resolve_model_dir
from tyrjax.checkpoints.hf import (
    load_hf_params,
    load_orbax,
    save_hf,
    save_orbax,
)
from tyrjax.checkpoints.gguf import convert_gguf, read_gguf
from tyrjax.checkpoints.streaming import StreamedBlocks, load_params
from tyrjax.checkpoints.export import export_pruned
from tyrjax.checkpoints.assets import (
    DEFAULT_MODEL_NAME,
    default_gguf_path,
    default_model_dir,
    shakespeare_dir,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Model",
    "StreamedBlocks",
    "convert_gguf",
    "default_gguf_path",
    "default_model_dir",
    "export_pruned",
    "load_hf_params",
    "load_model",
    "load_orbax",
    "load_params",
    "read_gguf",
    "resolve_model_dir",
    "save_hf",
    "save_orbax",
    "shakespeare_dir",
]
