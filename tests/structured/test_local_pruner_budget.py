"""The local pruner's levels in groups sized to the per-device memory budget."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from scale_fixtures import device_env
from tyrjax.errors import TyrjaxError
from tyrjax.structured.local_pruner import (_prune_levels_jit, level_groups, level_state_bytes, prune_levels,
                                            shared_state_bytes)


def layer(seed: int, d_in: int, d_out: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weights (d_in, d_out) and the Hessian XᵀX of correlated calibration inputs."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4 * d_in, d_in)) @ (np.eye(d_in) + 0.3 * rng.normal(size=(d_in, d_in)))
    return jnp.asarray(rng.normal(size=(d_in, d_out)), jnp.float32), jnp.asarray(X.T @ X, jnp.float32)


def budget_for(levels_per_group: int, d_in: int, d_out: int, rounds: int) -> int:
    """The smallest budget that holds `levels_per_group` levels of a (d_in, d_out) layer."""
    return shared_state_bytes(d_in, d_out) + levels_per_group * level_state_bytes(d_in, d_out, rounds)


@pytest.mark.parametrize("group_size, rounds", [(4, 1), (1, 16)])
def test_levels_in_groups_equal_all_levels_at_once(group_size, rounds):
    d_in, d_out = 24, 10
    W, H = layer(group_size, d_in, d_out)
    n_groups = d_in // group_size
    n_remove = jnp.asarray(np.linspace(0, n_groups - 1, 9).round(), jnp.int32)  # nine levels, as Týr's supernet
    at_once = prune_levels(W, H, group_size, n_remove, rounds)
    for per_group in (1, 2, 4):
        budget = budget_for(per_group, d_in, d_out, rounds)
        assert level_groups(9, d_in, d_out, rounds, budget).size == per_group
        if per_group > 1:
            assert level_groups(9, d_in, d_out, rounds, budget - 1).size == per_group - 1
        grouped = prune_levels(W, H, group_size, n_remove, rounds, budget_bytes=budget)
        assert grouped[0].shape == (9, d_in, d_out) and grouped[1].shape == (9, n_groups)
        np.testing.assert_array_equal(np.asarray(grouped[1]), np.asarray(at_once[1]))
        np.testing.assert_array_equal(np.asarray(grouped[0]), np.asarray(at_once[0]))


def test_groups_of_one_size_compile_once():
    """Nine levels in groups of two are five calls (the last padded) of one compiled function."""
    d_in, d_out = 20, 6  # a shape no other test prunes
    W, H = layer(3, d_in, d_out)
    n_remove = jnp.arange(9, dtype=jnp.int32)
    before = _prune_levels_jit._cache_size()
    prune_levels(W, H, 1, n_remove, 4, budget_bytes=budget_for(2, d_in, d_out, 4))
    assert _prune_levels_jit._cache_size() == before + 1
    prune_levels(W, H, 1, n_remove[::-1], 4, budget_bytes=budget_for(2, d_in, d_out, 4))
    assert _prune_levels_jit._cache_size() == before + 1


def test_a_budget_below_one_level_names_the_smallest_that_works():
    d_in, d_out = 24, 10
    W, H = layer(5, d_in, d_out)
    smallest = budget_for(1, d_in, d_out, 16)
    with pytest.raises(TyrjaxError, match=r"local pruner \(24×10 layer\) needs at least .* --device-memory"):
        prune_levels(W, H, 1, jnp.arange(3, dtype=jnp.int32), 16, budget_bytes=smallest - 1)


def test_state_grows_with_the_square_of_the_inputs():
    """70B's down_proj (28,672 → 8,192), bf16 weights and fp32 Hessian: nine levels at once need
    far more than an 80 GB device; in groups, a few levels fit it."""
    d_in, d_out = 28672, 8192
    per_level = level_state_bytes(d_in, d_out, 16)
    assert per_level == 4 * (2 * d_in * d_in + 3 * d_in * d_out)
    shared = shared_state_bytes(d_in, d_out, weight_bytes=2)
    assert shared + 9 * per_level > 80e9
    groups = level_groups(9, d_in, d_out, 16, int(80e9), weight_bytes=2)
    assert 1 < groups.size < 9 and shared + groups.size * per_level <= 80e9


MESH_SCRIPT = """
import json
import jax.numpy as jnp
import numpy as np
from tyrjax.calibration.statistics import stats_of
from tyrjax.parallel.sharding import host_array, make_mesh
from tyrjax.structured.local_pruner import level_state_bytes, mesh_levels_per_call, prune_levels, shared_state_bytes
rng = np.random.default_rng(7)
d_in, d_out = 24, 10
X = rng.normal(size=(4 * d_in, d_in))
W, H = jnp.asarray(rng.normal(size=(d_in, d_out)), jnp.float32), jnp.asarray(X.T @ X, jnp.float32)
n_remove = jnp.asarray(np.linspace(0, d_in - 1, 9).round(), jnp.int32)
mesh = make_mesh("data=2,tensor=2")  # the Gram's rows split over data, the levels over all four
stats = stats_of(jnp.asarray(X.reshape(4, d_in, d_in), jnp.float32), mesh)
gram_equal = bool(np.allclose(host_array(stats.gram), np.asarray(H), rtol=1e-5, atol=1e-4))
gram_split = len({(s.start, s.stop) for s in (i[0] for i in stats.gram.sharding.devices_indices_map(H.shape).values())})
one_level = shared_state_bytes(d_in, d_out) + level_state_bytes(d_in, d_out, 16)
assert mesh_levels_per_call(9, 4, d_in, d_out, 16, one_level) == 4  # three levels a device do not fit: calls of 4
assert mesh_levels_per_call(9, 4, d_in, d_out, 16, one_level + 2 * level_state_bytes(d_in, d_out, 16)) == 12
whole = prune_levels(W, stats.gram, 1, n_remove, 16, mesh=mesh)
calls = prune_levels(W, stats.gram, 1, n_remove, 16, mesh=mesh, budget_bytes=one_level)
alone = prune_levels(W, jnp.asarray(host_array(stats.gram)), 1, n_remove, 16)
print(json.dumps({"shape": list(calls[0].shape),
                  "split": len(calls[0].sharding.device_set),
                  "equal": all(np.array_equal(host_array(a), host_array(b)) for a, b in zip(calls, whole)),
                  "equal_one_device": all(np.array_equal(host_array(a), host_array(b)) for a, b in zip(calls, alone)),
                  "gram_equal": gram_equal, "gram_row_blocks": gram_split}))
"""


def test_levels_on_a_mesh_in_calls_of_one_level_per_device_equal_one_call():
    """The Gram a mesh sums arrives split by rows; the pruner given it prunes as on one device."""
    env = device_env(4)
    done = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"shape": [9, 24, 10], "split": 4, "equal": True, "equal_one_device": True, "gram_equal": True,
                   "gram_row_blocks": 2}
