import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from recovery_fixtures import CFG, compact_params, dense_params, sparse_params, windows

from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import forward
from tyrjax.recovery.modules import (Decoder, LoRASpec, Mask, check_rank, check_targets, weight_masks, zero_count)


def test_forward_equals_pure_forward_dense_stacked():
    params = dense_params()
    tokens = jnp.asarray(windows(2))
    np.testing.assert_allclose(Decoder(params, CFG)(tokens), forward(params, CFG, tokens), atol=1e-5, rtol=1e-5)


def test_forward_equals_pure_forward_compact_per_layer_widths():
    params, cfg = compact_params(dense_params())
    tokens = jnp.asarray(windows(2))
    model = Decoder(params, cfg)
    assert [b.projections["wq"].kernel.shape for b in model.blocks] == [(32, 24), (32, 16)]
    np.testing.assert_allclose(model(tokens), forward(params, cfg, tokens), atol=1e-5, rtol=1e-5)


def test_forward_with_lora_at_zero_init_equals_pure_forward():
    params, cfg = compact_params(dense_params())
    tokens = jnp.asarray(windows(2))
    model = Decoder(params, cfg, lora=LoRASpec(rank=4))
    a = model.blocks[0].projections["wq"].lora_a[...]
    assert a.shape == (32, 4) and float(jnp.abs(a).max()) > 0  # A drawn, B zero
    np.testing.assert_allclose(model(tokens), forward(params, cfg, tokens), atol=1e-5, rtol=1e-5)


def _perturb_lora(model: Decoder, seed: int = 1) -> None:
    """Nonzero B factors, as after training."""
    key = jax.random.PRNGKey(seed)
    for block in model.blocks:
        for proj in block.projections.values():
            if proj.lora_b is not None:
                key, sub = jax.random.split(key)
                proj.lora_b[...] = 0.3 * jax.random.normal(sub, proj.lora_b.shape)


@pytest.mark.parametrize("kind", ["dense", "compact", "2:4"])
def test_lora_merge_equals_lora_forward(kind):
    params, cfg = dense_params(), CFG
    if kind == "compact":
        params, cfg = compact_params(params)
    elif kind == "2:4":
        params = sparse_params(params, "2:4")
    masks = weight_masks(params)
    model = Decoder(params, cfg, masks, LoRASpec(rank=4, targets=("q", "v", "down")))
    _perturb_lora(model)
    tokens = jnp.asarray(windows(2))
    merged = model.merged_params()
    lora_logits = model(tokens)
    assert float(jnp.abs(lora_logits - forward(params, cfg, tokens)).max()) > 1e-2  # the adapters do something
    np.testing.assert_allclose(forward(merged, cfg, tokens), lora_logits, atol=1e-5, rtol=1e-5)
    assert jax.tree.map(jnp.shape, merged) == jax.tree.map(jnp.shape, params)  # same form, same widths
    assert zero_count(merged) == zero_count(params)


def test_weight_masks_are_the_nonzeros_of_sparse_weights_only():
    params = dense_params()
    assert weight_masks(params) == [{}, {}]
    few = dict(params, layers=dict(params["layers"], wq=params["layers"]["wq"].at[:, 0, :3].set(0)))
    assert weight_masks(few) == [{}, {}]  # 3 zeros of 1,024 weights: a quantised weight, not a pruned one
    sparse = sparse_params(params, "0.5")
    masks = weight_masks(sparse)
    assert set(masks[0]) == {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}
    np.testing.assert_array_equal(masks[1]["w_up"], np.asarray(sparse["layers"]["w_up"][1]) != 0)
    model = Decoder(sparse, CFG, masks)
    assert len(nnx.state(model, Mask)["blocks"][0]["projections"]) == 7


def test_rank_larger_than_a_target_width_is_refused_naming_layer_and_width():
    params, cfg = compact_params(dense_params())
    check_rank(params, cfg, LoRASpec(rank=8))
    with pytest.raises(TyrjaxError, match=r"--rank 20 exceeds the width 16 of layer 1's q projection"):
        check_rank(params, cfg, LoRASpec(rank=20, targets=("q",)))
    with pytest.raises(TyrjaxError, match="--rank 0"):
        check_rank(params, cfg, LoRASpec(rank=0))


def test_targets_naming_no_layer_are_refused():
    check_targets(("q", "down"))
    with pytest.raises(TyrjaxError, match="--targets q,attn: attn names no layer"):
        check_targets(("q", "attn"))
    with pytest.raises(TyrjaxError, match="no target"):
        check_targets(())
