"""A run directory belongs to one command and its settings: the same call resumes there, any
other call on a directory that holds files stops before any work and touches nothing."""
import json
import os
import shutil
import stat

import pytest

from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.runs.rundir import RECORD, claim_run_dir, settings_changed

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True)
FAST = ["--eval-windows", "1", "--eval-data", "pydoc"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 0, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    return path


def prune_args(tiny_dir, out, sparsity="0.5") -> list[str]:
    return ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--sparsity", sparsity,
            "--calib-windows", "1", *FAST, "--out", str(out)]


@pytest.fixture(scope="module")
def prune_run(tiny_dir, tmp_path_factory):
    """A finished structured run (its files are only read by the tests that take it)."""
    out = tmp_path_factory.mktemp("runs") / "prune"
    assert main(prune_args(tiny_dir, out)) == 0
    return out


def snapshot(directory) -> dict[str, tuple[bytes, int]]:
    """Every file under `directory` with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_eval_over_a_prune_run_stops_before_any_work_and_touches_nothing(prune_run, tiny_dir, capsys):
    before = snapshot(prune_run)
    assert main(["eval", "--model", str(tiny_dir), *FAST, "--out", str(prune_run)]) == 2
    err = capsys.readouterr().err
    assert f"--out {prune_run}: holds a run of `tyrjax prune`, not of `tyrjax eval`" in err
    assert f"written by `tyrjax {' '.join(prune_args(tiny_dir, prune_run))}`" in err
    assert "choose a new --out" in err and "--force" in err
    assert snapshot(prune_run) == before


def test_plan_and_report_over_a_prune_run_stop_too(prune_run, capsys):
    before = snapshot(prune_run)
    assert main(["plan", "--model", "llama-3.2-1b", "--out", str(prune_run)]) == 2
    assert "holds a run of `tyrjax prune`, not of `tyrjax plan`" in capsys.readouterr().err
    assert main(["report", str(prune_run), "--out", str(prune_run)]) == 2
    assert "holds a run of `tyrjax prune`, not of `tyrjax report`" in capsys.readouterr().err
    assert snapshot(prune_run) == before


def test_other_settings_stop_and_name_what_changed(prune_run, tiny_dir, capsys):
    before = snapshot(prune_run)
    assert main(prune_args(tiny_dir, prune_run, sparsity="0.4")) == 2
    err = capsys.readouterr().err
    assert f"--out {prune_run}: holds a run of `tyrjax prune` with other settings (method.sparsity)" in err
    assert snapshot(prune_run) == before


def test_a_directory_tyrjax_did_not_write_is_left_alone(tiny_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["eval", "--model", str(tiny_dir), *FAST, "--out", str(out)]) == 2
    assert "tyrjax did not write it" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["eval", "--model", str(tiny_dir), *FAST, "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").exists()


def test_the_same_command_resumes_and_force_replaces_another_run(prune_run, tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(prune_run, run)
    assert main(prune_args(tiny_dir, run)) == 0  # the same command and settings
    assert json.loads((run / RECORD).read_text())["resumes"] == 1
    assert json.loads((run / "metrics.json").read_text())["resumes"] == 1
    assert "The run was resumed once." in (run / "report.md").read_text()
    assert main(["eval", "--model", str(run / "model"), *FAST, "--out", str(run), "--force"]) == 2
    assert "lies inside --out" in capsys.readouterr().err and (run / "model").is_dir()
    assert main(["eval", "--model", str(tiny_dir), *FAST, "--out", str(run), "--force"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["command.json", "metrics.json", "perplexity_vs_dense.png",
                                                     "report.md"]
    record = json.loads((run / RECORD).read_text())
    assert record["command"] == "eval" and record["resumes"] == 0
    assert "method" not in json.loads((run / "metrics.json").read_text())


def test_run_files_get_the_mode_of_a_new_file(prune_run):
    old = os.umask(0)
    os.umask(old)
    for p in prune_run.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~old, p


def test_claim_rules(tmp_path):
    settings = {"model": "m", "data": {"eval_windows": 4}}
    claim = claim_run_dir(tmp_path / "new", "eval", settings)
    assert not claim.resumes and not (tmp_path / "new").exists()  # nothing written before `take`
    claim.take()
    claim = claim_run_dir(tmp_path / "new", "prune", {})  # only the record there: still free
    assert not claim.resumes and not claim.replaces
    claim.take()
    (tmp_path / "new" / "metrics.json").write_text("{}")
    assert claim_run_dir(tmp_path / "new", "prune", {}).resumes
    with pytest.raises(TyrjaxError, match="holds a run of `tyrjax prune`, not of `tyrjax eval`"):
        claim_run_dir(tmp_path / "new", "eval", settings)
    (tmp_path / "file").write_text("")
    with pytest.raises(TyrjaxError, match="is a file"):
        claim_run_dir(tmp_path / "file", "eval", settings)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / RECORD).write_text(json.dumps({"argv": ["/venv/bin/tyrjax", "prune", "--method", "tyr"], "cwd": "/"}))
    (legacy / "metrics.json").write_text("{}")
    with pytest.raises(TyrjaxError, match="earlier tyrjax.*written by `tyrjax prune --method tyr`"):
        claim_run_dir(legacy, "prune", {})
    assert settings_changed({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]
    assert settings_changed(None, {"a": (1, 2)}) == ["a"]
