"""Inference speed: time to first token (prefill) and decode throughput, compiled once, medians."""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tyrjax.config import ModelConfig
from tyrjax.generate import decode_step, empty_caches
from tyrjax.model import Params, to_compact


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call (compilation excluded)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_speed(params: Params, cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int,
                  repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Prefill latency of a (batch, prompt_len) prompt and greedy-decode tokens/s after it."""
    params, cfg = to_compact(params, cfg)
    prompt = jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    cache_len = prompt_len + new_tokens
    dtype = params["embed"].dtype

    def prefill():
        logits, caches = decode_step(params, cfg, prompt, empty_caches(cfg, batch, cache_len, dtype))
        return jax.block_until_ready(logits), caches

    def decode():
        logits, caches = prefill()
        for _ in range(new_tokens):
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]
            logits, caches = decode_step(params, cfg, nxt, caches)
        jax.block_until_ready(logits)

    ttft = median_seconds(prefill, repeats)
    total = median_seconds(decode, repeats)
    return {"ttft_s": ttft, "decode_tok_s": batch * new_tokens / max(total - ttft, 1e-9)}
