"""Structured baselines (Wanda-sp, FLAP, magnitude) against their formulas, and FLAP's bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.structured import (
    flap_bias,
    flap_scores,
    flap_standardise,
    keep_lowest_removed,
    magnitude_scores,
    wanda_sp_scores,
)

D_IN, D_OUT, G = 12, 6, 3


def data(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, D_IN)) * rng.uniform(0.2, 3.0, D_IN) + rng.normal(0, 2, D_IN)
    W = rng.standard_normal((D_IN, D_OUT))
    return X, W


def per_group(values, g):
    return np.array([values[i : i + g].sum() for i in range(0, len(values), g)])


@pytest.mark.parametrize("g", [1, G])
def test_scores_match_their_formulas(g):
    X, W = data(0)
    x_norm = np.linalg.norm(X, axis=0)
    x_var = X.var(axis=0)
    wanda = [np.mean([abs(W[p, j]) * x_norm[p] for j in range(D_OUT)]) for p in range(D_IN)]
    flap = [x_var[p] * sum(W[p, j] ** 2 for j in range(D_OUT)) for p in range(D_IN)]
    mag = [np.sqrt(np.sum(W[i : i + g] ** 2)) for i in range(0, D_IN, g)]
    np.testing.assert_allclose(
        np.asarray(wanda_sp_scores(jnp.asarray(W), jnp.asarray(x_norm), g)),
        per_group(np.array(wanda), g), rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(flap_scores(jnp.asarray(W), jnp.asarray(x_var), g)),
        per_group(np.array(flap), g), rtol=1e-5,
    )
    np.testing.assert_allclose(np.asarray(magnitude_scores(jnp.asarray(W), g)), mag, rtol=1e-5)


def test_flap_standardise():
    s = jnp.array([3.0, 1.0, 7.0, 5.0])
    z = np.asarray(flap_standardise(s))
    np.testing.assert_allclose(z, (np.array(s) - 4.0) / np.std(np.array(s)), rtol=1e-6)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    np.testing.assert_array_equal(np.asarray(flap_standardise(jnp.full(5, 2.5))), np.zeros(5))


def test_keep_lowest_removed_drops_exactly_the_lowest():
    scores = jnp.array([0.5, -1.0, 2.0, 0.1, 3.0, 0.1])
    np.testing.assert_array_equal(
        np.asarray(keep_lowest_removed(scores, 3)), [True, False, True, False, True, False]
    )
    counts = jnp.arange(7)
    keeps = jax.vmap(lambda n: keep_lowest_removed(scores, n))(counts)  # traced counts
    np.testing.assert_array_equal(np.asarray(keeps.sum(1)), 6 - np.arange(7))
    order = np.argsort(np.asarray(scores), kind="stable")
    for n in range(7):
        np.testing.assert_array_equal(np.flatnonzero(~np.asarray(keeps[n])), np.sort(order[:n]))


@pytest.mark.parametrize("g", [1, G])
def test_flap_bias_restores_the_mean_output(g):
    X, W = data(1)
    keep = np.zeros(D_IN // g, bool)
    keep[::2] = True
    bias = flap_bias(jnp.asarray(W), jnp.asarray(X.mean(0)), jnp.asarray(keep), g)
    W_masked = W * np.repeat(keep, g)[:, None]
    dense_mean = (X @ W).mean(0)
    np.testing.assert_allclose((X @ W_masked).mean(0) + np.asarray(bias), dense_mean, rtol=1e-4)
    assert not np.allclose((X @ W_masked).mean(0), dense_mean)  # the bias was needed
    np.testing.assert_allclose(
        np.asarray(flap_bias(jnp.asarray(W), jnp.asarray(X.mean(0)), jnp.ones(D_IN // g, bool), g)),
        np.zeros(D_OUT),
    )


def test_bad_group_size_is_a_user_error():
    X, W = data(2)
    with pytest.raises(TyrjaxError, match="group_size=5"):
        wanda_sp_scores(jnp.asarray(W), jnp.asarray(np.linalg.norm(X, axis=0)), 5)
    with pytest.raises(TyrjaxError, match="group_size=0"):
        magnitude_scores(jnp.asarray(W), 0)
