"""experiments/hlo_flops.py counts a compiled executable's matrix FLOPs, loops as often as they run."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp

SPEC = importlib.util.spec_from_file_location(
    "hlo_flops", Path(__file__).resolve().parents[2] / "experiments" / "hlo_flops.py")
hlo_flops = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(hlo_flops)

N = 64
PRODUCT = 2 * N ** 3


def counted(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    return hlo_flops.hlo_flops(compiled.as_text()), hlo_flops.cost_analysis_flops(compiled)


def test_one_product_agrees_with_xla():
    x = jnp.ones((N, N))
    flops, xla = counted(lambda a: a @ a, x)
    assert flops == (PRODUCT, PRODUCT) and xla == PRODUCT


def test_loops_count_every_trip_and_xla_counts_one():
    x = jnp.ones((N, N))
    flops, xla = counted(lambda a: jax.lax.fori_loop(0, 7, lambda i, y: jnp.tanh(y @ a), a), x)
    assert flops == (7 * PRODUCT, 7 * PRODUCT)
    assert PRODUCT <= xla < 2 * PRODUCT


def test_a_conditional_gives_its_cheapest_and_costliest_branch():
    x = jnp.ones((N, N))

    def scan(a, n):
        return jax.lax.scan(lambda c, i: (jax.lax.cond(i < n, lambda c: c @ a, lambda c: c, c), None), a,
                            jnp.arange(5))[0]

    flops, _ = counted(scan, x, 2)
    assert flops == (0.0, 5 * PRODUCT) and flops.at(2 / 5) == 2 * PRODUCT


def test_cholesky_and_triangular_solves_are_counted():
    x = jax.random.normal(jax.random.key(0), (N, N))

    def solve(a):
        spd = a @ a.T + N * jnp.eye(N)
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(spd, lower=True), a)

    flops, _ = counted(solve, x)
    # the product, the factorization (n³/3) and two triangular solves with n right-hand sides (n³ each)
    assert flops.low == flops.high == PRODUCT + N ** 3 / 3 + 2 * N ** 3
