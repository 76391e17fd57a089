"""Perplexity: each window scored alone by one jitted, batched scorer.

When a batch's logits (batch × length × vocabulary, fp32) do not fit the per-device memory
budget, the LM head runs over the vocabulary in chunks (`model.vocab.logits_at`): the same
NLLs to float re-association, never more than one chunk's logits at once. A model held in
memory is scored by one call of the whole forward when that call fits the budget
(`whole_forward_bytes`), else block by block like a streamed one (`window_nlls_blockwise`)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tyrjax.model.blocks import HeldBlocks, ModelBlocks, block_activation_bytes, device_bytes, map_to_host, run_blocks
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params, final_hidden, last_hidden, lm_head_weight, logits_from_hidden
from tyrjax.model.vocab import LOGIT_BYTES, logits_at, widest_vocab_chunk
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.parallel.sharding import resolve_mesh

F32 = 4


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihoods (B, T-1) in fp32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def nll_from_hidden(head: Params, cfg: ModelConfig, h: jax.Array, tokens: jax.Array,
                    vocab_chunk: int | None = None) -> jax.Array:
    """Next-token NLLs (B, T-1) in fp32 from the last block's output `h (B, T, d)`: from the
    whole logits, or with `vocab_chunk` below the vocabulary size, over vocabulary chunks."""
    if vocab_chunk is None or vocab_chunk >= cfg.vocab_size:
        return token_nll(logits_from_hidden(head, cfg, h), tokens)
    picked, log_normaliser = logits_at(final_hidden(head, cfg, h[:, :-1]), lm_head_weight(head), tokens[:, 1:, None],
                                       vocab_chunk)
    return log_normaliser - picked[..., 0]


@partial(jax.jit, static_argnames=("cfg", "vocab_chunk"))
def window_nll_sums(params: Params, cfg: ModelConfig, tokens: jax.Array, vocab_chunk: int | None = None) -> jax.Array:
    """Summed NLL of each window (B,), fp32."""
    return nll_from_hidden(params, cfg, last_hidden(params, cfg, tokens), tokens, vocab_chunk).sum(axis=1)


def head_vocab_chunk(cfg: ModelConfig, batch: int, length: int, budget_bytes: int | None, fixed_bytes: float) -> int:
    """The whole vocabulary when a batch's logits fit `budget_bytes` (default:
    `parallel.memory.device_memory_bytes()`) next to `fixed_bytes`, else the widest chunk that does."""
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    hidden = batch * length * cfg.hidden_size * 4
    if fixed_bytes + hidden + batch * length * cfg.vocab_size * LOGIT_BYTES <= budget:
        return cfg.vocab_size
    return widest_vocab_chunk(cfg.vocab_size, batch * length, budget, fixed_bytes + hidden, "evaluation")


def whole_forward_bytes(cfg: ModelConfig, params_bytes: float, itemsize: int, batch: int, length: int) -> float:
    """Per-device bytes of one call of the whole forward on `batch` windows: the weights
    (`params_bytes`), fp32 copies of them when they are narrower (XLA on CPU computes such
    matmuls on fp32 copies of the operands, hoisted out of the loop over blocks; counted on
    every platform, so a model is scored the same way everywhere) and one block's temporaries."""
    copies = params_bytes * F32 / itemsize if itemsize < F32 else 0.0
    return params_bytes + copies + batch * block_activation_bytes(cfg, length)


def scored_whole(params: Params, cfg: ModelConfig, batch: int, length: int, budget_bytes: int) -> bool:
    """Whether a held model is scored by whole-forward calls (`whole_forward_bytes` fits the budget)."""
    itemsize = jnp.dtype(params["embed"].dtype).itemsize
    return whole_forward_bytes(cfg, device_bytes(params), itemsize, batch, length) <= budget_bytes


