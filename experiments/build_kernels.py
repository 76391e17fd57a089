"""The supernet build's two slowest kernels against variants that would speed them up: timed,
and compared with the build's output bit for bit.

    python experiments/build_kernels.py [--windows 8] [--repeats 5] [--profile]

Kernels (the embedded SmolLM2-135M, fp32):
  attention capture  `calibration.statistics.heads_of` on block 0's input, one chunk of --windows
                     512-token calibration windows (the build captures eight at a time), against the
                     same call with the attention core (`model.layers.causal_attention`) run a window
                     at a time after the batched projections, inside one jitted call
  local pruner       `_prune_levels_jit` on down_proj's shapes (1536 × 576, nine levels, 16 rounds, a
                     random Hessian of 4,096 samples), all nine levels in one call, against two level
                     groups of five dispatched together (on two cores they may run at once)

Each row gives the fastest and the median of --repeats calls after a warm-up, and whether the
output equals the build kernel's bit for bit (else the largest difference). --profile adds the
build kernels' XLA operations, each one's time in one call from jax.profiler's trace (operations
on the two threads overlap, so they add up to more than the call).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tyrjax
from tyrjax.calibration.statistics import attention_normed, embed_windows, heads_of
from tyrjax.model.decoder import is_stacked
from tyrjax.model.layers import attention_qkv, causal_attention, rope_tables
from tyrjax.structured.local_pruner import _prune_levels_jit


@partial(jax.jit, static_argnums=(1, 3))
def heads_window_by_window(p, cfg, normed: jax.Array, kv_map: tuple[int, ...]) -> jax.Array:
    """`heads_of` with the attention core a window at a time (the projections batched)."""
    positions = jnp.arange(normed.shape[1])
    q, k, v = attention_qkv(p, cfg, normed, *rope_tables(cfg, positions))
    heads = [causal_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], kv_map, positions, positions)
             for i in range(normed.shape[0])]
    return jnp.concatenate(heads).astype(jnp.float32)


def timed(call, repeats: int) -> tuple[float, float]:
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def difference(reference, other) -> str:
    pairs = list(zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(other)))
    if all(bool(jnp.array_equal(a, b)) for a, b in pairs):
        return "bit for bit"
    worst = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) for a, b in pairs)
    return f"differs, up to {worst:.1e}"


def operation_times(call, top: int = 12) -> list[tuple[str, float]]:
    """The `top` XLA operations of one `call` by their traced time, ms."""
    jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            jax.block_until_ready(call())
        events = json.load(gzip.open(next(Path(out).rglob("*.json.gz"))))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "PjitFunction", "SlinkyThreadPool")):
            total[name] += event["dur"] / 1e3
    return sorted(total.items(), key=lambda kv: -kv[1])[:top]


def attention_rows(windows: int, repeats: int, profile: bool) -> list[tuple[str, tuple, str]]:
    model = tyrjax.load_model()
    layers = model.params["layers"]
    p = jax.tree_util.tree_map(lambda a: a[0], layers) if is_stacked(model.params) else layers[0]
    normed = attention_normed(p, model.cfg, embed_windows(model.params, tyrjax.calibration_windows(model, calib_windows=windows)))
    kv_map = model.cfg.kv_map(0)
    build = partial(heads_of, p, model.cfg, normed, kv_map)
    variant = partial(heads_window_by_window, p, model.cfg, normed, kv_map)
    if profile:
        print_profile(f"heads_of, {windows} windows", build)
    return [(f"attention capture, {windows} windows a call (the build)", timed(build, repeats), "reference"),
            ("attention core a window at a time", timed(variant, repeats), difference(build(), variant()))]


def pruner_rows(repeats: int, profile: bool) -> list[tuple[str, tuple, str]]:
    rng = np.random.default_rng(0)
    d_in, d_out = 1536, 576
    X = rng.standard_normal((4096, d_in)).astype(np.float32) * (1 + rng.random(d_in)).astype(np.float32)
    H = jnp.asarray(X.T @ X)
    W = jnp.asarray(0.02 * rng.standard_normal((d_in, d_out)).astype(np.float32))
    n_remove = jnp.asarray(np.linspace(0, 0.8 * d_in, 9).astype(np.int32))

    def levels(counts):
        return _prune_levels_jit(W, H, counts, 1, 16, "tyr", jnp.float32(0.01))

    def two_groups():
        first, second = levels(n_remove[:5]), levels(jnp.concatenate([n_remove[5:], n_remove[-1:]]))
        return tuple(jnp.concatenate([a, b[:4]]) for a, b in zip(first, second))

    build = partial(levels, n_remove)
    if profile:
        print_profile("local pruner, nine levels", build)
    return [("local pruner, nine levels in one call (the build)", timed(build, repeats), "reference"),
            ("two level groups dispatched together", timed(two_groups, repeats), difference(build(), two_groups()))]


def print_profile(title: str, call) -> None:
    print(f"\n{title}: XLA operations, ms in one call")
    for name, ms in operation_times(call):
        print(f"  {ms:8.1f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8, help="calibration windows a capture call (the build's: 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    ap.add_argument("--profile", action="store_true", help="also list the build kernels' XLA operations by time")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.local_device_count()} device(s)")
    rows = attention_rows(args.windows, args.repeats, args.profile) + pruner_rows(args.repeats, args.profile)
    print("\n| kernel | fastest s | median s | output against the build's |")
    print("|---|---|---|---|")
    for name, (fastest, median), same in rows:
        print(f"| {name} | {fastest:.3f} | {median:.3f} | {same} |")


if __name__ == "__main__":
    main()
