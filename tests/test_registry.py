"""The one registry mechanism and the extension points built on it."""
import dataclasses

import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.registry import Registry
from tyrjax.sds import prune_oneshot, prune_weight
from tyrjax.sparse import SPARSE_PRUNERS, register_sparse_pruner
from tyrjax.structured.saliency import SALIENCIES
from tyrjax.tyr.fitness import FITNESSES, get_fitness
from tyrjax.tyr.pipeline import TyrConfig, initial_grid, run_tyr
from tyrjax.tyr.search.mutation import MUTATIONS
from tyrjax.tyr.supernet import LOCAL_PRUNERS, build_supernet, register_local_pruner

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
WINDOWS = np.random.default_rng(0).integers(0, 64, (4, 32)).astype(np.int32)


def test_register_by_call_and_by_decorator_and_look_up():
    reg = Registry("widget", "tests.WIDGETS")
    assert reg.register("a", len) is len

    @reg.register("b")
    def b():
        return "b"

    assert reg.get("a") is len and reg["b"] is b and b() == "b"  # the decorator returns the function itself
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and len(reg) == 2
    assert "a" in reg and "c" not in reg and 3 not in reg
    assert reg.unregister("a") is len and reg.names() == ("b",)


def test_unknown_name_is_an_error_naming_the_choices():
    reg = Registry("widget", "tests.WIDGETS")
    with pytest.raises(TyrjaxError, match=r"unknown widget 'x'; registered: none \(add one with tests.WIDGETS.register\)"):
        reg.get("x")
    reg.register("zeta", 1)
    reg.register("alpha", 2)
    with pytest.raises(TyrjaxError, match=r"unknown widget 'x'; registered: alpha, zeta "):
        reg["x"]
    with pytest.raises(TyrjaxError, match="unknown widget"):
        reg.get(["not", "hashable"])
    with pytest.raises(TyrjaxError, match="unknown widget 'x'"):
        reg.unregister("x")


def test_a_taken_name_is_refused_unless_replaced():
    reg = Registry("widget", "tests.WIDGETS")
    reg.register("a", len)
    reg.register("a", len)  # the same object again: nothing changes
    with pytest.raises(TyrjaxError, match="widget named 'a' is already registered.*replace=True"):
        reg.register("a", abs)
    with pytest.raises(TyrjaxError, match="already registered"):
        reg.register("a")(abs)
    assert reg.get("a") is len
    reg.register("a", abs, replace=True)
    assert reg.get("a") is abs and reg.names() == ("a",)
    for bad in ("", None, 3):
        with pytest.raises(TyrjaxError, match="non-empty string"):
            reg.register(bad, len)


def test_every_extension_point_is_a_registry_with_its_builtins():
    assert SALIENCIES.names() == ("tyr", "obs", "magnitude")
    assert LOCAL_PRUNERS.names() == ("tyr",)
    assert FITNESSES.names() == ("kl",)
    assert MUTATIONS.names() == ("level_switch",)
    assert SPARSE_PRUNERS.names() == ("sparsegpt", "wanda", "magnitude")
    with pytest.raises(TyrjaxError, match=r"unknown fitness 'nope'; registered: kl"):
        get_fitness("nope")
    with pytest.raises(TyrjaxError, match=r"unknown sparse pruner 'nope'; registered: magnitude, sparsegpt, wanda"):
        prune_weight("nope", np.ones((4, 4), np.float32), None, "0.5")


def test_tyr_refuses_an_unregistered_extension_before_any_work():
    params = init_random_params(CFG, 0)
    for field, choice in (("fitness", "kl"), ("saliency", "tyr"), ("local_pruner", "tyr"), ("mutation", "level_switch")):
        tcfg = dataclasses.replace(TyrConfig(), **{field: "nope"})
        with pytest.raises(TyrjaxError, match=f"'nope'; registered: .*{choice}"):
            run_tyr(params, CFG, WINDOWS, 0.3, tcfg, progress=False)


def test_a_registered_local_pruner_builds_the_supernet():
    params = init_random_params(CFG, 0, scale=0.2)
    tcfg = TyrConfig(mlp_multiple=4, interval=0.25)
    grid = initial_grid(CFG, 0.4, tcfg)
    calls = []

    @register_local_pruner("test-recording")
    def recording(W_dense, H, group_size, n_remove, rounds, **kw):
        calls.append((W_dense.shape, group_size, rounds))
        return LOCAL_PRUNERS["tyr"](W_dense, H, group_size, n_remove, rounds, **kw)

    try:
        ours = build_supernet(params, CFG, WINDOWS, grid, local_pruner="test-recording", progress=False)
        theirs = build_supernet(params, CFG, WINDOWS, grid, progress=False)
    finally:
        LOCAL_PRUNERS.unregister("test-recording")
    d = CFG.hidden_size
    attn, mlp = ((CFG.n_heads * CFG.head_dim, d), CFG.head_dim, 1), ((CFG.intermediate_size, d), 1, 16)
    assert calls == [attn, mlp] * CFG.n_layers
    for b in range(CFG.n_layers):
        for a, t in zip(ours.block(b), theirs.block(b)):
            np.testing.assert_array_equal(a, t)


def test_a_registered_sparse_pruner_drives_oneshot_pruning():
    params = init_random_params(CFG, 0)
    calls = []

    @register_sparse_pruner("test-recording")
    def recording(W, stats, pattern):
        calls.append(W.shape)
        return SPARSE_PRUNERS["magnitude"](W, stats, pattern)

    try:
        ours, report = prune_oneshot(params, CFG, WINDOWS, "2:4", "test-recording", progress=False)
        theirs, _ = prune_oneshot(params, CFG, WINDOWS, "2:4", "magnitude", progress=False)
    finally:
        SPARSE_PRUNERS.unregister("test-recording")
    assert len(calls) == 7 * CFG.n_layers  # q, k, v, o, gate, up, down of every block
    assert report["method"] == "test-recording"
    for name, a in ours["layers"].items():
        np.testing.assert_array_equal(a, theirs["layers"][name])
