"""Streamed checkpoint reading: blocks equal the fully loaded model's, and sharded reads stay per slice."""
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from scale_fixtures import device_env
from tyrjax.model.blocks import layer
from tyrjax.checkpoints.hf import load_hf_params, save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import compact_from_masked, init_random_params
from tyrjax.checkpoints.streaming import BlockSource, load_params

CFG = ModelConfig(vocab_size=40, hidden_size=16, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=4,
                  intermediate_size=24, attention_bias=True, o_bias=True, tie_word_embeddings=False)


def assert_same_tree(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "m"
    save_hf(init_random_params(CFG, 3), CFG, out, max_shard_bytes=3000)
    assert (out / "model.safetensors.index.json").exists()
    return out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_blocks_equal_the_fully_loaded_model(sharded_dir, dtype):
    full = load_hf_params(sharded_dir, CFG, dtype)
    with BlockSource(sharded_dir, dtype=dtype) as source:
        assert source.cfg == CFG
        assert_same_tree(source.global_params(), {k: v for k, v in full.items() if k != "layers"})
        for i, block in enumerate(source.blocks()):
            assert_same_tree(block, layer(full, i))
    streamed = load_params(sharded_dir, CFG, dtype)
    assert_same_tree(streamed["layers"], full["layers"])


def test_one_block_reads_only_that_block(sharded_dir):
    with BlockSource(sharded_dir) as source:
        block = source.block(1)
        assert source.bytes_read == sum(a.size * 4 for a in block.values())


def test_compact_checkpoint_blocks_keep_their_widths(tmp_path):
    dense_cfg = CFG.replace(attention_bias=False, o_bias=False)
    params = init_random_params(dense_cfg, 1)
    head = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]], bool)  # block 0 keeps no head
    ffn = np.random.default_rng(0).random((3, 24)) < 0.5
    ffn[2] = False  # and block 2 no neuron: zero-size tensors
    compact, ccfg = compact_from_masked(params, dense_cfg, head, ffn)
    assert compact["layers"][0]["wq"].shape == (16, 0) and compact["layers"][2]["w_down"].shape == (0, 16)
    save_hf(compact, ccfg, tmp_path / "c")
    with BlockSource(tmp_path / "c") as source:
        assert source.cfg == ccfg
        for i in range(3):
            assert_same_tree(source.block(i), compact["layers"][i])
    streamed = load_params(tmp_path / "c", ccfg)
    for got, want in zip(streamed["layers"], compact["layers"]):
        assert_same_tree(got, want)


def test_bad_requests_name_the_fix(sharded_dir, tmp_path):
    with BlockSource(sharded_dir) as source, pytest.raises(TyrjaxError, match=r"blocks 0\.\.2"):
        source.block(3)
    save_hf(init_random_params(CFG.replace(n_layers=2), 0), CFG.replace(n_layers=2), tmp_path / "short")
    with BlockSource(tmp_path / "short", cfg=CFG) as source, pytest.raises(TyrjaxError, match="lacks tensor"):
        source.block(2)
    wide = CFG.replace(hidden_size=32, head_dim=8)
    with BlockSource(sharded_dir, cfg=wide) as source, pytest.raises(TyrjaxError, match="config.json implies"):
        source.block(0)


SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from tyrjax.model.blocks import layer
    from tyrjax.checkpoints.hf import load_hf_params
    from tyrjax.model.config import ModelConfig
    from tyrjax.checkpoints.loading import load_model
    from tyrjax.parallel.sharding import make_mesh
    from tyrjax.model.axes import shard_layer, shard_params
    from tyrjax.checkpoints.streaming import BlockSource

    assert jax.device_count() == 8
    model_dir = sys.argv[1]
    cfg = ModelConfig.from_json_file(model_dir + "/config.json")
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    full = load_hf_params(model_dir, cfg)

    def check(got, want):
        # the layout tyrjax.parallel.sharding gives the fully loaded arrays, and the values shard by shard
        for k in want:
            assert got[k].sharding == want[k].sharding, (k, got[k].sharding, want[k].sharding)
            whole = np.asarray(want[k])
            for shard in got[k].addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), whole[shard.index], err_msg=k)

    with BlockSource(model_dir, mesh=mesh) as source:
        block = source.block(2)
        # weights split over fsdp x tensor are replicated over data: each distinct slice is read once
        assert source.bytes_read == sum(a.size * 4 for a in block.values()), source.bytes_read
    want = shard_layer(layer(full, 2), cfg, mesh)
    check(block, want)
    assert block["wq"].addressable_shards[0].data.shape == (8, 8)  # hidden over fsdp, heads over tensor
    loaded, want = load_model(model_dir, mesh=mesh).params, shard_params(full, cfg, mesh)
    check(loaded["layers"], want["layers"])
    check({k: v for k, v in loaded.items() if k != "layers"}, {k: v for k, v in want.items() if k != "layers"})
    print("ok")
""")


def test_sharded_reads_under_an_eight_device_mesh(sharded_dir):
    env = device_env(8)
    done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(sharded_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
