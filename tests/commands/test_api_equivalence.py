"""Each command is its API call: `tyrjax prune`, `tyrjax sds` and `tyrjax eval` write the metrics
the Python API returns for the same settings, on a tiny saved model; `tyrjax sds --stream`, reading
the model block by block, writes what the model in memory gives."""
import json

import numpy as np
import pytest

import tyrjax
from tyrjax import DataConfig, ModelSpec, SDSConfig
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True)
EVAL_FLAGS = ["--eval-windows", "1", "--eval-data", "pydoc"]
FLAGS = ["--calib-windows", "2", *EVAL_FLAGS]
DATA = DataConfig(calib_windows=2, eval_windows=1, eval_corpora=("pydoc",))
# Fields that differ between two runs of the same settings: wall-clock times, where files went.
RUN_FIELDS = ("wall_s", "outputs", "resumes")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 1, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    return path


def written(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def comparable(metrics: dict) -> dict:
    """metrics as metrics.json holds them (JSON types), without the per-run fields."""
    return {k: v for k, v in json.loads(json.dumps(metrics)).items() if k not in RUN_FIELDS}


def test_prune_command_writes_what_the_api_returns(tiny_dir, tmp_path):
    out = tmp_path / "cmd"
    assert main(["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", "--seed", "3",
                 "--out", str(out), *FLAGS]) == 0
    result = tyrjax.prune(ModelSpec(str(tiny_dir)), "uniform", sparsity=0.5, config=tyrjax.api.preset_config(seed=3),
                          data=DATA, progress=False)
    assert result.run_dir is None
    assert comparable(written(out)) == comparable(result.metrics)
    assert set(written(out)["wall_s"]) == set(result.metrics["wall_s"])
    saved = load_model(str(out / "model"))
    assert saved.cfg == result.model.cfg
    np.testing.assert_array_equal(np.asarray(saved.params["embed"]), np.asarray(result.model.params["embed"]))
    distribution = json.loads((out / "distribution.json").read_text())
    assert distribution["removed_groups"] == result.removed_groups.tolist()
    assert result.head_mask.shape == (2, 4) and result.ffn_mask.shape == (2, 64)


def test_sds_command_writes_what_the_api_returns(tiny_dir, tmp_path):
    out = tmp_path / "cmd"
    assert main(["sds", "--model", str(tiny_dir), "--pruner", "wanda", "--pattern", "2:4", "--steps", "2",
                 "--l2", "0.001", "--out", str(out), *FLAGS]) == 0
    api_out = tmp_path / "api"
    result = tyrjax.api.sds(load_model(str(tiny_dir)), SDSConfig(pruner="wanda", pattern="2:4", steps=2, l2=0.001),
                            data=DATA, out=api_out, progress=False)
    assert result.run_dir == api_out and comparable(written(api_out)) == comparable(result.metrics)
    assert comparable(written(out)) == comparable(result.metrics)
    assert json.loads((out / "layer_losses.json").read_text()) == json.loads((api_out / "layer_losses.json").read_text())
    assert set(result.layers) == set(result.metrics["sparsity"]["per_layer"])


def test_eval_command_writes_what_the_api_returns(tiny_dir, tmp_path):
    run = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_dir), "--method", "magnitude", "--pattern", "0.5", "--out", str(run),
                 *FLAGS]) == 0
    out = tmp_path / "cmd"
    assert main(["eval", "--model", str(run / "model"), "--out", str(out), *EVAL_FLAGS]) == 0
    result = tyrjax.evaluate(str(run / "model"), data=DATA, progress=False)
    metrics = written(out)
    assert comparable(metrics) == comparable(result.metrics)
    # the pruned model is scored beside the dense model its run recorded
    assert metrics["pruned_by"]["method"] == "magnitude" and metrics["dense_ppl"] == written(run)["dense_ppl"]
    assert result.ppl == written(run)["ppl"]


def test_streamed_sds_writes_the_held_runs_results(tiny_dir, tmp_path):
    flags = [*FLAGS, "--pruner", "sparsegpt", "--pattern", "2:4", "--steps", "2"]
    runs = {}
    for name, extra in (("held", []), ("streamed", ["--stream"])):
        assert main(["sds", "--model", str(tiny_dir), *flags, *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = ({k: v for k, v in written(tmp_path / name).items() if k not in RUN_FIELDS},
                      json.loads((tmp_path / name / "layer_losses.json").read_text()))
    held, streamed = runs["held"], runs["streamed"]
    assert streamed[1] == held[1]
    assert streamed[0]["sparsity"] == held[0]["sparsity"] and streamed[0]["params"] == held[0]["params"]
    for key in ("ppl", "dense_ppl"):
        assert streamed[0][key] == pytest.approx(held[0][key], rel=1e-5)
