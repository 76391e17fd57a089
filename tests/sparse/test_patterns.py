"""Sparsity patterns, score-to-mask rules, magnitude and Wanda pruning."""

import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.sparse import (
    NByM,
    Unstructured,
    magnitude_prune,
    nm_mask_from_scores,
    parse_pattern,
    unstructured_mask_from_scores,
    unstructured_mask_per_output,
    wanda_prune,
)


def _weights(d_in: int = 64, d_out: int = 24, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(d_in, d_out)), jnp.float32)


def _assert_nm(mask, n: int, m: int) -> None:
    mask = np.asarray(mask)
    d_in, d_out = mask.shape
    per_group = mask.reshape(d_in // m, m, d_out).sum(axis=1)
    assert (per_group == n).all(), per_group


@pytest.mark.parametrize(
    "text, expected, sparsity",
    [("0.5", Unstructured(0.5), 0.5), ("0.7", Unstructured(0.7), 0.7),
     (" 0.25 ", Unstructured(0.25), 0.25), ("2:4", NByM(2, 4), 0.5), ("4:8", NByM(4, 8), 0.5),
     ("1:4", NByM(1, 4), 0.75)],
)
def test_parse_valid_patterns(text, expected, sparsity):
    pattern = parse_pattern(text)
    assert pattern == expected and type(pattern) is type(expected)
    assert pattern.sparsity == pytest.approx(sparsity)


@pytest.mark.parametrize(
    "text", ["5:4", "0:4", "4:4", "2:0", "1.2", "0", "1", "-0.5", "abc", "2:4:8", "a:b", "nan", ""]
)
def test_parse_invalid_patterns_name_the_input(text):
    with pytest.raises(TyrjaxError) as info:
        parse_pattern(text)
    message = str(info.value)
    assert repr(text) in message
    assert "2:4" in message and "0.5" in message  # names the accepted forms


@pytest.mark.parametrize("bad", [NByM(5, 4), NByM(0, 4), Unstructured(1.5), Unstructured(0.0)])
def test_invalid_pattern_objects_rejected_by_pruners(bad):
    with pytest.raises(TyrjaxError, match="not valid"):
        magnitude_prune(_weights(), bad)


def test_masks_keep_the_highest_scores():
    scores = jnp.array([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]])
    nm = np.asarray(nm_mask_from_scores(scores, 1, 2))
    np.testing.assert_array_equal(nm, [[True, False], [False, True], [True, False], [False, True]])
    per_out = np.asarray(unstructured_mask_per_output(scores, 0.5))
    np.testing.assert_array_equal(
        per_out, [[True, False], [True, False], [False, True], [False, True]]
    )
    glob = np.asarray(unstructured_mask_from_scores(scores, 0.25))  # removes round(0.25 * 8) = 2
    np.testing.assert_array_equal(glob, [[True, False], [True, True], [True, True], [False, True]])


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_ties_break_like_a_stable_sort(n, m):
    scores = np.random.default_rng(0).integers(0, 3, size=(64, 16)).astype(np.float32)
    groups = scores.reshape(-1, m, 16)
    ranks = np.argsort(np.argsort(groups, axis=1, kind="stable"), axis=1, kind="stable")
    expected = (ranks >= m - n).reshape(64, 16)
    got = np.asarray(nm_mask_from_scores(jnp.asarray(scores), n, m))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.77])
def test_unstructured_counts_are_exact(sparsity):
    scores = _weights(40, 24)
    kept = int(unstructured_mask_from_scores(scores, sparsity).sum())
    assert kept == 40 * 24 - round(sparsity * 40 * 24)
    per_out = np.asarray(unstructured_mask_per_output(scores, sparsity)).sum(axis=0)
    assert (per_out == 40 - round(sparsity * 40)).all()


@pytest.mark.parametrize("pattern", [NByM(2, 4), NByM(4, 8), NByM(1, 4)])
def test_magnitude_and_wanda_nm_groups_are_exact(pattern):
    W = _weights()
    x_norm = jnp.asarray(np.random.default_rng(1).uniform(0.1, 10.0, size=64), jnp.float32)
    for W_pruned, mask in (magnitude_prune(W, pattern), wanda_prune(W, x_norm, pattern)):
        _assert_nm(mask, pattern.n, pattern.m)
        np.testing.assert_array_equal(np.asarray(W_pruned), np.where(mask, W, 0.0))


def test_magnitude_unstructured_is_global_and_exact():
    W = _weights()
    W_pruned, mask = magnitude_prune(W, "0.6")
    assert int(mask.sum()) == 64 * 24 - round(0.6 * 64 * 24)
    assert float(jnp.abs(W)[mask].min()) >= float(jnp.abs(W)[~mask].max())
    assert (np.asarray(W_pruned)[~np.asarray(mask)] == 0).all()


def test_wanda_unstructured_is_exact_per_output_and_uses_input_norms():
    W = _weights()
    x_norm = jnp.ones(64).at[:8].set(1e4)  # loud inputs: their weights must survive
    _, mask = wanda_prune(W, x_norm, Unstructured(0.5))
    assert (np.asarray(mask).sum(axis=0) == 32).all()
    assert bool(mask[:8].all())
    scores = jnp.abs(W) * x_norm[:, None]
    for j in range(W.shape[1]):
        assert float(scores[:, j][mask[:, j]].min()) >= float(scores[:, j][~mask[:, j]].max())


def test_wrong_shapes_raise_tyrjax_error():
    with pytest.raises(TyrjaxError, match="x_norm"):
        wanda_prune(_weights(), jnp.ones(63), "0.5")
    with pytest.raises(TyrjaxError, match="multiple of M=8"):
        magnitude_prune(_weights(60, 8), "4:8")
    with pytest.raises(TyrjaxError, match="2-D"):
        magnitude_prune(jnp.ones(8), "0.5")


@pytest.mark.parametrize("seed, n_prune", [(0, 0), (1, 1), (2, 37), (3, 200), (4, 383), (5, 384)])
def test_prune_lowest_matches_a_stable_sort(seed, n_prune):
    """Exact counts and stable tie order, on scores full of ties, signed zeros and negatives."""
    from tyrjax.sparse.patterns import mask_prune_lowest

    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 4, size=(24, 16)).astype(np.float32) * rng.choice([1.0, 0.5], size=(24, 16))
    scores[rng.random((24, 16)) < 0.1] = -0.0
    order = np.argsort(np.where(scores == 0, 0.0, scores).ravel(), kind="stable")
    expected = np.ones(scores.size, bool)
    expected[order[:n_prune]] = False
    got = np.asarray(mask_prune_lowest(jnp.asarray(scores), n_prune))
    np.testing.assert_array_equal(got.ravel(), expected)


def test_per_output_masks_match_a_stable_sort_with_ties():
    scores = np.random.default_rng(0).integers(0, 4, size=(40, 12)).astype(np.float32)
    ranks = np.argsort(np.argsort(scores, axis=0, kind="stable"), axis=0, kind="stable")
    got = np.asarray(unstructured_mask_per_output(jnp.asarray(scores), 0.3))
    np.testing.assert_array_equal(got, ranks >= round(0.3 * 40))
