"""Týr's local structured pruner against float64 numpy: LS refit, OBS block algebra, brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.structured import (
    SALIENCIES,
    get_saliency,
    keep_lowest_removed,
    magnitude_scores,
    obs_remove,
    prune_groups,
    prune_levels,
    register_saliency,
    wanda_sp_scores,
)

HEADS, HEAD_DIM, D_OUT, TOKENS = 4, 4, 8, 200
D_IN = HEADS * HEAD_DIM


def layer(seed, d_in=D_IN, d_out=D_OUT, n=TOKENS):
    """Correlated tokens X = Z A with uneven channel scales, and a random weight."""
    rng = np.random.default_rng(seed)
    A = np.eye(d_in) + 0.5 * rng.standard_normal((d_in, d_in))
    X = rng.standard_normal((n, d_in)) @ A * rng.uniform(0.3, 2.0, d_in)
    W = rng.standard_normal((d_in, d_out))
    return X, W


def f32(a):
    return jnp.asarray(a, jnp.float32)


def ls_fit(X, W, keep, g):
    """Float64 least squares of X W on the kept channels: (Ŵ full-size, error)."""
    ch = np.repeat(np.asarray(keep), g)
    Y = X @ W
    W_hat = np.zeros_like(W)
    if ch.any():
        W_hat[ch] = np.linalg.lstsq(X[:, ch], Y, rcond=None)[0]
    return W_hat, float(np.sum((Y - X @ W_hat) ** 2))


def best_subset_error(X, W, n_remove, g):
    n_groups = W.shape[0] // g
    subsets = itertools.combinations(range(n_groups), n_groups - n_remove)
    return min(ls_fit(X, W, np.isin(np.arange(n_groups), s), g)[1] for s in subsets)


# ---------------------------------------------------------------- numpy reference (float64)


def np_scores(name, W, W_dense, h_inv, H, g):
    """Saliency written from the formulas, one group at a time."""
    n = W.shape[0] // g
    G = H @ W_dense
    out = np.zeros(n)
    for i in range(n):
        sl = slice(i * g, (i + 1) * g)
        if name == "magnitude":
            out[i] = np.linalg.norm(W[sl])
            continue
        obs = np.sum(W[sl] * (np.linalg.inv(h_inv[sl, sl]) @ W[sl])) / 2
        out[i] = obs + (np.sum(W[sl] * G[sl]) if name == "tyr" else 0.0)
    return out


def np_block_remove(W, h_inv, P):
    """The direct block formula on channel index list P."""
    c = h_inv[:, P] @ np.linalg.inv(h_inv[np.ix_(P, P)])
    W = W - c @ W[P]
    h_inv = h_inv - c @ h_inv[P]
    W[P] = 0
    h_inv[P] = 0
    h_inv[:, P] = 0
    return W, h_inv


def np_rank1_remove(W, h_inv, P):
    """The same removal, one channel at a time (Schur complement steps)."""
    W, h_inv = W.copy(), h_inv.copy()
    for p in P:
        c = h_inv[:, p] / h_inv[p, p]
        W = W - np.outer(c, W[p])
        h_inv = h_inv - np.outer(c, h_inv[p])
    W[P] = 0
    h_inv[P] = 0
    h_inv[:, P] = 0
    return W, h_inv


def np_prune(W_dense, H, g, n_remove, rounds, name="tyr", damp=0.01):
    """Týr's local pruning as the spec reads: damp, progressive OBS rounds, refit."""
    d_in = W_dense.shape[0]
    n = d_in // g
    H = H + damp * np.mean(np.diag(H)) * np.eye(d_in)
    W0 = W_dense.copy()
    W, h_inv = W0.copy(), np.linalg.inv(H)
    removed = np.zeros(n, bool)
    counts = [n_remove // rounds + (r < n_remove % rounds) for r in range(rounds)]
    for k in counts:
        if k == 0:
            continue
        h_safe = h_inv + np.diag(np.repeat(removed, g).astype(float))
        s = np_scores(name, W, W0, h_safe, H, g)
        s[removed] = np.inf
        pick = np.argsort(s, kind="stable")[:k]
        removed[pick] = True
        P = [i * g + j for i in sorted(pick) for j in range(g)]
        W, h_inv = np_block_remove(W, h_inv, P)
    K = np.repeat(~removed, g)
    W_new = np.zeros_like(W0)
    W_new[K] = np.linalg.solve(H[np.ix_(K, K)], (H @ W0)[K])
    return W_new, ~removed


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_is_the_least_squares_optimum_of_its_kept_set(seed):
    X, W = layer(seed)
    H = X.T @ X
    for n_remove in (1, 2, 3):
        W_new, keep = prune_groups(f32(W), f32(H), HEAD_DIM, n_remove, rounds=1, damp=1e-7)
        W_ls, err_ls = ls_fit(X, W, keep, HEAD_DIM)
        W_new = np.asarray(W_new, np.float64)
        np.testing.assert_allclose(W_new, W_ls, atol=2e-3 * np.abs(W_ls).max())
        err = float(np.sum((X @ W - X @ W_new) ** 2))
        assert err <= err_ls * (1 + 1e-3)


def test_default_damped_refit_is_least_squares_with_a_proximal_term():
    """With damp λ the refit minimises ||X(W − Ŵ)||² + λ'||W − Ŵ||², λ' = λ·mean(diag H)."""
    X, W = layer(3)
    H = X.T @ X
    W_new, keep = prune_groups(f32(W), f32(H), HEAD_DIM, 2, rounds=1, damp=0.01)
    lam = 0.01 * np.mean(np.diag(H))
    ch = np.repeat(np.asarray(keep), HEAD_DIM)
    X_aug = np.vstack([X, np.sqrt(lam) * np.eye(D_IN)])
    expect = np.zeros_like(W)
    expect[ch] = np.linalg.lstsq(X_aug[:, ch], X_aug @ W, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(W_new), expect, atol=1e-4 * np.abs(expect).max())


def test_chosen_heads_versus_brute_force_wanda_sp_and_magnitude():
    """LS error of each method's kept set (every set refit by LS, so only the choice differs).

    On these 8 seeds × 3 levels: Týr's error / best-subset error is 1.04 on average, 1.32 at
    worst (one head removed, where the signed G term outweighs the exact OBS error), optimal
    in 20/24; Wanda-sp 1.07 (max 1.68), magnitude 1.37 (max 3.33). Týr is worse than Wanda-sp
    in 1/24 cases and than magnitude in 1/24 (its score is not the LS error), so the means are
    compared; plain OBS with one head removed is the exact LS criterion and must find the best.
    """
    ratios = {"tyr": [], "wanda_sp": [], "magnitude": []}
    for seed in range(8):
        X, W = layer(seed)
        H = X.T @ X
        x_norm = f32(np.sqrt(np.diag(H)))
        for n_remove in (1, 2, 3):
            best = best_subset_error(X, W, n_remove, HEAD_DIM)
            _, keep = prune_groups(f32(W), f32(H), HEAD_DIM, n_remove, rounds=1)
            ratios["tyr"].append(ls_fit(X, W, keep, HEAD_DIM)[1] / best)
            keep_w = keep_lowest_removed(wanda_sp_scores(f32(W), x_norm, HEAD_DIM), n_remove)
            ratios["wanda_sp"].append(ls_fit(X, W, keep_w, HEAD_DIM)[1] / best)
            keep_m = keep_lowest_removed(magnitude_scores(f32(W), HEAD_DIM), n_remove)
            ratios["magnitude"].append(ls_fit(X, W, keep_m, HEAD_DIM)[1] / best)
            if n_remove == 1:
                _, keep_o = prune_groups(
                    f32(W), f32(H), HEAD_DIM, 1, rounds=1, saliency="obs", damp=1e-7
                )
                assert ls_fit(X, W, keep_o, HEAD_DIM)[1] <= best * (1 + 1e-6)
    mean = {k: float(np.mean(v)) for k, v in ratios.items()}
    assert min(min(v) for v in ratios.values()) >= 1 - 1e-9
    assert mean["tyr"] <= mean["wanda_sp"]
    assert mean["tyr"] <= mean["magnitude"]
    assert mean["tyr"] <= 1.1
    assert max(ratios["tyr"]) <= 1.5


@pytest.mark.parametrize("name", sorted(["tyr", "obs", "magnitude"]))
@pytest.mark.parametrize("g", [1, 4])
def test_saliency_matches_the_formula(name, g):
    X, W = layer(4)
    H = X.T @ X + 3.0 * np.eye(D_IN)
    rng = np.random.default_rng(5)
    W_cur = W + 0.1 * rng.standard_normal(W.shape)
    h_inv = np.linalg.inv(H)
    got = get_saliency(name)(f32(W_cur), f32(W), f32(h_inv), f32(H), g)
    expect = np_scores(name, W_cur, W, h_inv, H, g)
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-4, atol=1e-3)


