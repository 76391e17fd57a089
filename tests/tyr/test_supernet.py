"""Supernet levels in the model's dtype, and levels pruned and captures taken in chunks sized to the memory budget."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.calibration.statistics import heads_of, hidden_of, zero_padding
from tyrjax.model.blocks import device_bytes, layer
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import cast_params, init_random_params
from tyrjax.structured.local_pruner import level_groups
from tyrjax.tyr.fitness import BatchScorer, teacher_topk
from tyrjax.tyr.pipeline import TyrConfig, initial_grid, run_tyr, supernet_settings, uniform_selection
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.tyr import supernet
from tyrjax.tyr.supernet import (BlockLevels, PackedLevels, SupernetStore, build_capture_windows, build_supernet,
                                 capture_fixed_bytes, capture_windows, held_while_pruning, one_level_bytes,
                                 stream_waits_on_host, supernet_key)

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
TCFG = TyrConfig(iterations=1, generations=2, offspring=4, stages=((4, 64), (2, 128), (1, 256)), topk=16,
                 candidate_batch=4, mlp_multiple=4, interval=0.25)
BF16 = np.dtype(jnp.bfloat16)


@pytest.fixture(scope="module")
def setup():
    params = init_random_params(CFG, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, 64, (8, 32))
    return params, calib, initial_grid(CFG, 0.4, TCFG)


def blocks(supernet) -> list[BlockLevels]:
    return [BlockLevels(*(np.asarray(a) for a in supernet.block(b))) for b in range(supernet.n_blocks)]


def weight_file_bytes(store) -> int:
    return sum(p.stat().st_size for p in store.glob("block_*.npy") if ".wo." in p.name or ".w_down." in p.name)


def test_a_bf16_model_stores_bf16_levels_in_half_the_bytes(setup, tmp_path):
    params, calib, grid = setup
    low = cast_params(params, jnp.bfloat16)
    bf16 = build_supernet(low, CFG, calib, grid, store_dir=tmp_path / "bf16", progress=False)
    fp32 = build_supernet(low, CFG, calib, grid, store_dir=tmp_path / "fp32", dtype="float32", progress=False)
    held = build_supernet(low, CFG, calib, grid, progress=False)
    for a, b, h in zip(blocks(bf16), blocks(fp32), blocks(held)):
        assert a.wo.dtype == a.w_down.dtype == h.wo.dtype == BF16 and b.wo.dtype == b.w_down.dtype == np.float32
        # the same pruner, in float32 either way: the stored levels are its result rounded to bf16
        np.testing.assert_array_equal(a.wo, b.wo.astype(BF16))
        np.testing.assert_array_equal(a.w_down, b.w_down.astype(BF16))
        for x, y, z in zip(a, b, h):
            np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(z, np.float32))
        np.testing.assert_array_equal(a.head_keep, b.head_keep)
        np.testing.assert_array_equal(a.ffn_keep, b.ffn_keep)
    header = 128 * 2 * CFG.n_layers  # one .npy header per file
    assert weight_file_bytes(tmp_path / "bf16") - header == (weight_file_bytes(tmp_path / "fp32") - header) // 2


def test_the_default_fp32_model_keeps_fp32_levels_and_its_key(setup, tmp_path):
    params, calib, grid = setup
    sn = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "store", progress=False)
    assert all(b.wo.dtype == b.w_down.dtype == np.float32 for b in blocks(sn))
    settings = ("expectation", "tyr", "tyr", 0)
    key = json.loads((tmp_path / "store" / "supernet.json").read_text())["key"]
    assert key == supernet_key(CFG, grid, calib, *settings) == supernet_key(CFG, grid, calib, *settings,
                                                                             dtype=np.dtype(np.float32))
    assert supernet_key(CFG, grid, calib, *settings, dtype=BF16) != key


def test_a_store_of_another_dtype_is_rebuilt_not_reused(setup, tmp_path):
    params, calib, grid = setup
    store = tmp_path / "store"
    build_supernet(params, CFG, calib, grid, store_dir=store, dtype="bfloat16", progress=False)
    bf16_key = json.loads((store / "supernet.json").read_text())["key"]
    assert SupernetStore(store, bf16_key, BF16).load_block(0).wo.dtype == BF16
    rebuilt = build_supernet(params, CFG, calib, grid, store_dir=store, dtype="float32", progress=False)
    assert json.loads((store / "supernet.json").read_text())["key"] != bf16_key
    fresh = build_supernet(params, CFG, calib, grid, progress=False)
    for a, b in zip(blocks(rebuilt), blocks(fresh)):
        assert a.wo.dtype == np.float32
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_scoring_with_bf16_levels_is_close_to_fp32_levels(setup, tmp_path):
    params, calib, grid = setup
    fp32 = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "fp32", progress=False)
    bf16 = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "bf16", dtype="bfloat16", progress=False)
    teacher = teacher_topk(params, CFG, calib, 16)
    parent = centre_genome(grid)
    genomes = np.stack([level_switch(i, parent, grid) for i in range(4)])

    def scores(net):
        return BatchScorer(params, CFG, net, batch=4)(genomes, parent, calib[:4], teacher.idx[:4], teacher.logp[:4])

    exact, rounded = scores(fp32), scores(bf16)
    assert np.all(exact > 0) and not np.array_equal(exact, rounded)
    np.testing.assert_allclose(rounded, exact, rtol=2e-2)


def test_a_bf16_model_runs_the_search_on_its_own_dtype(setup):
    params, calib, _ = setup
    result = run_tyr(cast_params(params, jnp.bfloat16), CFG, calib, 0.4, dataclasses.replace(TCFG, reprune_final=False),
                     progress=False)
    assert np.isfinite(result.iterations[0].fitness)
    assert result.params["layers"]["wo"].dtype == result.params["layers"]["w_down"].dtype == jnp.bfloat16


def test_the_selection_computes_in_the_models_dtype_whatever_the_levels(setup):
    params, calib, _ = setup
    selection = uniform_selection(params, CFG, calib, 0.4, dataclasses.replace(TCFG, supernet_dtype="bfloat16"),
                                  progress=False)
    assert selection.supernet.block(0).wo.dtype == BF16
    masked, _, _ = selection.masked()
    assert masked["layers"]["wo"].dtype == masked["layers"]["w_down"].dtype == jnp.float32
    compact, _ = selection.compact()
    assert {layer["wo"].dtype for layer in compact["layers"]} == {jnp.dtype(jnp.float32)}


def test_levels_grouped_to_a_small_budget_give_the_same_supernet_and_resume_it(setup, tmp_path):
    params, calib, grid = setup
    calib = calib[:2]  # two windows: their captures fit beside the pruner's budget of one down_proj level
    d_ff, d = CFG.intermediate_size, CFG.hidden_size
    pruner = 150_000  # what the local pruner gets: one down_proj level at a time, all o_proj levels at once
    assert level_groups(grid.n_levels, d_ff, d, 16, pruner).size == 1
    assert level_groups(grid.n_levels, CFG.n_heads * CFG.head_dim, d, 1, pruner).size == grid.n_levels
    resident = device_bytes(params) + device_bytes(layer(params, 0))
    budget = int(held_while_pruning(CFG, 2, calib.shape[1], resident, chunked=False)) + pruner
    assert capture_windows(CFG, 2, calib.shape[1], budget, resident) == 2  # captured in one piece
    assert supernet_settings(dataclasses.replace(TCFG, device_memory_gb=budget / 1e9))["budget_bytes"] == budget
    store = tmp_path / "store"
    grouped = build_supernet(params, CFG, calib, grid, store_dir=store, budget_bytes=budget, progress=False)
    at_once = build_supernet(params, CFG, calib, grid, progress=False)
    for a, b in zip(blocks(grouped), blocks(at_once)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    written = {p: p.stat().st_mtime_ns for p in store.iterdir()}
    build_supernet(params, CFG, calib, grid, store_dir=store, progress=False)  # another budget: the same build
    assert {p: p.stat().st_mtime_ns for p in store.iterdir()} == written


def test_captures_chunked_to_a_small_budget_give_the_same_supernet_and_compile_once(setup):
    params, _, grid = setup
    calib = np.random.default_rng(1).integers(0, 64, (24, 32))
    resident = device_bytes(params) + device_bytes(layer(params, 0))
    length, width = calib.shape[1], max(CFG.n_heads * CFG.head_dim, CFG.intermediate_size)
    budget = int(capture_fixed_bytes(CFG, 24, length, resident)) + 16 * length * width * 4
    assert capture_windows(CFG, 24, length, budget, resident) == 16  # two chunks, the second padded
    whole = build_supernet(params, CFG, calib, grid, progress=False)
    for jitted in (heads_of, hidden_of, zero_padding):
        jitted.clear_cache()
    chunked = build_supernet(params, CFG, calib, grid, budget_bytes=budget, progress=False)
    for a, b in zip(blocks(chunked), blocks(whole)):
        np.testing.assert_array_equal(a.head_keep, b.head_keep)
        np.testing.assert_array_equal(a.ffn_keep, b.ffn_keep)
        np.testing.assert_allclose(a.wo, b.wo, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.w_down, b.w_down, rtol=1e-4, atol=1e-5)
    assert heads_of._cache_size() == hidden_of._cache_size() == 1
    assert zero_padding._cache_size() == 2  # one per captured width (o_proj's, down_proj's), not per chunk
    with pytest.raises(TyrjaxError, match="supernet build needs at least"):
        build_supernet(params, CFG, calib, grid, budget_bytes=resident, progress=False)


def test_a_failed_write_stops_the_build_with_its_error_and_the_rerun_resumes_after_the_blocks_written(
        setup, tmp_path, monkeypatch):
    params, calib, grid = setup
    save_block, pruned = SupernetStore.save_block, []
    prune_block = supernet.prune_block

    def full_disk(self, block, levels, stream):
        if block == 1:
            raise OSError(28, "No space left on device")
        save_block(self, block, levels, stream)

    def counted(p, cfg, x, grid, block, *args, **kwargs):
        pruned.append(block)
        return prune_block(p, cfg, x, grid, block, *args, **kwargs)

    monkeypatch.setattr(SupernetStore, "save_block", full_disk)
    monkeypatch.setattr(supernet, "prune_block", counted)
    with pytest.raises(OSError, match="No space left"):
        build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "store", progress=False)
    assert pruned == [0, 1, 2]  # block 1's write failed while block 2 was pruned; block 2 was never written
    meta = json.loads((tmp_path / "store" / "supernet.json").read_text())
    assert meta["completed"] == 1
    assert not (tmp_path / "store" / "block_0002.wo.npy").exists()
    monkeypatch.setattr(SupernetStore, "save_block", save_block)
    pruned.clear()
    resumed = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "store", progress=False)
    assert pruned == [1, 2]
    held = build_supernet(params, CFG, calib, grid, progress=False)
    for a, b in zip(blocks(resumed), blocks(held)):
        for field in BlockLevels._fields:
            np.testing.assert_array_equal(np.asarray(getattr(a, field)), getattr(b, field))


def test_bad_supernet_dtype_or_budget_fails_before_any_work():
    with pytest.raises(TyrjaxError, match=r"supernet dtype 'int8' unknown; use one of float32, bfloat16, float16"):
        TyrConfig(supernet_dtype="int8").check_extensions()
    with pytest.raises(TyrjaxError, match="--device-memory"):
        TyrConfig(device_memory_gb=0).check_extensions()
    assert supernet_settings(TyrConfig()) == {"saliency": "tyr", "local_pruner": "tyr", "dtype": None,
                                              "budget_bytes": None}


def test_levels_are_stored_as_the_rows_they_keep_and_read_back_exactly(setup, tmp_path):
    params, calib, grid = setup
    stored = build_supernet(params, CFG, calib, grid, store_dir=tmp_path / "store", progress=False)
    held = build_supernet(params, CFG, calib, grid, progress=False)
    kept_rows = dense_rows = 0
    for b in range(CFG.n_layers):
        packed, whole = stored.block(b), held.block(b)
        assert isinstance(packed.wo, PackedLevels) and isinstance(packed.w_down, PackedLevels)
        for field in ("wo", "w_down"):
            np.testing.assert_array_equal(np.asarray(getattr(packed, field)), getattr(whole, field))
            for e in range(grid.n_levels):
                np.testing.assert_array_equal(getattr(packed, field)[e], getattr(whole, field)[e])
        np.testing.assert_array_equal(packed.w_down.take([3, 0, 3]), whole.w_down[[3, 0, 3]])
        kept = int(whole.head_keep.sum()) * CFG.head_dim + int(whole.ffn_keep.sum())
        assert packed.wo.packed.shape[0] + packed.w_down.packed.shape[0] == kept
        kept_rows += kept
        dense_rows += grid.n_levels * (CFG.n_heads * CFG.head_dim + CFG.intermediate_size)
    header = 128 * 2 * CFG.n_layers  # one .npy header per file
    assert weight_file_bytes(tmp_path / "store") - header == kept_rows * CFG.hidden_size * 4
    assert kept_rows < 0.75 * dense_rows  # the levels' mean density of the dense bytes


def test_the_stream_waits_on_the_host_while_the_pruner_needs_its_room():
    """A wide MLP (one down_proj level outweighs the captures of a chunk): one byte less than
    the level beside the stream sends the stream to the host while the pruner runs; the
    levels and the next stream are the same."""
    cfg = CFG.replace(n_layers=2, intermediate_size=512)
    params, grid = init_random_params(cfg, 0, scale=0.2), initial_grid(cfg, 0.4, TCFG)
    calib = np.random.default_rng(3).integers(0, 64, (64, 32))
    resident = device_bytes(params) + device_bytes(layer(params, 0))
    stream = 64 * 32 * cfg.hidden_size * 4
    room = int(resident + one_level_bytes(cfg, 4) + stream)
    for budget in (room, room - 1):
        assert capture_windows(cfg, 64, 32, budget, resident) == 32  # two chunks, not held while pruning
        assert build_capture_windows(cfg, 64, 32, budget, resident, 4) == 32
    assert not stream_waits_on_host(cfg, 64, 32, room, resident, True, 4)
    assert stream_waits_on_host(cfg, 64, 32, room - 1, resident, True, 4)
    beside = build_supernet(params, cfg, calib, grid, budget_bytes=room, progress=False)
    on_host = build_supernet(params, cfg, calib, grid, budget_bytes=room - 1, progress=False)
    for a, b in zip(blocks(on_host), blocks(beside)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
