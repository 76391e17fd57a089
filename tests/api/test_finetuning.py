import dataclasses
import json

import numpy as np
import pytest
from recovery_fixtures import CFG, SMALL, compact_params, dense_params, model_dir, sparse_params

from tyrjax.api.configs import DataConfig
from tyrjax.api.finetuning import finetune
from tyrjax.checkpoints.loading import load_model
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import init_random_params
from tyrjax.recovery.modules import zero_count

DATA = DataConfig(eval_windows=1, eval_corpora=("shakespeare",))
CONFIG = dataclasses.replace(SMALL, data="sotu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dense = dense_params()
    compact, ccfg = compact_params(dense)
    return {"dense": model_dir(root / "dense", dense),
            "compact": model_dir(root / "compact", compact, ccfg),
            "sparse": model_dir(root / "sparse", sparse_params(dense, "2:4"), orbax=True)}


def test_finetune_a_sparse_model_writes_metrics_plot_and_the_merged_model(models, tmp_path):
    out = tmp_path / "run"
    result = finetune(str(models["sparse"]), CONFIG, teacher=str(models["dense"]), data=DATA, out=out, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["ppl"]) == set(m["ppl_before"]) == {"shakespeare"}
    assert m["train"]["tokens"] == 256 and m["train"]["steps"] == 4 and len(m["train"]["loss"]) == 4
    assert m["train"]["final_loss"] == m["train"]["loss"][-1] and m["train"]["wall_s"] > 0
    assert m["train"]["forward_tokens_per_s"] > 0 and m["train"]["step_tokens_per_s"] > 0
    assert m["train"]["warm_step_tokens_per_s"] > m["train"]["step_tokens_per_s"]  # the first step compiles
    assert m["sparsity"]["zeros_before"] == m["sparsity"]["zeros_after"] > 0
    assert (out / "loss_curve.png").stat().st_size > 1000
    saved = load_model(str(out / "model"))
    assert zero_count(saved.params) == m["sparsity"]["zeros_before"]
    np.testing.assert_array_equal(np.asarray(saved.params["layers"]["wq"]), np.asarray(result.model.params["layers"]["wq"]))
    assert (out / "hf" / "config.json").is_file() and (out / "checkpoints").is_dir()


def test_finetune_a_compact_model_exports_it_compact(models, tmp_path):
    config = dataclasses.replace(CONFIG, method="full", loss="kd+lm")
    finetune(str(models["compact"]), config, teacher=str(models["dense"]), data=DATA, out=tmp_path / "run",
             progress=False)
    saved = load_model(str(tmp_path / "run" / "model"))
    assert saved.cfg.layer_heads == (3, 2) and saved.cfg.layer_ffn == (32, 24)


def test_a_resumed_run_with_other_flags_refuses_naming_the_flag(models, tmp_path):
    out = tmp_path / "run"
    finetune(str(models["sparse"]), CONFIG, teacher=str(models["dense"]), data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match=r"other settings \(rank\)"):
        finetune(str(models["sparse"]), dataclasses.replace(CONFIG, rank=4), teacher=str(models["dense"]), data=DATA,
                 out=out, progress=False)
    # a run-only setting (the checkpoint interval) resumes
    again = finetune(str(models["sparse"]), dataclasses.replace(CONFIG, checkpoint_every=3), teacher=str(models["dense"]),
                     data=DATA, out=out, progress=False)
    assert again.metrics["train"]["resumed_at_step"] == 4


def test_bad_input_stops_before_any_work(models, tmp_path):
    out = tmp_path / "run"
    other_vocab = model_dir(tmp_path / "other", init_random_params(CFG.replace(vocab_size=128), 0),
                            CFG.replace(vocab_size=128))
    with pytest.raises(TyrjaxError, match="vocabulary has 128 tokens but the model's has 97"):
        finetune(str(models["sparse"]), CONFIG, teacher=str(other_vocab), data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match="--rank 20 exceeds the width 16 of layer 1's q projection"):
        finetune(str(models["compact"]), dataclasses.replace(CONFIG, rank=20, targets=("q",)),
                 teacher=str(models["dense"]), data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match="--targets q,mlp: mlp names no layer"):
        finetune(str(models["compact"]), dataclasses.replace(CONFIG, targets=("q", "mlp")), teacher=str(models["dense"]),
                 data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match="distils from the dense model, and none is known"):
        finetune(str(models["compact"]), CONFIG, data=DATA, out=out, progress=False)
    missing = tmp_path / "no-such-run" / "model"
    with pytest.raises(TyrjaxError, match=f"--model {missing}: no such file or directory, and not a hub name"):
        finetune(str(missing), CONFIG, data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match=f"--teacher {missing}: no such file or directory, and not a hub name"):
        finetune(str(models["compact"]), CONFIG, teacher=str(missing), data=DATA, out=out, progress=False)
    with pytest.raises(TyrjaxError, match="--data pydoc: its training split shares 1 document"):
        finetune(str(models["compact"]), dataclasses.replace(CONFIG, data="pydoc"), teacher=str(models["dense"]),
                 data=DataConfig(eval_windows=1, eval_corpora=("pydoc",)), out=out, progress=False)
    assert not out.exists()
