"""SparseGPT vs a numpy transcription; exact counts; error vs Wanda/magnitude; compile-once."""

import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.sparse import NByM, Unstructured, magnitude_prune, sparsegpt_prune, wanda_prune


def reference_sparsegpt(W, H, pattern, block, damp=0.01):
    """SparseGPT as in the paper's loop, float64, weights as (d_out, d_in) rows; mask True = kept.

    Unstructured blocks prune `round(s·i2·d_out) − round(s·i1·d_out)` weights (cumulative
    rounding, so the layer total is exact); N:M prunes the M−N lowest of each group.
    """
    W = np.array(W, np.float64).T.copy()
    H = np.array(H, np.float64).copy()
    d_out, d_in = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(d_in)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, UᵀU = H⁻¹
    pruned = np.zeros(W.shape, bool)
    for i1 in range(0, d_in, block):
        i2 = min(i1 + block, d_in)
        W1 = W[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        mask1 = np.zeros(W1.shape, bool)
        if isinstance(pattern, Unstructured):
            s = pattern.sparsity
            k = round(s * i2 * d_out) - round(s * i1 * d_out)
            tmp = W1**2 / np.diag(U1)[None, :] ** 2
            mask1.flat[np.argsort(tmp.ravel(), kind="stable")[:k]] = True
        for i in range(i2 - i1):
            if isinstance(pattern, NByM) and i % pattern.m == 0:
                m = pattern.m
                tmp = W1[:, i : i + m] ** 2 / np.diag(U1)[i : i + m] ** 2
                for r in range(d_out):
                    lowest = np.argsort(tmp[r], kind="stable")[: m - pattern.n]
                    mask1[r, i + lowest] = True
            w = W1[:, i]
            q = w.copy()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.T, ~pruned.T


def _layer(d_in, d_out, n_tokens=512, seed=0, dead=()):
    """Random weights and correlated inputs X = Z A (so the Hessian matters)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in) + np.eye(d_in)
    X = rng.normal(size=(n_tokens, d_in)) @ A * rng.uniform(0.5, 2.0, size=d_in)
    X[:, list(dead)] = 0.0
    W = rng.normal(size=(d_in, d_out))
    return jnp.asarray(W, jnp.float32), jnp.asarray(X, jnp.float32)


@pytest.mark.parametrize(
    "d_in, block, pattern, dead",
    [(256, 128, Unstructured(0.5), ()), (256, 128, NByM(2, 4), ()),
     (48, 16, Unstructured(0.5), (5,)), (48, 16, NByM(2, 4), (5,)),
     (40, 16, Unstructured(0.3), ()), (48, 16, NByM(4, 8), ()), (48, 128, Unstructured(0.6), ())],
)
def test_matches_numpy_reference(d_in, block, pattern, dead):
    W, X = _layer(d_in, 24, dead=dead)
    H = X.T @ X
    W_ref, mask_ref = reference_sparsegpt(W, H, pattern, min(block, d_in))
    W_jax, mask_jax = sparsegpt_prune(W, H, pattern, block_size=block)
    np.testing.assert_array_equal(np.asarray(mask_jax), mask_ref)
    np.testing.assert_allclose(np.asarray(W_jax), W_ref, rtol=1e-3, atol=1e-3 * np.abs(W_ref).max())
    assert (np.asarray(W_jax)[~mask_ref] == 0).all()
    for row in dead:
        assert (np.asarray(W_jax)[row] == 0).all()


@pytest.mark.parametrize("d_in, sparsity", [(48, 0.5), (40, 0.3), (64, 0.77), (576, 0.5)])
def test_unstructured_total_is_exact(d_in, sparsity):
    W, X = _layer(d_in, 8, n_tokens=64 if d_in < 100 else 600)
    block = 16 if d_in < 100 else 128
    _, mask = sparsegpt_prune(W, X.T @ X, Unstructured(sparsity), block_size=block)
    assert int(mask.sum()) == d_in * 8 - round(sparsity * d_in * 8)


@pytest.mark.parametrize("pattern", [NByM(2, 4), NByM(4, 8)])
def test_nm_groups_are_exact(pattern):
    W, X = _layer(64, 16, n_tokens=128)
    W_pruned, mask = sparsegpt_prune(W, X.T @ X, pattern, block_size=32)
    groups = np.asarray(mask).reshape(64 // pattern.m, pattern.m, 16).sum(axis=1)
    assert (groups == pattern.n).all()
    assert (np.asarray(W_pruned)[~np.asarray(mask)] == 0).all()


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_error_below_wanda_and_magnitude(pattern):
    W, X = _layer(64, 32, n_tokens=1024, seed=3)
    H = X.T @ X

    def error(W_pruned):
        return float(jnp.sum((X @ W - X @ W_pruned) ** 2))

    sgpt = error(sparsegpt_prune(W, H, pattern, block_size=32)[0])
    wanda = error(wanda_prune(W, jnp.sqrt(jnp.diag(H)), pattern)[0])
    magnitude = error(magnitude_prune(W, pattern)[0])
    assert sgpt < 0.9 * wanda and sgpt < 0.9 * magnitude, (sgpt, wanda, magnitude)


def test_compiles_once_per_shape():
    before = sparsegpt_prune._cache_size()
    for seed in (1, 2):
        W, X = _layer(32, 8, n_tokens=64, seed=seed)
        sparsegpt_prune(W, X.T @ X, "2:4", block_size=16)
    assert sparsegpt_prune._cache_size() == before + 1


def test_bad_inputs_raise_tyrjax_error():
    W, X = _layer(48, 8, n_tokens=64)
    with pytest.raises(TyrjaxError, match="H has shape"):
        sparsegpt_prune(W, jnp.eye(47), "0.5")
    with pytest.raises(TyrjaxError, match="block_size=18"):
        sparsegpt_prune(W, X.T @ X, "2:4", block_size=18)
    with pytest.raises(TyrjaxError, match="'3:2'"):
        sparsegpt_prune(W, X.T @ X, "3:2")
