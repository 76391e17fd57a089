"""Evaluation windows, perplexity metrics and the cached dense reference every run compares with."""
from __future__ import annotations

import hashlib
import sys
from typing import Any

import numpy as np

from tyrjax.api.configs import DEFAULT_EVAL_CORPORA
from tyrjax.checkpoints.loading import Model, load_model, require_tokenizer
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.perplexity import ppl_of, window_nlls, window_nlls_blockwise
from tyrjax.model.blocks import ModelBlocks
from tyrjax.model.decoder import count_params
from tyrjax.runs.lineage import dense_spec, find_origin


def evaluation_sets(
    model: Model,
    eval_windows: int = 16,
    corpora: tuple[str, ...] = DEFAULT_EVAL_CORPORA,
    window_length: int = 1024,
) -> dict[str, np.ndarray]:
    """The protocol's evaluation windows, one (n, length) array per corpus (held-out split;
    `tyrjax.data.corpora.evaluation_windows`)."""
    from tyrjax.data import corpora as data

    tok = require_tokenizer(model)
    data.check_window_length(window_length, model.cfg.max_position_embeddings)
    return {name: data.evaluation_windows(tok, name, eval_windows, window_length) for name in corpora}


def calibration_windows(model: Model, data: str = "shakespeare", calib_windows: int = 64, length: int = 512) -> np.ndarray:
    """The protocol's seeded calibration windows (n, length) from the calibration split of `data`."""
    from tyrjax.data import corpora

    corpora.check_window_length(length, model.cfg.max_position_embeddings)
    return corpora.calibration_split_windows(require_tokenizer(model), data, calib_windows, length)


def param_counts(model: Model) -> dict[str, int]:
    streamed = isinstance(model.params, ModelBlocks)
    total = model.cfg.total_params() if streamed else count_params(model.params)
    return {"total": total, "attn_mlp": model.cfg.attn_mlp_params()}


def perplexity_metrics(model: Model, sets: dict[str, np.ndarray], batch_size: int = 1, progress: bool = True,
                       budget_bytes: int | None = None) -> dict[str, Any]:
    """Perplexity on each evaluation set, each window's mean next-token NLL and a digest of the
    windows' tokens (for paired comparisons of models scored on the same windows,
    `tyrjax.evaluation.paired`), and parameter counts: the core of metrics.json. A model whose `params`
    are `ModelBlocks` is evaluated block by block. The LM head runs in vocabulary chunks when a
    batch's logits exceed `budget_bytes` per device (default: `parallel.memory.device_memory_bytes()`)."""
    ppl, window_nll = {}, {}
    for name, windows in sets.items():
        desc = f"ppl {name}"
        if isinstance(model.params, ModelBlocks):
            sums = window_nlls_blockwise(model.params, windows, batch_size, desc=desc, progress=progress,
                                         budget_bytes=budget_bytes)
        else:
            sums = window_nlls(model.params, model.cfg, windows, batch_size, desc=desc, progress=progress,
                               budget_bytes=budget_bytes)
        ppl[name] = ppl_of(float(sums.sum()), windows, desc)
        window_nll[name] = [float(x) for x in sums / (np.shape(windows)[1] - 1)]
    return {"model": model.source, "ppl": ppl, "window_nll": window_nll,
            "window_digest": {name: windows_digest(windows) for name, windows in sets.items()}, "params": param_counts(model)}


def windows_digest(windows: np.ndarray) -> str:
    """A short fingerprint of a set of token windows: equal digests, equal windows."""
    return hashlib.sha256(np.ascontiguousarray(windows, np.int32).tobytes()).hexdigest()[:16]


def model_identity(model: Model) -> Any:
    """A sha256 over a directory-loaded model's config, its weight files' identity (path, size,
    mtime) and its dtype: equal digests, the same weights."""
    import json

    h = hashlib.sha256(json.dumps(model.cfg.to_hf(), sort_keys=True).encode())
    for f in sorted(model.directory.glob("*.safetensors")) + sorted(model.directory.glob("orbax/**/*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    head = model.params.head if isinstance(model.params, ModelBlocks) else model.params
    h.update(str(head["embed"].dtype).encode())
    return h


def dense_reference(model: Model, sets: dict[str, np.ndarray], batch_size: int = 1, progress: bool = True,
                    budget_bytes: int | None = None) -> dict[str, Any]:
    """`perplexity_metrics` of an unpruned model, cached on disk: every pruning run compares against it,
    and re-scoring the dense model costs minutes on a CPU. The key covers the weights' file
    identity, the config and the exact windows; a model not loaded from a directory is not cached."""
    import json

    from tyrjax.files import cache_dir
    from tyrjax.files import write_json

    if model.directory is None:
        return perplexity_metrics(model, sets, batch_size, progress, budget_bytes)
    h = model_identity(model)
    for name in sorted(sets):
        h.update(name.encode() + np.ascontiguousarray(sets[name]).tobytes())
    path = cache_dir() / "dense_eval" / f"{h.hexdigest()[:24]}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if "window_nll" in cached:
            return cached
    result = perplexity_metrics(model, sets, batch_size, progress, budget_bytes)
    write_json(path, result)
    return result


def dense_comparison(source: str | None, sets: dict[str, np.ndarray], dtype: str, batch_size: int,
                     budget_bytes: int | None = None) -> dict[str, Any]:
    """metrics.json fields comparing a pruned model (loaded from `source`) with its dense original
    on the same evaluation windows (`dense_reference`, cached): {} for a model no run wrote."""
    origin = find_origin(source)
    if origin is None:
        return {}
    fields: dict[str, Any] = {"pruned_by": {"run": str(origin.run_dir), "method": origin.method, "sparsity": origin.sparsity}}
    try:
        dense = dense_spec(origin)
    except TyrjaxError as e:
        print(f"no dense reference ({e}); metrics and report show this model alone", file=sys.stderr)
        return fields
    reference = dense_reference(load_model(dense, dtype), sets, batch_size, budget_bytes=budget_bytes)
    fields.update(dense_model=reference["model"], dense_ppl=reference["ppl"], dense_window_nll=reference["window_nll"],
                  dense_params=reference["params"])
    return fields