def test_group_size_one_block_form_equals_scalar_form():
    X, W = layer(6)
    H = X.T @ X
    h_inv = np.linalg.inv(H)
    scalar = np.sum(W * (W / (2 * np.diag(h_inv))[:, None] + H @ W), axis=1)
    got = SALIENCIES["tyr"](f32(W), f32(W), f32(h_inv), f32(H), 1)
    np.testing.assert_allclose(np.asarray(got), scalar, rtol=1e-4)


def test_obs_remove_equals_block_formula_and_rank_one_steps():
    X, W = layer(7)
    H = X.T @ X + 0.01 * np.mean(np.diag(X.T @ X)) * np.eye(D_IN)
    h_inv = np.linalg.inv(H)
    P = [1, 5, 6, 7, 12]
    W_blk, h_blk = np_block_remove(W.copy(), h_inv.copy(), P)
    W_r1, h_r1 = np_rank1_remove(W, h_inv, P)
    np.testing.assert_allclose(W_r1, W_blk, atol=1e-9)
    np.testing.assert_allclose(h_r1, h_blk, atol=1e-12)

    mask = np.isin(np.arange(D_IN), P)
    W_j, h_j = obs_remove(f32(W), f32(h_inv), jnp.asarray(mask), max_remove=8)
    np.testing.assert_allclose(np.asarray(W_j), W_blk, atol=2e-4 * np.abs(W_blk).max())
    h_expect = h_blk + np.diag(mask.astype(float))  # the module invariant: unit diagonal
    np.testing.assert_allclose(np.asarray(h_j), h_expect, atol=2e-4 * np.abs(h_expect).max())

    # progressive: two rounds equal one round on the union; the state is the LS optimum.
    first = np.isin(np.arange(D_IN), P[:2])
    W_a, h_a = obs_remove(f32(W), f32(h_inv), jnp.asarray(first), max_remove=8)
    W_b, h_b = obs_remove(W_a, h_a, jnp.asarray(mask & ~first), max_remove=8)
    np.testing.assert_allclose(np.asarray(W_b), W_blk, atol=2e-4 * np.abs(W_blk).max())
    K = ~mask
    np.testing.assert_allclose(
        np.asarray(h_b)[np.ix_(K, K)], np.linalg.inv(H[np.ix_(K, K)]), atol=1e-6
    )
    W_ls = np.linalg.solve(H[np.ix_(K, K)], (H @ W)[K])
    np.testing.assert_allclose(np.asarray(W_b)[K], W_ls, atol=2e-4 * np.abs(W_ls).max())


