"""The per-device memory budget of evaluation and SDS, checked before any work.

Each check runs the chunk sizing its phase's loop will use on the loaded model and the actual
windows, so a budget below the smallest chunk stops before the first window is scored, naming
the phase and the smallest budget that works (`parallel.memory.chunking`)."""
from __future__ import annotations

import numpy as np

from tyrjax.checkpoints.loading import Model
from tyrjax.evaluation.perplexity import head_vocab_chunk
from tyrjax.model.blocks import ModelBlocks, data_split, device_bytes, hidden_chunk
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.memory import chunking
from tyrjax.parallel.sharding import resolve_mesh
from tyrjax.sds.capture import WINDOW_CHUNK
from tyrjax.sds.pipeline import fit_state_bytes

F32 = 4


def evaluation_vocab_chunk(model: Model, sets: dict[str, np.ndarray], batch_size: int, budget_bytes: int) -> int:
    """The LM head's vocabulary chunk of every evaluation set under `budget_bytes` per device
    (the whole vocabulary when a batch's logits fit); block by block, also checks that one
    batch's hidden states fit. Fails naming "evaluation" when not even one chunk does."""
    cfg, params = model.cfg, model.params
    chunk = cfg.vocab_size
    for windows in sets.values():
        n, length = np.shape(windows)
        if isinstance(params, ModelBlocks):
            hidden_chunk(params, -(-n // data_split(params.mesh)), length, batch_size, budget_bytes, "evaluation")
            fixed = params.resident_bytes()
        else:
            fixed = device_bytes(params)
        chunk = min(chunk, head_vocab_chunk(cfg, batch_size, length, budget_bytes, fixed))
    return chunk


def sds_stream_bytes(cfg: ModelConfig, length: int) -> int:
    """Bytes one calibration window holds through SDS's block loop: the pruned and dense
    streams' block inputs, attention outputs and the widest captured input (fp32)."""
    return F32 * length * (4 * cfg.hidden_size + 2 * cfg.intermediate_size)


def sds_capture_bytes(cfg: ModelConfig, length: int) -> int:
    """Bytes one window adds to an attention capture call: fp32 scores and q/k/v."""
    return F32 * length * (cfg.n_heads * length + (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim)


def sds_capture_chunk(model: Model, calib: np.ndarray, budget_bytes: int) -> int:
    """Windows per attention capture call of SDS under `budget_bytes` per device, at most
    `sds.capture.WINDOW_CHUNK`: next to the weights held (the head and one block when served
    block by block) and a fitted copy, every window's
    streams and one layer's fit. Fails naming "SDS" when not even one window fits."""
    cfg = model.cfg
    n, length = np.shape(calib)
    n_local = -(-n // data_split(resolve_mesh(None)))
    params = model.params
    held = (params.resident_bytes() + device_bytes(params.block(0)) if isinstance(params, ModelBlocks)
            else device_bytes(params))
    fixed = 2 * held + n_local * sds_stream_bytes(cfg, length) + fit_state_bytes(cfg)
    return chunking(min(WINDOW_CHUNK, n_local), sds_capture_bytes(cfg, length), budget_bytes, fixed_bytes=fixed,
                    phase="SDS").size
