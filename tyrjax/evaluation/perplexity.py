"""Perplexity: each window scored alone by one jitted, batched scorer."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tyrjax.model.blocks import ModelBlocks, run_blocks
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params, forward, logits_from_hidden


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihoods (B, T-1) in fp32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@partial(jax.jit, static_argnums=1)
def window_nll_sums(params: Params, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """Summed NLL of each window (B,), fp32."""
    return token_nll(forward(params, cfg, tokens), tokens).sum(axis=1)


def window_nlls(
    params: Params,
    cfg: ModelConfig,
    windows: np.ndarray,
    batch_size: int = 1,
    desc: str = "perplexity",
    progress: bool = True,
) -> np.ndarray:
    """Summed next-token NLL of each window (n_windows,), each window scored alone."""
    windows = checked_windows(windows, cfg, desc)
    pad = (-len(windows)) % batch_size
    padded = np.concatenate([windows, windows[:pad]]) if pad else windows
    bar = tqdm(range(0, len(padded), batch_size), desc=desc, unit="batch", disable=not progress, leave=False)
    sums = [np.asarray(window_nll_sums(params, cfg, jnp.asarray(padded[start:start + batch_size]))) for start in bar]
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


@partial(jax.jit, static_argnames="cfg")
def nll_sums_from_hidden(head: Params, cfg: ModelConfig, h: jax.Array, tokens: jax.Array) -> jax.Array:
    """Summed NLL of each window (B,) from the last block's output `h (B, T, d)`."""
    return token_nll(logits_from_hidden(head, cfg, h), tokens).sum(axis=1)


def window_nlls_blockwise(
    model: ModelBlocks, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity", progress: bool = True
) -> np.ndarray:
    """`window_nlls` computed block by block: all windows go through one block before the next
    block is read, so only one block of the model is needed at a time (the hidden states of
    the windows are held instead: n_windows × length × hidden_size)."""
    windows = checked_windows(windows, model.cfg, desc)
    h = run_blocks(model, windows, batch_size, desc=desc if progress else None)
    sums = [np.asarray(nll_sums_from_hidden(model.head, model.cfg, h[start:start + batch_size],
                                            jnp.asarray(windows[start:start + batch_size])))
            for start in range(0, len(windows), batch_size)]
    return np.concatenate(sums).astype(np.float64)


def perplexity_blockwise(
    model: ModelBlocks, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity", progress: bool = True
) -> float:
    """`perplexity` computed block by block (see `window_nlls_blockwise`)."""
    return ppl_of(float(window_nlls_blockwise(model, windows, batch_size, desc, progress).sum()), windows, desc)
