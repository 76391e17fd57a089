"""The Python API: what the command line does, in a few calls.

    import tyrjax
    model = tyrjax.load_model()                      # the embedded default
    sets = tyrjax.evaluation_sets(model)             # shakespeare-v1 eval windows
    print(tyrjax.evaluation.perplexity(model, sets)["ppl"])
    print(tyrjax.generate_text(model, "To be, or not to be"))
    print(tyrjax.api.zero_shot(model, "offline"))   # {task: {"acc", "acc_norm", "n"}}
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tyrjax.model.blocks import ModelBlocks
from tyrjax.evaluation.perplexity import ppl_of, window_nlls, window_nlls_blockwise
from tyrjax.model.generate import generate
from tyrjax.checkpoints.loading import Model, require_tokenizer
from tyrjax.model.decoder import count_params
from tyrjax.evaluation.zeroshot import zero_shot  # noqa: F401  (part of the API: zero-shot accuracy via lm-evaluation-harness)

DEFAULT_EVAL_CORPORA = ("shakespeare", "pydoc")


def evaluation_sets(
    model: Model,
    eval_windows: int = 16,
    corpora: tuple[str, ...] = DEFAULT_EVAL_CORPORA,
    window_length: int = 1024,
) -> dict[str, np.ndarray]:
    """The protocol's evaluation windows, one (n, length) array per corpus (held-out split)."""
    from tyrjax.data import corpora as data

    tok = require_tokenizer(model)
    data.check_window_length(window_length, model.cfg.max_position_embeddings)
    return {
        name: data.eval_windows(data.tokenize(tok, data.corpus_text(name, "eval")), eval_windows, window_length, corpus=name)
        for name in corpora
    }


def calibration_windows(model: Model, data: str = "shakespeare", calib_windows: int = 64, length: int = 512) -> np.ndarray:
    """The protocol's seeded calibration windows (n, length) from the calibration split of `data`."""
    from tyrjax.data import corpora

    corpora.check_window_length(length, model.cfg.max_position_embeddings)
    windows = corpora.protocol_windows(require_tokenizer(model), calib_windows, 1, data, calib_length=length)
    return windows["calib"]


def param_counts(model: Model) -> dict[str, int]:
    streamed = isinstance(model.params, ModelBlocks)
    total = model.cfg.total_params() if streamed else count_params(model.params)
    return {"total": total, "attn_mlp": model.cfg.attn_mlp_params()}


def evaluate(model: Model, sets: dict[str, np.ndarray], batch_size: int = 1, progress: bool = True) -> dict[str, Any]:
    """Perplexity on each evaluation set, each window's mean next-token NLL and a digest of the
    windows' tokens (for paired comparisons of models scored on the same windows,
    `tyrjax.evaluation.paired`), and parameter counts: the core of metrics.json. A model whose `params`
    are `ModelBlocks` is evaluated block by block."""
    ppl, window_nll = {}, {}
    for name, windows in sets.items():
        desc = f"ppl {name}"
        if isinstance(model.params, ModelBlocks):
            sums = window_nlls_blockwise(model.params, windows, batch_size, desc=desc, progress=progress)
        else:
            sums = window_nlls(model.params, model.cfg, windows, batch_size, desc=desc, progress=progress)
        ppl[name] = ppl_of(float(sums.sum()), windows, desc)
        window_nll[name] = [float(x) for x in sums / (np.shape(windows)[1] - 1)]
    return {"model": model.source, "ppl": ppl, "window_nll": window_nll,
            "window_digest": {name: windows_digest(windows) for name, windows in sets.items()}, "params": param_counts(model)}


def windows_digest(windows: np.ndarray) -> str:
    """A short fingerprint of a set of token windows: equal digests, equal windows."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(windows, np.int32).tobytes()).hexdigest()[:16]


def dense_reference(model: Model, sets: dict[str, np.ndarray], batch_size: int = 1) -> dict[str, Any]:
    """`evaluate` of an unpruned model, cached on disk: every pruning run compares against it,
    and re-scoring the dense model costs minutes on a CPU. The key covers the weights' file
    identity, the config and the exact windows; a model not loaded from a directory is not cached."""
    import hashlib
    import json

    from tyrjax.files import cache_dir
    from tyrjax.files import write_json

    if model.directory is None:
        return evaluate(model, sets, batch_size)
    h = hashlib.sha256(json.dumps(model.cfg.to_hf(), sort_keys=True).encode())
    for f in sorted(model.directory.glob("*.safetensors")) + sorted(model.directory.glob("orbax/**/*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    head = model.params.head if isinstance(model.params, ModelBlocks) else model.params
    h.update(str(head["embed"].dtype).encode())
    for name in sorted(sets):
        h.update(name.encode() + np.ascontiguousarray(sets[name]).tobytes())
    path = cache_dir() / "dense_eval" / f"{h.hexdigest()[:24]}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if "window_nll" in cached:
            return cached
    result = evaluate(model, sets, batch_size)
    write_json(path, result)
    return result


def generate_text(
    model: Model,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Decode a continuation of `prompt` (greedy when temperature is 0); returns the new text."""
    tok = require_tokenizer(model)
    ids = np.array([tok.encode(prompt, add_special_tokens=False).ids], np.int32)
    out = generate(model.params, model.cfg, ids, max_new_tokens, temperature, top_k, top_p, seed, model.cfg.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if model.cfg.eos_token_id in new:
        new = new[: new.index(model.cfg.eos_token_id)]
    return tok.decode(new)
