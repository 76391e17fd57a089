"""`tyrjax sds --stream`: the model read block by block gives the run the model in memory gives."""
import json

import pytest

from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True)
FLAGS = ["--calib-windows", "2", "--eval-windows", "1", "--eval-data", "pydoc", "--pruner", "sparsegpt",
         "--pattern", "2:4", "--steps", "2"]
RUN_FIELDS = ("wall_s", "outputs", "resumes")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 1, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    return path


def test_streamed_sds_writes_the_held_runs_results(tiny_dir, tmp_path):
    runs = {}
    for name, extra in (("held", []), ("streamed", ["--stream"])):
        assert main(["sds", "--model", str(tiny_dir), *FLAGS, *extra, "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        runs[name] = ({k: v for k, v in metrics.items() if k not in RUN_FIELDS},
                      json.loads((tmp_path / name / "layer_losses.json").read_text()))
    held, streamed = runs["held"], runs["streamed"]
    assert streamed[1] == held[1]
    assert streamed[0]["sparsity"] == held[0]["sparsity"] and streamed[0]["params"] == held[0]["params"]
    for key in ("ppl", "dense_ppl"):
        assert streamed[0][key] == pytest.approx(held[0][key], rel=1e-5)
