"""A tiny random transformers Llama with a word-level tokenizer, for the harness and zero-shot tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from hf_reference import tiny_hf_model
from tokenizers import Tokenizer, models, pre_tokenizers

BOS, EOS = 1, 2
WORDS = ["<unk>", "<bos>", "<eos>"] + [f"w{i}" for i in range(3, 97)]


def write_word_tokenizer(directory: Path) -> Tokenizer:
    """A word-level tokenizer over the tiny model's 97 ids: "w17" is id 17."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    return tok


def tiny_lm_dir(directory: Path, seed: int = 0, **overrides):
    """A tiny random transformers Llama with BOS/EOS ids and a word tokenizer, saved in `directory`."""
    model = tiny_hf_model(directory, seed=seed, bos_token_id=BOS, eos_token_id=EOS, **overrides)
    return model, write_word_tokenizer(directory)


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(3, 97, n))
