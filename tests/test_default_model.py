"""The embedded default (real SmolLM2-135M-Instruct) against transformers, and the CLI on it."""
import json

import numpy as np
import pytest
import torch

import tyrjax
from tyrjax.cli import main
from tyrjax.evaluation.perplexity import perplexity
from tyrjax.model.decoder import forward_jit


@pytest.fixture(scope="module")
def default_model():
    return tyrjax.load_model()


@pytest.fixture(scope="module")
def hf_model(default_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(default_model.directory), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def short_windows(default_model):
    sets = tyrjax.evaluation_sets(default_model, eval_windows=2)
    return np.concatenate([sets["shakespeare"][:, :192], sets["pydoc"][:, :192]])


def test_logits_match_transformers_on_real_text(default_model, hf_model, short_windows):
    ours = np.asarray(forward_jit(default_model.params, default_model.cfg, short_windows))
    with torch.no_grad():
        ref = hf_model(torch.as_tensor(short_windows, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_perplexity_matches_transformers(default_model, hf_model, short_windows):
    ours = perplexity(default_model.params, default_model.cfg, short_windows, batch_size=2, progress=False)
    with torch.no_grad():
        out = hf_model(torch.as_tensor(short_windows, dtype=torch.long), labels=torch.as_tensor(short_windows, dtype=torch.long))
    assert ours == pytest.approx(float(torch.exp(out.loss)), rel=1e-3)


def test_generation_is_fluent_and_stops(default_model):
    text = tyrjax.generate_text(default_model, "The capital of France is", max_new_tokens=8)
    assert "Paris" in text


def test_eval_command_writes_metrics(tmp_path, capsys):
    assert main(["eval", "--eval-windows", "1", "--eval-data", "pydoc", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"model", "ppl", "params"}
    assert 5 < metrics["ppl"]["pydoc"] < 30
    assert metrics["params"]["attn_mlp"] == 106_168_320
    assert "pydoc" in capsys.readouterr().out


def test_window_longer_than_positions_is_a_clear_error(default_model):
    with pytest.raises(tyrjax.TyrjaxError, match="8192"):
        tyrjax.evaluation_sets(default_model, eval_windows=1, window_length=9000)
