"""KV-cached decoding equals decoding by full forwards, and transformers' greedy generate."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from hf_reference import tiny_hf_model
from tyrjax.checkpoints.hf import load_hf_params
from tyrjax.model.config import ModelConfig
from tyrjax.model.generate import generate, sample_next
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params


# one compiled program per length, instead of every operation compiled alone for each length
_forward = jax.jit(forward, static_argnums=1)


def greedy_by_full_forward(params, cfg, prompt, n, head_mask=None, ffn_mask=None):
    seq = np.asarray(prompt)
    for _ in range(n):
        logits = _forward(params, cfg, seq, head_mask, ffn_mask)
        seq = np.concatenate([seq, np.asarray(logits[:, -1].argmax(-1))[:, None]], axis=1)
    return seq


def test_greedy_matches_transformers(tmp_path):
    model = tiny_hf_model(tmp_path, "llama")
    cfg = ModelConfig.from_json_file(tmp_path / "config.json")
    params = load_hf_params(tmp_path, cfg)
    prompt = np.array([[5, 17, 33, 2, 90], [1, 2, 3, 4, 5]])
    ours = generate(params, cfg, prompt, 12)
    with torch.no_grad():
        ref = model.generate(torch.as_tensor(prompt), max_new_tokens=12, do_sample=False,
                             attention_mask=torch.ones_like(torch.as_tensor(prompt)), pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_compact_pruned_model_generates_like_masked():
    cfg = ModelConfig(vocab_size=50, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      intermediate_size=24)
    params = init_random_params(cfg, 7, scale=0.3)
    rng = np.random.default_rng(0)
    head = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], bool)
    ffn = rng.random((2, 24)) < 0.5
    prompt = rng.integers(0, 50, (2, 6))
    ref = greedy_by_full_forward(params, cfg, prompt, 10, jnp.asarray(head, jnp.float32), jnp.asarray(ffn, jnp.float32))
    cparams, ccfg = compact_from_masked(params, cfg, head, ffn)
    np.testing.assert_array_equal(generate(cparams, ccfg, prompt, 10), ref)


def test_sampling_respects_top_k_and_is_seeded():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample_next(jax.random.PRNGKey(s), logits, 1.0, 2, 1.0)[0]) for s in range(50)}
    assert draws == {0, 1}
    draws_p = {int(sample_next(jax.random.PRNGKey(s), logits, 1.0, 0, 0.7)[0]) for s in range(50)}
    assert draws_p == {0, 1}
    a = sample_next(jax.random.PRNGKey(3), logits, 1.0, 0, 1.0)
    assert int(a[0]) == int(sample_next(jax.random.PRNGKey(3), logits, 1.0, 0, 1.0)[0])
