"""fp32 Cholesky (LAPACK potrf through jax on CPU) of a 1536² Gram matrix, timed beside a 2048² matmul.

    python experiments/bench_potrf_threads.py
    OPENBLAS_NUM_THREADS=1 python experiments/bench_potrf_threads.py

The local pruner factorizes matrices of this size (down_proj's 1536 inputs on the default model);
jax runs them through the OpenBLAS scipy ships, whose thread count OPENBLAS_NUM_THREADS sets.
Prints the best of 3 factorizations, the matmul rate in the same process and a checksum.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

rng = np.random.default_rng(0)
X = rng.standard_normal((4096, 1536)).astype(np.float32)
spd = jnp.asarray(X.T @ X)
cf = jax.jit(lambda a: jax.scipy.linalg.cho_factor(a, lower=True)[0])
L = cf(spd).block_until_ready()
ts = []
for _ in range(3):
    t = time.perf_counter(); r = cf(spd).block_until_ready(); ts.append(time.perf_counter() - t)
a = jnp.asarray(rng.standard_normal((2048, 2048)).astype(np.float32))
d = jax.jit(jnp.dot); d(a, a).block_until_ready()
t = time.perf_counter(); d(a, a).block_until_ready(); td = time.perf_counter() - t
print(f"potrf {min(ts):.3f} s, dot2048 {2*2048**3/td/1e9:.1f} GFLOP/s, sum {float(jnp.sum(r)):.6f}")