@pytest.mark.parametrize(
    "g, rounds, name",
    [(4, 1, "tyr"), (4, 2, "tyr"), (1, 3, "tyr"), (1, 4, "obs"), (1, 3, "magnitude")],
)
def test_prune_groups_matches_numpy_transcription(g, rounds, name):
    X, W = layer(8, d_in=12)
    H = X.T @ X
    n_groups = 12 // g
    for n_remove in range(n_groups + 1):
        W_new, keep = prune_groups(f32(W), f32(H), g, n_remove, rounds=rounds, saliency=name)
        W_ref, keep_ref = np_prune(W, H, g, n_remove, rounds, name)
        np.testing.assert_array_equal(np.asarray(keep), keep_ref)
        np.testing.assert_allclose(np.asarray(W_new), W_ref, atol=1e-3 * np.abs(W).max())


@pytest.mark.parametrize("g, rounds", [(4, 1), (1, 4)])
def test_prune_levels_vmap_equals_loop(g, rounds):
    X, W = layer(9)
    H = f32(X.T @ X)
    n_groups = D_IN // g
    levels = np.array([0, 1, n_groups // 2, n_groups - 1, n_groups], np.int32)
    W_lv, keep_lv = prune_levels(f32(W), H, g, jnp.asarray(levels), rounds)
    assert W_lv.shape == (len(levels), D_IN, D_OUT) and keep_lv.shape == (len(levels), n_groups)
    for e, n in enumerate(levels):
        W_e, keep_e = prune_groups(f32(W), H, g, int(n), rounds=rounds)
        np.testing.assert_array_equal(np.asarray(keep_lv[e]), np.asarray(keep_e))
        np.testing.assert_allclose(np.asarray(W_lv[e]), np.asarray(W_e), rtol=1e-5, atol=1e-5)


def test_keep_counts_and_removed_rows_are_exactly_zero():
    X, W = layer(10)
    H = f32(X.T @ X)
    for g, rounds in ((4, 1), (2, 3), (1, 16)):
        n_groups = D_IN // g
        levels = jnp.arange(n_groups + 1, dtype=jnp.int32)
        W_lv, keep_lv = prune_levels(f32(W), H, g, levels, rounds)
        np.testing.assert_array_equal(np.asarray(keep_lv.sum(1)), n_groups - np.asarray(levels))
        rows = np.repeat(np.asarray(keep_lv), g, axis=1)
        assert np.all(np.asarray(W_lv)[~rows] == 0.0)
        assert np.all(np.abs(np.asarray(W_lv)[rows]).sum(-1) > 0)
    W_dense_level, _ = prune_groups(f32(W), H, 4, 0, rounds=1)
    np.testing.assert_allclose(np.asarray(W_dense_level), W, atol=1e-4 * np.abs(W).max())
    # traced count under jit gives the same result as a concrete one
    jitted = jax.jit(lambda n: prune_groups(f32(W), H, 4, n, rounds=1))
    for n in range(HEADS + 1):
        concrete = prune_groups(f32(W), H, 4, n, rounds=1)[1]
        np.testing.assert_array_equal(np.asarray(jitted(jnp.int32(n))[1]), np.asarray(concrete))


def test_dead_inputs_are_zeroed_and_removed_first():
    X, W = layer(11)
    X[:, 4:8] = 0.0  # head 1 never fires
    X[:, 13] = 0.0  # one dead channel inside head 3
    H = f32(X.T @ X)
    W_new, keep = prune_groups(f32(W), H, HEAD_DIM, 1, rounds=1)
    assert not bool(keep[1]) and int(keep.sum()) == HEADS - 1
    assert np.all(np.asarray(W_new)[13] == 0.0) and np.all(np.isfinite(np.asarray(W_new)))
    W_all, keep_all = prune_groups(f32(W), jnp.zeros((D_IN, D_IN)), HEAD_DIM, 2, rounds=1)
    assert int(keep_all.sum()) == 2 and np.all(np.asarray(W_all) == 0.0)


def test_registered_saliency_is_usable_by_name():
    @register_saliency("test_reverse_magnitude")
    def reverse(W, W_dense, h_inv, H, group_size):
        return -SALIENCIES["magnitude"](W, W_dense, h_inv, H, group_size)

    try:
        X, W = layer(12)
        _, keep = prune_groups(
            f32(W), f32(X.T @ X), HEAD_DIM, 1, rounds=1, saliency="test_reverse_magnitude"
        )
        norms = np.linalg.norm(W.reshape(HEADS, -1), axis=1)
        assert not bool(keep[np.argmax(norms)])
    finally:
        SALIENCIES.unregister("test_reverse_magnitude")


def test_user_errors_name_the_input_and_the_fix():
    X, W = layer(13)
    H = f32(X.T @ X)
    with pytest.raises(TyrjaxError, match=r"unknown saliency 'nope'.*magnitude.*obs.*tyr"):
        prune_groups(f32(W), H, HEAD_DIM, 1, rounds=1, saliency="nope")
    with pytest.raises(TyrjaxError, match="'nope'"):
        get_saliency("nope")
    with pytest.raises(TyrjaxError, match="group_size"):
        prune_groups(f32(W), H, 5, 1, rounds=1)
    with pytest.raises(TyrjaxError, match=r"n_remove.*\[0, 4\]"):
        prune_groups(f32(W), H, HEAD_DIM, 5, rounds=1)
    with pytest.raises(TyrjaxError, match=r"n_remove.*\[0, 4\]"):
        prune_levels(f32(W), H, HEAD_DIM, jnp.array([0, -1]), 1)
    with pytest.raises(TyrjaxError, match="rounds"):
        prune_groups(f32(W), H, HEAD_DIM, 1, rounds=0)
    with pytest.raises(TyrjaxError, match="H must be"):
        prune_groups(f32(W), H[:8, :8], HEAD_DIM, 1, rounds=1)
