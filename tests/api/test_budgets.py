"""tyrjax.api.budgets: `--device-memory` reaches evaluation's vocabulary chunks and SDS's block loop,
and a budget below one chunk stops before any work."""
import numpy as np
import pytest

import tyrjax
from tyrjax import DataConfig, ModelSpec, SDSConfig
from tyrjax.api.budgets import evaluation_vocab_chunk, sds_capture_chunk
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.checkpoints.loading import load_model
from tyrjax.cli import main
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.parallel.memory import GB
from tyrjax.sds.capture import WINDOW_CHUNK

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True)
DATA = DataConfig(calib_windows=2, eval_windows=1, eval_corpora=("pydoc",))
SMALL_GB = 0.05  # the embedding (6.3 MB) and about a fifth of one window's logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 1, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    model = load_model(str(path))
    return path, model, tyrjax.evaluation_sets(model, 1, ("pydoc",))


def test_a_small_budget_chunks_the_evaluation_vocabulary_with_the_same_losses(tiny):
    path, model, sets = tiny
    assert evaluation_vocab_chunk(model, sets, 1, int(1 * GB)) == CFG.vocab_size
    chunk = evaluation_vocab_chunk(model, sets, 1, int(SMALL_GB * GB))
    assert 128 <= chunk < CFG.vocab_size // 4 and chunk % 128 == 0
    whole = tyrjax.evaluate(model, sets=sets, progress=False)
    chunked = tyrjax.evaluate(model, sets=sets, progress=False, device_memory_gb=SMALL_GB)
    np.testing.assert_allclose(chunked.metrics["window_nll"]["pydoc"], whole.metrics["window_nll"]["pydoc"], rtol=1e-5)


def test_a_budget_below_one_chunk_stops_eval_and_sds_before_any_work(tiny, tmp_path):
    path, model, sets = tiny
    with pytest.raises(TyrjaxError, match=r"^evaluation needs at least 0\.0\d+ GB .*--device-memory 0\.0\d"):
        tyrjax.evaluate(ModelSpec(str(path)), sets=sets, out=tmp_path / "eval", device_memory_gb=0.001)
    # from a data config, the batch's forward is checked first, and names the smallest budget too
    with pytest.raises(TyrjaxError, match=r"^--batch-size 1: .* the smallest budget that works is --device-memory 0\.0\d+$"):
        tyrjax.evaluate(ModelSpec(str(path)), data=DATA, out=tmp_path / "eval", device_memory_gb=0.001)
    calib = tyrjax.calibration_windows(model, calib_windows=2)
    assert sds_capture_chunk(model, calib, int(1 * GB)) == 2  # both windows: fewer than WINDOW_CHUNK
    assert WINDOW_CHUNK > 2
    # enough for the evaluation's chunks, not for SDS's weights, streams and one layer's fit
    evaluation_vocab_chunk(model, sets, 1, int(0.01 * GB))
    with pytest.raises(TyrjaxError, match=r"^SDS needs at least 0\.01\d+ GB .*--device-memory 0\.02"):
        sds_capture_chunk(model, calib, int(0.01 * GB))
    # the command stops on the first size that does not fit (here one evaluation window's forward)
    with pytest.raises(TyrjaxError, match=r"the smallest budget that works is --device-memory 0\.0\d+$"):
        tyrjax.api.sds(ModelSpec(str(path)), SDSConfig(pattern="2:4", steps=2, device_memory_gb=0.01), data=DATA,
                       out=tmp_path / "sds")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "sds").exists()


@pytest.mark.parametrize("command", ["eval", "sds", "prune"])
def test_help_states_the_default_budget(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device-memory GB per-device memory budget" in text
    assert "(default: what the device reports; 16 GB on CPU)" in text
