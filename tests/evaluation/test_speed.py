"""The speed probe measures what it says: a prefill and a KV-cached greedy decode."""
import numpy as np

from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.evaluation.speed import measure_speed


def test_measure_speed_reports_prefill_and_decode():
    cfg = ModelConfig(vocab_size=50, hidden_size=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, intermediate_size=16)
    out = measure_speed(init_random_params(cfg, 0), cfg, batch=2, prompt_len=8, new_tokens=4, repeats=1)
    assert set(out) == {"ttft_s", "decode_tok_s"}
    assert 0 < out["ttft_s"] < 60 and np.isfinite(out["decode_tok_s"]) and out["decode_tok_s"] > 0
