"""Tiny models for the fine-tuning tests: dense, compact (per-layer widths), and sparse in dense
shapes (unstructured or N:M zeros), with a character-level tokenizer; and the fine-tuning settings."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from tyrjax.checkpoints.hf import save_hf, save_orbax
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, init_random_params, is_stacked
from tyrjax.recovery.modules import TARGETS
from tyrjax.recovery.train import FinetuneConfig
from tyrjax.sparse.magnitude import magnitude_prune

CFG = ModelConfig(vocab_size=97, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=32)
# A character-level vocabulary of 97 ids: unknown, BOS, EOS and the 94 printable ASCII characters.
SYMBOLS = ["<unk>", "<bos>", "<eos>"] + [chr(c) for c in range(33, 127)]
SMALL = FinetuneConfig(tokens=4 * 4 * 16, seq_len=16, batch_size=4, topk=8, checkpoint_every=2)


def dense_params(seed: int = 0) -> dict:
    return init_random_params(CFG, seed, scale=0.2)


def sparse_params(params: dict, pattern: str) -> dict:
    """Every projection weight of every layer magnitude-pruned at `pattern` (e.g. "0.5", "2:4")."""
    assert is_stacked(params)
    layers = dict(params["layers"])
    for name in TARGETS.values():
        layers[name] = jax.vmap(lambda w: magnitude_prune(w, pattern)[0])(layers[name])
    return {**params, "layers": layers}


def compact_params(params: dict) -> tuple[dict, ModelConfig]:
    """A compact model with different widths per layer: layer 0 keeps 3 heads (both KV heads),
    layer 1 keeps 2 heads of one KV head and 24 neurons."""
    head = np.ones((CFG.n_layers, CFG.n_heads), bool)
    head[0, 1] = False
    head[1, 2:] = False
    ffn = np.ones((CFG.n_layers, CFG.intermediate_size), bool)
    ffn[1, ::4] = False
    return compact_from_masked(params, CFG, head, ffn)


def windows(n: int, length: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (n, length)).astype(np.int32)


def write_tokenizer(directory: Path) -> None:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SYMBOLS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\\S"), "isolated")
    tok.save(str(directory / "tokenizer.json"))


def model_dir(directory: Path, params: dict, cfg: ModelConfig = CFG, orbax: bool = False) -> Path:
    """A loadable model directory (safetensors, or orbax for a sparse run's model) with the word tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = directory.parent / f".{directory.name}-tokenizer"
    tok.mkdir(exist_ok=True)
    write_tokenizer(tok)
    (save_orbax if orbax else save_hf)(params, cfg, directory, tok)
    return directory
