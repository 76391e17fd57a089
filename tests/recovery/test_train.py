import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recovery_fixtures import CFG, SMALL, compact_params, dense_params, sparse_params, windows

from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import device_bytes
from tyrjax.model.decoder import forward
from tyrjax.recovery.modules import Decoder, weight_masks, zero_count
from tyrjax.recovery.train import (FinetuneConfig, make_train_step, optimizer, restore_checkpoint, split_model,
                                   step_chunks, train)
from tyrjax.tyr.fitness import teacher_topk

BUDGET = 16 * 10**9


def teacher_of(params, cfg=CFG, k=8):
    return lambda batch: teacher_topk(params, cfg, batch, k)


def _nm_holds(params, n=2, m=4) -> bool:
    layers = params["layers"]
    for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        w = np.asarray(layers[name])  # (L, d_in, d_out)
        groups = (w != 0).reshape(w.shape[0], w.shape[1] // m, m, w.shape[2]).sum(axis=2)
        if not (groups <= n).all():
            return False
    return True


def test_one_compiled_step_serves_every_step():
    params = dense_params()
    config = dataclasses.replace(SMALL, loss="kd+lm")
    model = Decoder(params, CFG, lora=config.lora())
    graphdef, trained, rest = split_model(model, config.method)
    tx = optimizer(config)
    opt_state = tx.init(trained)
    chunks = step_chunks(CFG, config, device_bytes(rest), device_bytes(trained), None, BUDGET)
    step = make_train_step(graphdef, tx, config.loss, chunks)
    teacher = teacher_of(dense_params(1))
    trained = jax.tree.map(jnp.copy, trained)
    losses = []
    for i in range(4):
        batch = windows(4, seed=i)
        top = teacher(batch)
        trained, opt_state, loss = step(trained, rest, opt_state, jnp.asarray(batch), jnp.asarray(top.idx),
                                        jnp.asarray(top.logp))
        losses.append(float(loss))
    assert step._cache_size() == 1
    assert all(np.isfinite(losses)) and len(set(losses)) == 4


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_sparse_models_keep_their_zeros_exactly(pattern, method):
    params = sparse_params(dense_params(), pattern)
    zeros = zero_count(params)
    config = dataclasses.replace(SMALL, method=method, lr=3e-2)  # a large step, so every weight would move
    result = train(params, CFG, windows(SMALL.windows), config, masks=weight_masks(params),
                   teacher=teacher_of(dense_params()), budget_bytes=BUDGET, progress=False)
    assert zero_count(result.params) == zeros
    for name in ("wq", "w_down"):
        np.testing.assert_array_equal(np.asarray(result.params["layers"][name]) == 0,
                                      np.asarray(params["layers"][name]) == 0)
        moved = np.asarray(result.params["layers"][name]) != np.asarray(params["layers"][name])
        assert moved.mean() > 0.4  # the kept weights trained
    if pattern == "2:4":
        assert _nm_holds(params) and _nm_holds(result.params)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_compact_models_stay_compact(method):
    params, cfg = compact_params(dense_params())
    config = dataclasses.replace(SMALL, method=method)
    result = train(params, cfg, windows(SMALL.windows), config, teacher=teacher_of(dense_params()), budget_bytes=BUDGET,
                   progress=False)
    assert jax.tree.map(jnp.shape, result.params) == jax.tree.map(jnp.shape, params)
    tokens = jnp.asarray(windows(2, seed=9))
    assert float(jnp.abs(forward(result.params, cfg, tokens) - forward(params, cfg, tokens)).max()) > 0
    assert result.steps == 4 and result.tokens == 4 * 4 * 16


def test_training_lowers_the_kd_loss_towards_the_teacher():
    student = sparse_params(dense_params(), "0.5")
    config = dataclasses.replace(SMALL, tokens=16 * 4 * 16, lr=1e-2)
    data = np.tile(windows(4), (16, 1))  # the same batch every step
    result = train(student, CFG, data, config, masks=weight_masks(student), teacher=teacher_of(dense_params()),
                   budget_bytes=BUDGET, progress=False)
    assert result.losses[-1] < 0.6 * result.losses[0]  # the floor is the teacher's own mass outside its top-8


def test_checkpoint_restores_the_state_and_losses(tmp_path):
    params = dense_params()
    config = dataclasses.replace(SMALL, checkpoint_every=3)
    data = windows(config.windows)
    result = train(params, CFG, data, config, teacher=teacher_of(params), checkpoint_dir=tmp_path, budget_bytes=BUDGET,
                   progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["4"]
    again = train(params, CFG, data, config, teacher=teacher_of(params), checkpoint_dir=tmp_path, budget_bytes=BUDGET,
                  progress=False)  # everything was done: restores the last step and trains nothing
    assert again.resumed_at == 4
    np.testing.assert_array_equal(again.losses, result.losses)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(a, b)
    assert restore_checkpoint(tmp_path / "none", (), 4) is None


def test_kd_loss_without_a_teacher_and_bad_settings_are_refused():
    params = dense_params()
    with pytest.raises(TyrjaxError, match="--loss kd distils from a teacher"):
        train(params, CFG, windows(SMALL.windows), SMALL, budget_bytes=BUDGET, progress=False)
    for bad, match in [(dict(method="qlora"), "--method qlora"), (dict(loss="mse"), "--loss mse"),
                       (dict(targets=("q", "x")), "x names no layer"), (dict(tokens=0), "--tokens 0"),
                       (dict(warmup=1.5), "--warmup 1.5")]:
        with pytest.raises(TyrjaxError, match=match):
            FinetuneConfig(**bad).check()


def test_a_step_beyond_the_memory_budget_is_refused_naming_the_flags():
    config = dataclasses.replace(SMALL, loss="lm")
    with pytest.raises(TyrjaxError, match="lower --batch-size or --seq-len, or pass --device-memory"):
        step_chunks(CFG, config, 10**6, 10**5, None, 10**6)
