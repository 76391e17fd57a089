"""SDS reconstruction: Gram-form loss, re-dense and sparse weight adjustment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.sparse import NByM, magnitude_prune
from tyrjax.sds.capture import add_sums, group_sums, layer_objective, objective_grams
from tyrjax.sds.reconstruct import (
    make_optimizer,
    reconstruction_loss,
    reconstruction_value_and_grad,
    redense,
    sparse_adjust,
)


def _data(d_in=64, d_out=32, n_tokens=512, seed=0):
    """Dense-model inputs X_d, pruned-model inputs X_s = X_d + drift, LLM-scale dense weights."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in)
    X_d = rng.normal(size=(n_tokens, d_in)) @ A
    X_s = X_d + 0.1 * rng.normal(size=X_d.shape)
    W_d = 0.02 * rng.normal(size=(d_in, d_out))
    return tuple(jnp.asarray(a, jnp.float32) for a in (X_s, X_d, W_d))


def _token_loss(W, W_d, X_s, X_d):
    return jnp.sum((X_d @ W_d - X_s @ W) ** 2) / X_s.shape[0]


@pytest.mark.parametrize("dense_input", [False, True])
def test_gram_loss_and_gradient_equal_token_form(dense_input):
    X_s, X_d, W_d = _data(d_in=16, d_out=8, n_tokens=40)
    W = W_d + 0.01 * jax.random.normal(jax.random.key(0), W_d.shape)
    if dense_input:
        X_d, grams = X_s, objective_grams(X_s, None)[1]
    else:
        grams = objective_grams(X_s, X_d)[1]
    expected = _token_loss(W, W_d, X_s, X_d)
    expected_grad = jax.grad(_token_loss)(W, W_d, X_s, X_d)
    np.testing.assert_allclose(reconstruction_loss(W, W_d, grams), expected, rtol=1e-4)
    np.testing.assert_allclose(
        reconstruction_loss(W, W_d, grams._replace(n_tokens=1), n_tokens=40), expected, rtol=1e-4
    )
    loss, grad = reconstruction_value_and_grad(W, W_d, grams)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    atol = 1e-6 * float(jnp.abs(expected_grad).max())
    for g in (grad, jax.grad(reconstruction_loss)(W, W_d, grams)):
        np.testing.assert_allclose(g, expected_grad, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("inputs", ["pruned", "dense"])
def test_the_objective_summed_over_chunks_equals_the_token_form_and_the_grams(inputs):
    """What the pipeline fits on: a group's sums over chunks of tokens give each layer's loss,
    gradient and re-dense result as the token form and the three Grams do, without X_sᵀX_d."""
    X_s, X_d, W_d = _data(d_in=16, d_out=8, n_tokens=48)
    W_2 = W_d[:, :4] * 3.0  # a second layer reading the same inputs
    W = W_d + 0.01 * jax.random.normal(jax.random.key(1), W_d.shape)
    weights = {"a": W_d, "b": W_2}
    sums = None
    for part in range(3):  # three chunks of 16 tokens, as (windows, T, d_in)
        rows = slice(16 * part, 16 * (part + 1))
        sums = add_sums(sums, group_sums(X_s[rows].reshape(2, 8, 16), X_d[rows].reshape(2, 8, 16), weights,
                                         inputs == "dense"))
    target, fit = layer_objective(sums, "a", W_d)
    grams = objective_grams(X_s, X_d)[1]
    np.testing.assert_allclose(reconstruction_loss(W, W_d, target), _token_loss(W, W_d, X_s, X_d), rtol=1e-4)
    np.testing.assert_allclose(reconstruction_value_and_grad(W, W_d, target)[1],
                               reconstruction_value_and_grad(W, W_d, grams)[1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(reconstruction_loss(W_2 * 0.5, W_2, layer_objective(sums, "b", W_2)[0]),
                               _token_loss(W_2 * 0.5, W_2, X_s, X_d), rtol=1e-4)
    fit_grams = grams if inputs == "pruned" else objective_grams(X_d, None)[1]
    np.testing.assert_allclose(reconstruction_loss(W, W_d, fit), reconstruction_loss(W, W_d, fit_grams), rtol=1e-4)
    W_pruned, _ = magnitude_prune(W_d, "0.5")
    got, want = (redense(W_pruned, W_d, g, l1=0.0, l2=0.0, steps=20)[0] for g in (fit, fit_grams))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_one_shot_objective_is_the_pruned_stream_alone():
    X_s, _, W_d = _data(d_in=16, d_out=8, n_tokens=40)
    target, fit = layer_objective(group_sums(X_s, None, {"a": W_d}, False), "a", W_d)
    assert fit is target and float(target.const) == 0.0 and not np.any(np.asarray(target.b))
    W = W_d * 0.5
    np.testing.assert_allclose(reconstruction_loss(W, W_d, target), _token_loss(W, W_d, X_s, X_s), rtol=1e-4)


def test_redense_reduces_loss_toward_the_optimum():
    X_s, X_d, W_d = _data()
    grams = objective_grams(X_s, X_d)[1]
    W_pruned, _ = magnitude_prune(W_d, "0.5")
    W, losses = redense(W_pruned, W_d, grams, l1=0.0, l2=0.0)
    assert losses.shape == (201,)
    np.testing.assert_allclose(losses[0], reconstruction_loss(W_pruned, W_d, grams), rtol=1e-5)
    np.testing.assert_allclose(losses[-1], reconstruction_loss(W, W_d, grams), rtol=1e-5)
    optimum = reconstruction_loss(jnp.linalg.solve(grams.h_ss, grams.h_sd @ W_d), W_d, grams)
    assert float(losses[-1]) < 0.2 * float(losses[0])
    assert float(losses[-1]) < 1.1 * float(optimum)


def test_l1_makes_weights_pruning_friendly():
    X_s, X_d, W_d = _data()
    grams = objective_grams(X_s, X_d)[1]
    W_pruned, _ = magnitude_prune(W_d, "0.5")
    W_plain, _ = redense(W_pruned, W_d, grams, l1=0.0, l2=0.0)
    W_l1, losses = redense(W_pruned, W_d, grams, l1=3e-3, l2=1e-3)

    def near_zero(W):
        return int(jnp.sum(jnp.abs(W) < 2e-3))

    assert near_zero(W_l1) > 2 * near_zero(W_plain)
    assert float(losses[-1]) < float(losses[0])

    def repruned(W):  # re-pruning the regularised weights must lose less than the plain ones
        return float(reconstruction_loss(magnitude_prune(W, "0.5")[0], W_d, grams))

    assert repruned(W_l1) < repruned(W_plain)


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_sparse_adjust_respects_pattern_and_beats_repruning(pattern):
    X_s, X_d, W_d = _data()
    grams = objective_grams(X_s, X_d)[1]
    W_re, _ = redense(magnitude_prune(W_d, pattern)[0], W_d, grams, l1=1e-3, l2=0.0)
    W, mask, losses = sparse_adjust(W_re, W_d, grams, pattern)
    mask = np.asarray(mask)
    if pattern == "2:4":
        assert (mask.reshape(16, 4, 32).sum(axis=1) == 2).all()
    else:
        assert int(mask.sum()) == 64 * 32 // 2
    assert (np.asarray(W)[~mask] == 0).all()
    plain = float(reconstruction_loss(magnitude_prune(W_re, pattern)[0], W_d, grams))
    final = float(reconstruction_loss(W, W_d, grams))
    np.testing.assert_allclose(losses[0], plain, rtol=1e-5)
    np.testing.assert_allclose(final, float(losses.min()), rtol=1e-5)
    assert final < 0.9 * plain


def test_optimizers_by_name_or_object_and_errors():
    X_s, X_d, W_d = _data(d_in=16, d_out=8, n_tokens=64)
    grams = objective_grams(X_s, X_d)[1]
    W0 = magnitude_prune(W_d, NByM(2, 4))[0]
    for opt in ("adamw", "sgd", optax.adam(1e-3)):
        _, losses = redense(W0, W_d, grams, l1=0.0, l2=0.0, steps=50, optimizer=opt,
                            learning_rate=0.05 if opt == "sgd" else 1e-3)
        assert float(losses[-1]) < float(losses[0]), opt
    with pytest.raises(TyrjaxError, match="'rmsprop'"):
        make_optimizer("rmsprop", 1e-3, 10)
    with pytest.raises(TyrjaxError, match="steps=0"):
        redense(W0, W_d, grams, l1=0.0, l2=0.0, steps=0)
    with pytest.raises(TyrjaxError, match="W_dense"):
        redense(W0, W_d[:, :4], grams, l1=0.0, l2=0.0)
    with pytest.raises(TyrjaxError, match="a_d"):
        objective_grams(X_s, X_d[:10])
