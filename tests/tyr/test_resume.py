"""Fault tolerance: a run stopped mid-search resumes to the uninterrupted result, and on a 4-device
mesh a run killed (SIGKILL) in the supernet build and again in the search resumes each time from
the last completed block / generation to the uninterrupted result."""
import json
import time

import numpy as np
import pytest

import tyrjax.tyr.pipeline as pipeline
import tyrjax.tyr.supernet as supernet
from scale_fixtures import CFG, SPARSITY, run_check, tiny_model, tyr_config

RESULTS = ("genome", "fitness", "head", "ffn", "wo", "w_down")


class Preempted(Exception):
    pass


def test_stopped_search_resumes_from_its_last_generation_to_the_same_result(tmp_path, monkeypatch):
    params, calib = tiny_model()
    tcfg = tyr_config(generations=3)
    save, saved, stop_after = pipeline.save_state, [], [2]

    def save_then_stop(path, state):
        save(path, state)
        saved.append(state.generation)
        if state.generation in stop_after:
            raise Preempted

    monkeypatch.setattr(pipeline, "save_state", save_then_stop)
    with pytest.raises(Preempted):
        pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "work", progress=False)
    saved.clear()
    stop_after.clear()
    resumed = pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "work", progress=False)
    assert saved == [3]  # only the generation left to do was run
    fresh = pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "fresh", progress=False)
    assert resumed.iterations[0].history == fresh.iterations[0].history
    np.testing.assert_array_equal(resumed.iterations[0].genome, fresh.iterations[0].genome)
    np.testing.assert_array_equal(resumed.head_mask, fresh.head_mask)
    np.testing.assert_array_equal(resumed.params["layers"]["wo"], fresh.params["layers"]["wo"])


def test_wall_time_counts_the_work_of_the_runs_stopped_before(tmp_path, monkeypatch):
    params, calib = tiny_model()
    tcfg = tyr_config(generations=3)
    block_s, fitness_s = 0.4, 0.1  # each block built and each fitness call takes at least this long
    save_block, save_state, make_fitness = supernet.SupernetStore.save_block, pipeline.save_state, pipeline.make_fitness_fn
    stop, calls, calls_saved = {"block": 0, "generation": 2}, [], []

    def slow_block(self, block, levels, stream):
        time.sleep(block_s)
        save_block(self, block, levels, stream)
        if stop.get("block") == block:
            raise Preempted

    def slow_fitness_fn(*args):
        fitness = make_fitness(*args)

        def slow(*a):
            time.sleep(fitness_s)
            calls.append(1)
            return fitness(*a)
        return slow

    def counted_state(path, state):
        save_state(path, state)
        calls_saved.append(len(calls))  # the calls so far are in the saved state's seconds
        if stop.get("generation") == state.generation:
            raise Preempted

    monkeypatch.setattr(supernet.SupernetStore, "save_block", slow_block)
    monkeypatch.setattr(pipeline, "make_fitness_fn", slow_fitness_fn)
    monkeypatch.setattr(pipeline, "save_state", counted_state)
    start = time.perf_counter()
    with pytest.raises(Preempted):  # stopped after the first of the two blocks
        pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "work", progress=False)
    del stop["block"]
    with pytest.raises(Preempted):  # builds the second block, stopped after the second generation
        pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "work", progress=False)
    del stop["generation"]
    assert calls_saved[-1] == len(calls)  # every call of the stopped search is in its last saved state
    result = pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=tmp_path / "work", progress=False)
    elapsed = time.perf_counter() - start
    supernet_s, search_s = result.supernet_s[0], result.search_s[0]
    assert supernet_s >= 2 * block_s and search_s >= len(calls) * fitness_s  # not only the last run's piece
    assert supernet_s + search_s <= elapsed  # nothing counted twice


@pytest.mark.parametrize("reprune_final", [True, False])
def test_finished_iterations_drop_their_supernets_and_resume_without_them(tmp_path, monkeypatch, reprune_final):
    params, calib = tiny_model()
    tcfg = tyr_config(iterations=2, reprune_final=reprune_final)
    work = tmp_path / "work"
    first = pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=work, progress=False)
    assert (work / "found_0.npz").exists() and (work / "found_1.npz").exists()
    assert not (work / "supernet_0").exists()
    assert (work / "supernet_1").exists() == (not reprune_final)  # read by the result when not re-pruned
    builds, build = [], pipeline.build_supernet

    def counting_build(*args, **kwargs):
        builds.append(kwargs["store_dir"].name)
        return build(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_supernet", counting_build)
    again = pipeline.run_tyr(params, CFG, calib, SPARSITY, tcfg, work_dir=work, progress=False)
    assert builds == (["supernet_final"] if reprune_final else ["supernet_1"])  # reopened from disk, not searched again
    for a, b in zip(first.iterations, again.iterations):
        np.testing.assert_array_equal(a.genome, b.genome)
        np.testing.assert_array_equal(a.head_mask, b.head_mask)
        assert a.history == b.history and a.fitness == b.fitness
    np.testing.assert_array_equal(first.params["layers"]["wo"], again.params["layers"]["wo"])
    kept = pipeline.run_tyr(params, CFG, calib, SPARSITY, tyr_config(iterations=2, keep_supernets=True),
                            work_dir=tmp_path / "kept", progress=False)
    assert (tmp_path / "kept" / "supernet_0").exists()
    np.testing.assert_array_equal(kept.iterations[-1].genome, first.iterations[-1].genome)


def _run(work_dir, mesh: str, *args: str) -> None:
    done = run_check("resume_check.py", [str(work_dir), mesh, *args], 4, cache_dir=work_dir.parent / "xla_cache")
    expected = 0 if args[0] == "finish" else -9
    assert done.returncode == expected, done.stderr[-3000:]


def test_killed_sharded_run_resumes_in_the_supernet_and_in_the_search(tmp_path):
    work, mesh = tmp_path / "work", "data=2,tensor=2"
    _run(work, mesh, "kill-block", "0")
    assert json.loads((work / "supernet_0" / "supernet.json").read_text())["completed"] == 1
    assert not (work / "search_0.json").exists()
    _run(work, mesh, "kill-generation", "0")
    assert json.loads((work / "supernet_0" / "supernet.json").read_text())["completed"] == 2
    assert json.loads((work / "search_0.json").read_text())["generation"] == 1
    _run(work, mesh, "finish", str(tmp_path / "out.npz"))
    with np.load(tmp_path / "out.npz") as f:
        r = dict(f)
    assert r["resumed/built_blocks"].tolist() == [] and r["resumed/saved_generations"].tolist() == [1, 2]
    assert r["fresh/built_blocks"].tolist() == [0, 1] and r["fresh/saved_generations"].tolist() == [0, 1, 2]
    for name in RESULTS:
        np.testing.assert_array_equal(r[f"resumed/{name}"], r[f"fresh/{name}"], err_msg=name)
