"""The damped Hessian shared by Týr's local pruner and SparseGPT, and its dead-input rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.calibration.hessian import damped_hessian
from tyrjax.errors import TyrjaxError
from tyrjax.sparse import NByM, Unstructured, sparsegpt_prune
from tyrjax.structured import prune_groups


def gram(dead=(), d_in=32, n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in)).astype(np.float32)
    X[:, list(dead)] = 0.0
    return jnp.asarray(X.T @ X)


def test_live_inputs_get_damp_times_mean_diagonal_on_the_diagonal():
    H = gram()
    H_d, dead = damped_hessian(H, 0.01)
    assert not bool(dead.any())
    expected = H + jnp.diag(jnp.full(H.shape[0], 0.01 * jnp.mean(jnp.diagonal(H))))
    np.testing.assert_array_equal(np.asarray(H_d), np.asarray(expected))


def test_dead_inputs_follow_the_sparsegpt_reference():
    """SparseGPT's reference: `H[dead, dead] = 1`, then `H += damp · mean(diag H) · I`."""
    H = gram(dead=(3, 7, 8))
    reference = np.asarray(H).astype(np.float64)
    dead_ref = np.diag(reference) == 0
    reference[dead_ref, dead_ref] = 1.0
    reference += 0.01 * np.mean(np.diag(reference)) * np.eye(len(reference))
    H_d, dead = damped_hessian(H, 0.01)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(dead)), [3, 7, 8])
    np.testing.assert_allclose(np.asarray(H_d), reference, rtol=1e-6)
    with_unit = np.where(dead_ref, 1.0, np.diag(np.asarray(H)))
    np.testing.assert_allclose(np.diag(np.asarray(H_d))[[3, 7, 8]], 1.0 + 0.01 * with_unit.mean(), rtol=1e-6)


def test_all_dead_hessian_is_invertible():
    H_d, dead = damped_hessian(jnp.zeros((8, 8)), 0.01)
    assert bool(dead.all())
    np.testing.assert_allclose(np.asarray(H_d), 1.01 * np.eye(8), rtol=1e-7)


def test_same_under_jit_with_a_traced_damp():
    H = gram(dead=(1,))
    eager = damped_hessian(H, jnp.float32(0.05))
    jitted = jax.jit(damped_hessian)(H, jnp.float32(0.05))
    np.testing.assert_array_equal(np.asarray(eager[0]), np.asarray(jitted[0]))
    np.testing.assert_array_equal(np.asarray(eager[1]), np.asarray(jitted[1]))


def test_both_pruners_zero_the_rows_of_dead_inputs():
    dead = (5, 6, 7, 8)  # input group 1 of size 4 (5..7) is partly dead, group 2 (8..11) partly
    H = gram(dead=dead, d_in=32)
    W = jnp.asarray(np.random.default_rng(1).normal(size=(32, 12)), jnp.float32)
    W_tyr, _ = prune_groups(W, H, 4, 1, rounds=1)
    W_gpt, _ = sparsegpt_prune(W, H, Unstructured(0.25), block_size=16)
    W_nm, _ = sparsegpt_prune(W, H, NByM(2, 4), block_size=16)
    for pruned in (W_tyr, W_gpt, W_nm):
        assert np.all(np.asarray(pruned)[list(dead)] == 0.0)
        assert np.all(np.isfinite(np.asarray(pruned)))


def test_non_square_input_is_refused():
    with pytest.raises(TyrjaxError, match=r"square.*\(3, 4\)"):
        damped_hessian(jnp.zeros((3, 4)), 0.01)
