"""A one-shot or SDS run stopped after a finished block resumes there with the uninterrupted result,
on one device and on a mesh."""
import json

import jax
import numpy as np
import pytest

from tyrjax.cli import main
from tyrjax.model.blocks import device_bytes
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.sds import pipeline
from tyrjax.sds.pipeline import run_pipeline, sds_fit, sds_settings, sums_bytes, window_bytes
from tyrjax.sds.store import PipelineStore, pipeline_key
from tyrjax.sparse import parse_pattern
from scale_fixtures import run_check

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=48)
WINDOWS = np.random.default_rng(1).integers(0, 64, (6, 32)).astype(np.int32)
PATTERN = parse_pattern("2:4")
FITS_PER_BLOCK = 7  # q, k, v, o, gate, up, down


class Interrupted(Exception):
    """What a kill leaves: the run stops in the middle of a block."""


def sds_layer_fit(steps: int = 4):
    settings = sds_settings("sparsegpt", steps, None, None, None, None, "adam", "pruned")
    return sds_fit("sparsegpt", PATTERN, **{k: v for k, v in settings.items() if k != "inputs"}, head_dim=CFG.head_dim)


def stopped_after(fit, n_fits: int):
    """`fit`, raising `Interrupted` at its call `n_fits + 1`."""
    calls = []

    def fit_or_stop(name, W, inputs):
        if len(calls) == n_fits:
            raise Interrupted
        calls.append(name)
        return fit(name, W, inputs)

    return fit_or_stop


def leaves(params) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(params)]


@pytest.mark.parametrize("on_host", [False, True], ids=["streams-on-device", "streams-on-host-in-chunks"])
def test_a_stopped_run_resumes_after_its_last_finished_block_with_the_uninterrupted_result(tmp_path, on_host, capsys):
    params = init_random_params(CFG, 0)
    budget = int(2 * device_bytes(params) + sums_bytes(CFG) + 4 * window_bytes(CFG, 32)) if on_host else None
    fit = sds_layer_fit()
    run = dict(dense_stream=True, pattern=PATTERN, progress=False, budget_bytes=budget)
    want, want_records = run_pipeline(params, CFG, WINDOWS, fit, **run)

    # The directory first holds a block of a run with other settings: it is started over, not mixed in.
    other = PipelineStore(tmp_path / "store", pipeline_key(CFG, WINDOWS, method="sds-sparsegpt", steps=2))
    with pytest.raises(Interrupted):
        run_pipeline(params, CFG, WINDOWS, stopped_after(sds_layer_fit(2), FITS_PER_BLOCK + 3), store=other, **run)
    assert other.completed() == 1

    store = PipelineStore(tmp_path / "store", pipeline_key(CFG, WINDOWS, method="sds-sparsegpt", steps=4))
    capsys.readouterr()
    with pytest.raises(Interrupted):  # stopped in block 1's o_proj
        run_pipeline(params, CFG, WINDOWS, stopped_after(fit, FITS_PER_BLOCK + 3), store=store, **run)
    assert "resuming" not in capsys.readouterr().out
    assert store.completed() == 1 and other.completed() == 0
    kept = sorted(p.name for p in store.dir.glob("*stream*"))
    assert kept == ["dense_stream_0001.npy", "stream_0001.npy"]  # block 1's inputs only

    got, records = run_pipeline(params, CFG, WINDOWS, fit, store=store, **run)
    assert f"resuming from {store.dir}: 1 of {CFG.n_layers} blocks finished" in capsys.readouterr().out
    assert store.completed() == CFG.n_layers
    for a, b in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert records == want_records


def test_a_killed_sds_command_resumes_and_deletes_its_blocks_once_saved(tiny_model_dir, tmp_path, monkeypatch, capsys):
    argv = ["sds", "--model", str(tiny_model_dir), "--pruner", "wanda", "--pattern", "2:4", "--steps", "3",
            "--calib-windows", "2", "--eval-windows", "1", "--eval-data", "pydoc"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert not (tmp_path / "whole" / "work").exists()

    out = tmp_path / "resumed"
    process_block = pipeline.process_block

    def second_block_stops(*args, block, **kwargs):
        if block == 1:
            raise Interrupted
        return process_block(*args, block=block, **kwargs)

    monkeypatch.setattr(pipeline, "process_block", second_block_stops)
    with pytest.raises(Interrupted):
        main([*argv, "--out", str(out)])
    monkeypatch.undo()
    assert json.loads((out / "work" / "blocks" / "progress.json").read_text())["completed"] == 1
    capsys.readouterr()

    assert main([*argv, "--out", str(out)]) == 0
    assert f"resuming from {out / 'work' / 'blocks'}: 1 of 2 blocks finished" in capsys.readouterr().out
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["window_nll"] == whole["window_nll"] and resumed["ppl"] == whole["ppl"]
    assert json.loads((out / "layer_losses.json").read_text()) == json.loads(
        (tmp_path / "whole" / "layer_losses.json").read_text())
    assert resumed["resumes"] == 1 and not (out / "work").exists()


def test_a_stopped_sds_run_on_a_mesh_resumes_with_the_uninterrupted_result(tmp_path):
    """On 4 simulated devices (windows over data=2, weights over tensor=2), with the streams on
    the devices and on the host in chunks: stopped at block 1 of 2, then resumed bit for bit."""
    out = tmp_path / "sds.npz"
    done = run_check("sds_resume_check.py", [str(tmp_path / "work"), "data=2,tensor=2", str(out)], 4)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as f:
        r = dict(f)
    for path, chunked in (("device", False), ("host", True)):
        assert bool(r[f"{path}/chunked"]) == chunked
        assert int(r[f"{path}/blocks_at_stop"]) == 1 and r[f"{path}/resumed_blocks"].tolist() == [1]
        names = [k.rsplit("/", 1)[1] for k in r if k.startswith(f"{path}/fresh/")]
        assert len(names) == 9
        for name in names:
            np.testing.assert_array_equal(r[f"{path}/resumed/{name}"], r[f"{path}/fresh/{name}"], err_msg=f"{path} {name}")
        assert records[f"{path}/resumed"] == records[f"{path}/fresh"]
