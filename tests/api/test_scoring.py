"""The Python API's cached dense reference: reused when nothing changed, recomputed otherwise."""
import json

import numpy as np

from tyrjax import api
from tyrjax.checkpoints.hf import save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.checkpoints.loading import Model, load_model
from tyrjax.model.decoder import init_random_params

CFG = ModelConfig(vocab_size=30, hidden_size=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, intermediate_size=8)


def test_dense_reference_is_cached_per_weights_and_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    save_hf(init_random_params(CFG, 0), CFG, tmp_path / "m")
    model = load_model(str(tmp_path / "m"))
    sets = {"a": np.arange(20).reshape(2, 10) % 30}
    first = api.dense_reference(model, sets)
    assert first == api.perplexity_metrics(model, sets, progress=False)
    assert api.dense_reference(model, sets) == first
    assert len(list((tmp_path / "cache" / "dense_eval").glob("*.json"))) == 1
    # an entry from before per-window losses were recorded is recomputed, not served without them
    cached = next((tmp_path / "cache" / "dense_eval").glob("*.json"))
    old = {k: v for k, v in first.items() if k not in ("window_nll", "window_digest")}
    cached.write_text(json.dumps(old))
    assert api.dense_reference(model, sets) == first
    assert json.loads(cached.read_text()) == json.loads(json.dumps(first))
    other = api.dense_reference(model, {"a": sets["a"][:, ::-1].copy()})
    assert other["ppl"]["a"] != first["ppl"]["a"]
    save_hf(init_random_params(CFG, 1), CFG, tmp_path / "m")  # new weights in the same place
    assert api.dense_reference(load_model(str(tmp_path / "m")), sets)["ppl"] != first["ppl"]
    in_memory = Model(init_random_params(CFG, 2), CFG, None, "in memory")
    api.dense_reference(in_memory, sets)
    assert len(list((tmp_path / "cache" / "dense_eval").glob("*.json"))) == 3