def window_nlls(
    params: Params,
    cfg: ModelConfig,
    windows: np.ndarray,
    batch_size: int = 1,
    desc: str = "perplexity",
    progress: bool = True,
    budget_bytes: int | None = None,
) -> np.ndarray:
    """Summed next-token NLL of each window (n_windows,), each window scored alone; the LM head
    runs over vocabulary chunks when a batch's logits exceed `budget_bytes` per device, and the
    blocks one at a time when the whole forward does not fit it (`scored_whole`)."""
    windows = checked_windows(windows, cfg, desc)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    if not scored_whole(params, cfg, batch_size, windows.shape[1], budget):
        return window_nlls_blockwise(HeldBlocks(params, cfg, resolve_mesh(None)), windows, batch_size, desc, progress,
                                     budget)
    chunk = head_vocab_chunk(cfg, batch_size, windows.shape[1], budget, device_bytes(params))
    pad = (-len(windows)) % batch_size
    padded = np.concatenate([windows, windows[:pad]]) if pad else windows
    bar = tqdm(range(0, len(padded), batch_size), desc=desc, unit="batch", disable=not progress, leave=False)
    sums = [np.asarray(window_nll_sums(params, cfg, jnp.asarray(padded[start:start + batch_size]), chunk))
            for start in bar]
    return np.concatenate(sums)[: len(windows)].astype(np.float64)


def perplexity(params: Params, cfg: ModelConfig, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity",
               progress: bool = True) -> float:
    """exp(mean next-token NLL over all windows), each window scored alone."""
    return ppl_of(float(window_nlls(params, cfg, windows, batch_size, desc, progress).sum()), windows, desc)


def checked_windows(windows: np.ndarray, cfg: ModelConfig, desc: str) -> np.ndarray:
    windows = np.asarray(windows, np.int32)
    if windows.ndim != 2 or len(windows) == 0:
        raise TyrjaxError(f"{desc}: expected a non-empty (n_windows, length) token array, got shape {windows.shape}")
    if windows.shape[1] > cfg.max_position_embeddings:
        raise TyrjaxError(
            f"{desc}: windows of {windows.shape[1]} tokens exceed the model's "
            f"{cfg.max_position_embeddings} positions; use shorter windows"
        )
    return windows


def ppl_of(total_nll: float, windows: np.ndarray, desc: str) -> float:
    mean = total_nll / (windows.shape[0] * (windows.shape[1] - 1))
    if not np.isfinite(mean):
        raise TyrjaxError(f"{desc}: the loss is not finite; the model produced NaN or inf logits")
    return float(np.exp(mean))


@partial(jax.jit, static_argnames=("cfg", "vocab_chunk"))
def nll_sums_from_hidden(head: Params, cfg: ModelConfig, h: jax.Array, tokens: jax.Array,
                         vocab_chunk: int | None = None) -> jax.Array:
    """Summed NLL of each window (B,) from the last block's output `h (B, T, d)`."""
    return nll_from_hidden(head, cfg, h, tokens, vocab_chunk).sum(axis=1)


def window_nlls_blockwise(
    model: ModelBlocks, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity", progress: bool = True,
    budget_bytes: int | None = None,
) -> np.ndarray:
    """`window_nlls` computed block by block: all windows go through one block before the next
    block is read, so only one block of the model is needed at a time (the hidden states of
    the windows are held instead: n_windows × length × hidden_size, on the host when they
    exceed `budget_bytes` per device)."""
    windows = checked_windows(windows, model.cfg, desc)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    h = run_blocks(model, windows, batch_size, desc=desc if progress else None, budget_bytes=budget, phase="evaluation")
    chunk = head_vocab_chunk(model.cfg, batch_size, windows.shape[1], budget, model.resident_bytes())
    sums = map_to_host(lambda hc, tc: nll_sums_from_hidden(model.head, model.cfg, hc, tc, chunk), (h, windows),
                       batch_size, model.mesh)
    return sums.astype(np.float64)


def perplexity_blockwise(
    model: ModelBlocks, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity", progress: bool = True
) -> float:
    """`perplexity` computed block by block (see `window_nlls_blockwise`)."""
    return ppl_of(float(window_nlls_blockwise(model, windows, batch_size, desc, progress).sum()), windows, desc)
