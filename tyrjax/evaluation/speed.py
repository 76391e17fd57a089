"""Inference speed: time to first token (prefill) and decode throughput, compiled once, medians."""
from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

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


class Contender(NamedTuple):
    """A model in a speed sweep, under the name its rows carry."""

    label: str
    params: Params
    cfg: ModelConfig


def sweep_shapes(batch_sizes: Sequence[int], prompt_lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Every (batch, prompt) pair, each once, in the order given."""
    return list(dict.fromkeys(itertools.product(batch_sizes, prompt_lengths)))


def measure_row(c: Contender, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """One shape of one model; `compiles` counts the decode step's compilations it caused
    (2 for a new shape: the prompt and the one-token step; never one per generated token)."""
    with compilations("decode_step") as compiled:
        speed = measure_speed(c.params, c.cfg, batch, prompt, new_tokens, repeats)
    return {"model": c.label, "batch": batch, "prompt": prompt, "new_tokens": new_tokens, **speed,
            "compiles": len(compiled)}


def add_speedups(rows: list[dict[str, Any]], dense_label: str) -> list[dict[str, Any]]:
    """Each row of another model gains, from the dense row of the same shape, how many times
    faster it is: `ttft_speedup` = dense ttft / ttft, `decode_speedup` = tok/s / dense tok/s."""
    dense = {(r["batch"], r["prompt"]): r for r in rows if r["model"] == dense_label}
    out = []
    for r in rows:
        ref = dense.get((r["batch"], r["prompt"]))
        if r["model"] != dense_label and ref is not None:
            r = {**r, "ttft_speedup": ref["ttft_s"] / r["ttft_s"], "decode_speedup": r["decode_tok_s"] / ref["decode_tok_s"]}
        out.append(r)
    return out


def speed_sweep(model: Contender, dense: Contender | None, batch_sizes: Sequence[int], prompt_lengths: Sequence[int],
                new_tokens: int, repeats: int, others: Sequence[Contender] = ()) -> list[dict[str, Any]]:
    """Rows of `measure_row` for every shape, the dense model measured right before `model` (and
    `others` right after it) on each shape so all see the same machine state; every row but
    the dense model's carries speedups vs dense."""
    contenders = [Contender(c.label, *to_compact(c.params, c.cfg)) for c in (dense, model, *others) if c is not None]
    rows = [measure_row(c, b, p, new_tokens, repeats) for b, p in sweep_shapes(batch_sizes, prompt_lengths) for c in contenders]
    return add_speedups(rows, dense.label) if dense is not None else rows
