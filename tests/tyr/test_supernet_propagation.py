"""tyrjax.tyr.supernet: the expectation propagation, level masks, ablations and resumable builds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tyrjax.calibration.statistics import attention_inputs, embed_windows, mlp_inputs
from tyrjax.model.blocks import layer
from tyrjax.tyr.genome import layer_index
from tyrjax.tyr.search.levels import ATTENTION, MLP
from tyrjax.tyr.supernet import build_supernet, level_weights

from scale_fixtures import compile_cache_env
from tyr_fixtures import CFG, BUILD_SCRIPT, tiny_setup


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


def test_expected_weight_equals_nine_forwards(setup):
    """The next block's input from one matmul with Σ w_e W_e equals Σ w_e (output of level e)."""
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, progress=False)
    x = embed_windows(params, calib)
    p = layer(params, 0)
    _, heads = attention_inputs(p, CFG, x)
    w = level_weights(grid, 0, "expectation", np.random.default_rng(0))
    first, second = sn.block(0), sn.block(1)
    outs = [x + (heads.reshape(*heads.shape[:2], 4, 8) * first.head_keep[e][:, None]).reshape(heads.shape) @ first.wo[e]
            for e in range(grid.n_levels)]
    x_attn = sum(w[e] * outs[e] for e in range(grid.n_levels))
    _, hidden = mlp_inputs(p, CFG, x_attn)
    wm = level_weights(grid, 1, "expectation", np.random.default_rng(0))
    nine = sum(wm[e] * (x_attn + (hidden * first.ffn_keep[e]) @ first.w_down[e]) for e in range(grid.n_levels))
    # the supernet's block-1 statistics were taken on exactly this input: rebuild block 1 from it
    from tyrjax.tyr.supernet import prune_block

    levels, _ = prune_block(layer(params, 1), CFG, nine, grid, 1, "expectation", np.random.default_rng([0, 1]))
    np.testing.assert_allclose(levels.wo, second.wo, rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(levels.head_keep, second.head_keep)
    assert np.all(w[~grid.valid[0]] == 0) and w.sum() == pytest.approx(1)


def test_level_masks_remove_the_grid_counts(setup):
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, progress=False)
    for b in range(CFG.n_layers):
        attn, mlp = layer_index(b, ATTENTION), layer_index(b, MLP)
        for e in np.flatnonzero(grid.valid[attn]):
            assert (~sn.block(b).head_keep[e]).sum() == grid.removed[attn, e]
        for e in np.flatnonzero(grid.valid[mlp]):
            assert (~sn.block(b).ffn_keep[e]).sum() == grid.removed[mlp, e]


def test_propagation_ablations_differ(setup):
    params, calib, grid = setup
    nets = {p: build_supernet(params, CFG, calib, grid, propagation=p, progress=False)
            for p in ("expectation", "dense", "uniform")}
    wo = {p: [net.block(b).wo for b in range(net.n_blocks)] for p, net in nets.items()}
    assert not np.allclose(wo["expectation"][2], wo["dense"][2])
    assert not np.allclose(wo["expectation"][2], wo["uniform"][2])
    np.testing.assert_allclose(wo["expectation"][0], wo["dense"][0])  # block 0 sees the same input


def test_killed_supernet_build_resumes_to_the_same_result(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = dict(os.environ, **compile_cache_env(tmp_path / "xla_cache"))
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), "2", str(tmp_path / "a.npz")], env=env)
    assert killed.returncode == -9
    assert json.loads((tmp_path / "store" / "supernet.json").read_text())["completed"] == 2
    subprocess.run([sys.executable, str(script), str(tmp_path / "store"), "0", str(tmp_path / "resumed.npz")], env=env,
                   check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "fresh"), "0", str(tmp_path / "fresh.npz")], env=env,
                   check=True)
    with np.load(tmp_path / "resumed.npz") as a, np.load(tmp_path / "fresh.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
