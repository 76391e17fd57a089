"""Text generation from a loaded model."""
from __future__ import annotations

import numpy as np

from tyrjax.checkpoints.loading import Model, require_tokenizer
from tyrjax.model.generate import generate


def generate_text(
    model: Model,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Decode a continuation of `prompt` (greedy when temperature is 0); returns the new text.
    `progress` shows a bar of the tokens decoded."""
    tok = require_tokenizer(model)
    ids = np.array([tok.encode(prompt, add_special_tokens=False).ids], np.int32)
    out = generate(model.params, model.cfg, ids, max_new_tokens, temperature, top_k, top_p, seed, model.cfg.eos_token_id,
                   progress=progress)
    new = out[0, ids.shape[1]:].tolist()
    if model.cfg.eos_token_id in new:
        new = new[: new.index(model.cfg.eos_token_id)]
    return tok.decode(new)
