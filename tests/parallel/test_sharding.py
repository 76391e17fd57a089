"""Meshes, the logical-axis table, the multi-host flags, and the sharded phases on 8 simulated CPU
devices (8×1, 4×2, 2×4) against one device."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from scale_fixtures import run_check
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.distributed import Cluster, cluster_from
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import compact_from_masked, init_random_params
from tyrjax.parallel.sharding import Axes, make_mesh, parse_mesh, spec
from tyrjax.model.axes import param_axes

MESHES = ["data=8", "data=4,tensor=2", "data=2,tensor=4"]


def abstract(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("text,n,expected", [
    ("data=4,tensor=2", 8, {"data": 4, "fsdp": 1, "tensor": 2}),
    ("tensor=2", 8, {"data": 4, "fsdp": 1, "tensor": 2}),
    (" fsdp=2 , tensor=2 ", 8, {"data": 2, "fsdp": 2, "tensor": 2}),
    ("auto", 4, {"data": 4, "fsdp": 1, "tensor": 1}),
])
def test_parse_mesh(text, n, expected):
    assert parse_mesh(text, n) == expected


@pytest.mark.parametrize("text,fragment", [
    ("data=3", "needs 3 devices but 8"),
    ("model=2", "AXIS one of data, fsdp, tensor"),
    ("tensor=x", "must be a positive integer"),
    ("tensor=3", "does not divide the 8"),
    ("tensor=2,tensor=2", "given twice"),
    ("data=0", "must be a positive integer"),
])
def test_parse_mesh_rejects_bad_flags(text, fragment):
    with pytest.raises(TyrjaxError, match=fragment):
        parse_mesh(text, 8)


def test_make_mesh_uses_every_device_and_refuses_what_is_not_there():
    mesh = make_mesh("auto")
    assert dict(mesh.shape) == {"data": len(jax.devices()), "fsdp": 1, "tensor": 1}
    with pytest.raises(TyrjaxError, match="--mesh"):
        make_mesh(f"data={len(jax.devices()) + 1}")


def test_specs_follow_the_table_and_stay_replicated_where_an_axis_does_not_divide():
    mesh = abstract(4, 1, 2)
    assert spec(Axes("batch", "seq", "embed"), (8, 16, 32), mesh) == PartitionSpec("data")
    assert spec(Axes("embed", "heads"), (576, 9 * 64), mesh, head_dim=64) == PartitionSpec()  # 9 heads over 2
    assert spec(Axes("embed", "heads"), (576, 4 * 64), mesh, head_dim=64) == PartitionSpec(None, "tensor")
    assert spec(Axes("mlp", "embed"), (1536, 576), mesh) == PartitionSpec("tensor")
    assert spec(Axes("batch"), (6,), mesh) == PartitionSpec()  # 6 windows over 4
    both = abstract(2, 2, 2)
    assert spec(Axes("batch", "seq", "embed"), (8, 16, 32), both) == PartitionSpec(("data", "fsdp"))
    # batch took fsdp, so the hidden size of the same array cannot use it again
    assert spec(Axes("batch", "seq", "embed"), (2, 16, 32), both) == PartitionSpec("data", None, "fsdp")
    assert spec(Axes("vocab", "embed"), (64, 32), both) == PartitionSpec("tensor", "fsdp")
    with pytest.raises(TyrjaxError, match="unknown"):
        Axes("hidden")


@pytest.mark.parametrize("extra", [{}, {"attention_bias": True, "o_bias": True, "tie_word_embeddings": True}])
def test_param_axes_name_every_dimension_of_both_forms(extra):
    cfg = ModelConfig(vocab_size=32, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                      intermediate_size=24, **extra)
    params = init_random_params(cfg)
    compact, ccfg = compact_from_masked(params, cfg)
    for p, c, stacked in ((params, cfg, True), (compact, ccfg, False)):
        axes = param_axes(c, stacked)
        is_axes = lambda x: isinstance(x, Axes)  # noqa: E731
        assert jax.tree_util.tree_structure(axes, is_leaf=is_axes) == jax.tree_util.tree_structure(
            jax.tree_util.tree_map(lambda a: Axes(), p), is_leaf=is_axes)
        for a, names in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(axes, is_leaf=is_axes)):
            assert len(names) == a.ndim


def test_cluster_from_flags_and_environment():
    assert cluster_from(environ={}) is None
    assert cluster_from("10.0.0.1:1234", 2, 1, environ={}) == Cluster("10.0.0.1:1234", 2, 1)
    env = {"TYRJAX_COORDINATOR": "h:9", "TYRJAX_NUM_PROCESSES": "4", "TYRJAX_PROCESS_ID": "3"}
    assert cluster_from(environ=env) == Cluster("h:9", 4, 3)
    assert cluster_from(process_id=0, environ=env) == Cluster("h:9", 4, 0)  # a flag wins over the environment
    assert cluster_from("auto", environ={}) == Cluster("auto")
    for kwargs, fragment in [({"coordinator": "h:9"}, "needs --num-processes"),
                             ({"coordinator": "nohost"}, "HOST:PORT"),
                             ({"coordinator": "h:9", "num_processes": 2, "process_id": 2}, "must lie in"),
                             ({"num_processes": 2, "process_id": 0}, "need --coordinator")]:
        with pytest.raises(TyrjaxError, match=fragment):
            cluster_from(environ={}, **kwargs)


def test_cli_rejects_a_mesh_the_devices_cannot_form(capsys):
    assert main(["eval", "--mesh", f"data={len(jax.devices()) + 1}"]) == 2
    assert "--mesh" in capsys.readouterr().err


def test_sharded_phases_match_one_device(tmp_path):
    """On 8 simulated devices, for each mesh shape: the same supernet, teacher, search result,
    SDS weights, structured baselines and logits as on one device, with the arrays really laid out over the mesh."""
    out = tmp_path / "phases.npz"
    done = run_check("multidevice_check.py", [str(out), *MESHES], 8)
    assert done.returncode == 0, done.stderr[-3000:]
    specs = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as f:
        results = dict(f)
    names = [k.split("/", 1)[1] for k in results if k.startswith("one/")]
    for mesh in MESHES:
        for name in names:
            ref, got = results[f"one/{name}"], results[f"{mesh}/{name}"]
            if ref.dtype.kind in "biu" or name.endswith("keep"):
                np.testing.assert_array_equal(got, ref, err_msg=f"{mesh} {name}")
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"{mesh} {name}")
            if name.startswith("sds."):
                np.testing.assert_array_equal(got == 0, ref == 0, err_msg=f"{mesh} {name} mask")
        assert "data" in specs[mesh]["logits"]  # windows split over the data axis
        assert "data" in specs[mesh]["candidate_levels.wo"]  # a batch's candidates split over the data axis
        assert ("tensor" in specs[mesh]["candidate_levels.wo"]) == ("tensor" in mesh)  # heads split over tensor
