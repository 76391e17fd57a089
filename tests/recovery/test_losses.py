import jax
import jax.numpy as jnp
import numpy as np
from recovery_fixtures import CFG, dense_params, sparse_params, windows

from tyrjax.model.decoder import last_hidden, logits_from_hidden
from tyrjax.recovery.losses import kd_chunks, kd_loss, lm_loss
from tyrjax.tyr.fitness import FitnessChunks, teacher_topk


def _head(params):
    return {k: v for k, v in params.items() if k != "layers"}


def test_kd_loss_is_the_kl_against_the_students_whole_vocabulary_distribution():
    teacher, student = dense_params(), sparse_params(dense_params(), "0.5")
    tokens = windows(2)
    top = teacher_topk(teacher, CFG, tokens, 8)
    h = last_hidden(student, CFG, jnp.asarray(tokens))
    assert not kd_chunks(CFG, 2, 16, 8, 10**9, 0).gather  # the normaliser is always computed
    chunks = FitnessChunks(tokens=5, vocab=40)  # several token and vocabulary chunks, neither dividing evenly
    s_logp = jax.nn.log_softmax(logits_from_hidden(student, CFG, h), axis=-1)
    picked = np.take_along_axis(np.asarray(s_logp), top.idx, axis=-1)
    expected = np.mean(np.sum(np.exp(top.logp) * (top.logp - picked), axis=-1))
    got = kd_loss(_head(student), CFG, h, jnp.asarray(top.idx), jnp.asarray(top.logp), chunks)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the teacher's mass outside its top-k counts against it: it is not zero for the teacher itself
    h_t = last_hidden(teacher, CFG, jnp.asarray(tokens))
    own = kd_loss(_head(teacher), CFG, h_t, jnp.asarray(top.idx), jnp.asarray(top.logp), chunks)
    assert 0 < float(own) < float(got)


def test_lm_loss_is_the_mean_next_token_nll():
    params = dense_params()
    tokens = jnp.asarray(windows(2))
    h = last_hidden(params, CFG, tokens)
    logp = np.asarray(jax.nn.log_softmax(logits_from_hidden(params, CFG, h), axis=-1))
    nll = -np.mean([logp[b, t, int(tokens[b, t + 1])] for b in range(2) for t in range(15)])
    np.testing.assert_allclose(lm_loss(_head(params), CFG, h, tokens), nll, rtol=1e-5)
