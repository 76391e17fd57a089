"""Unstructured mask selection: the bisection in `tyrjax.sparse.patterns` against a full sort.

    python experiments/bench_mask.py [--shape 1536,576] [--repeats 5]

Both remove the same number of lowest scores of a random layer, jitted, medians after a
warm-up; prints seconds per mask, the ratio, and whether the two masks are equal.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from tyrjax.sparse.patterns import mask_prune_lowest
from tyrjax.evaluation.speed import median_seconds


def mask_by_sort(scores: jax.Array, n_prune: int) -> jax.Array:
    """The reference: rank every score with a stable argsort."""
    flat = scores.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks >= n_prune).reshape(scores.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1536,576")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    scores = jnp.abs(jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32))
    n_prune = scores.size // 2
    fns = {"sort": jax.jit(mask_by_sort, static_argnums=1), "bisection": jax.jit(mask_prune_lowest, static_argnums=1)}
    seconds = {k: median_seconds(lambda f=f: f(scores, n_prune).block_until_ready(), args.repeats) for k, f in fns.items()}
    same = bool((fns["sort"](scores, n_prune) == fns["bisection"](scores, n_prune)).all())
    print(f"| method | s per mask ({shape[0]}x{shape[1]}) | ratio |")
    print("|---|---|---|")
    for k, v in seconds.items():
        print(f"| {k} | {v:.4f} | {seconds['sort'] / v:.1f}x |")
    print(f"\nmasks equal: {same}")


if __name__ == "__main__":
    main()
