"""Time one call of the local pruner on one layer at all nine levels, for comparing two trees.

    PYTHONPATH=TREE python experiments/bench_local_pruner.py [--d-in 1536 --d-out 576 --group 1 --rounds 16]

The layer is random (W normal, H = XᵀX of 4,096 normal rows), the levels remove 0 to 80 % of the
groups, the saliency is Týr's: the work of one `_prune_levels_jit` call of the supernet build at
SmolLM2-135M's down_proj (`--d-in 576 --group 64 --rounds 1` for its o_proj). Prints the fastest of
`--repeats` timed calls after a warm-up, and a checksum of the pruned weights, so two trees'
outputs can be compared.
"""
import argparse
import hashlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from tyrjax.structured.local_pruner import _prune_levels_jit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=1536)
    ap.add_argument("--d-out", type=int, default=576)
    ap.add_argument("--group", type=int, default=1, help="channels per group (1: neurons; the head size: heads)")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--levels", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4096, args.d_in)).astype(np.float32)
    H = jnp.asarray(X.T @ X)
    W = jnp.asarray(rng.standard_normal((args.d_in, args.d_out)).astype(np.float32))
    n_remove = jnp.asarray(np.linspace(0, 0.8 * args.d_in // args.group, args.levels).astype(np.int32))

    def call():
        return jax.block_until_ready(_prune_levels_jit(W, H, n_remove, group_size=args.group, rounds=args.rounds,
                                                       saliency="tyr", damp=jnp.float32(0.01)))

    call()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        weights, _ = call()
        times.append(time.perf_counter() - start)
    digest = hashlib.sha256(np.asarray(weights).tobytes()).hexdigest()[:16]
    print(f"| {args.d_in}x{args.d_out}, group {args.group}, {args.rounds} rounds, {args.levels} levels "
          f"| {min(times):.3f} | {', '.join(f'{t:.3f}' for t in times)} | {digest} |")


if __name__ == "__main__":
    main()
