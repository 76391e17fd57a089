"""Inference speed: time to first token (prefill) and decode throughput, compiled once, medians."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tyrjax.model.config import ModelConfig
from tyrjax.model.generate import decode_step, empty_caches
from tyrjax.model.decoder import Params, to_compact


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations(fun_name: str) -> Iterator[list[float]]:
    """Collect the XLA compile times of the jitted function `fun_name` inside the block, to
    check that a timed loop compiles once per shape and never per step."""
    seen: list[float] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE_EVENT and kwargs.get("fun_name") == f"jit({fun_name})":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def median_seconds(fn: Callable[..., Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of `repeats` calls after one warm-up call (compilation excluded).

    With `setup`, each call is `fn(setup())` and only `fn` is timed: state the timed work
    consumes (fresh KV caches, a prefilled cache) is made outside the clock."""
    def call() -> float:
        arg = () if setup is None else (setup(),)
        t = time.perf_counter()
        fn(*arg)
        return time.perf_counter() - t

    call()
    return statistics.median(call() for _ in range(repeats))


def measure_speed(params: Params, cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int,
                  repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Prefill latency of a (batch, prompt_len) prompt (time to first token) and greedy-decode
    tokens/s of the `new_tokens` steps after it, each timed alone on fresh KV caches."""
    params, cfg = to_compact(params, cfg)
    prompt = jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    cache_len = prompt_len + new_tokens
    dtype = params["embed"].dtype

    def fresh_caches():
        return jax.block_until_ready(empty_caches(cfg, batch, cache_len, dtype))

    def prefill(caches):
        logits, caches = decode_step(params, cfg, prompt, caches)
        return jax.block_until_ready(logits), caches

    def prefilled():
        return prefill(fresh_caches())

    def decode(state):
        logits, caches = state
        for _ in range(new_tokens):
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]
            logits, caches = decode_step(params, cfg, nxt, caches)
        jax.block_until_ready(logits)

    ttft = median_seconds(prefill, repeats, setup=fresh_caches)
    decode_s = median_seconds(decode, repeats, setup=prefilled)
    return {"ttft_s": ttft, "decode_tok_s": batch * new_tokens / decode_s}


def speed_table(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Header + one line per row (for print_table and markdown)."""
    ratios = any("ttft_speedup" in r for r in rows)
    table = [("model", "batch", "prompt", "ttft s", "decode tok/s") + (("ttft speedup", "decode speedup") if ratios else ())]
    for r in rows:
        line = (r["model"], str(r["batch"]), str(r["prompt"]), f"{r['ttft_s']:.4f}", f"{r['decode_tok_s']:.1f}")
        if ratios:
            line += (f"{r['ttft_speedup']:.2f}x", f"{r['decode_speedup']:.2f}x") if "ttft_speedup" in r else ("", "")
        table.append(line)
    return table
