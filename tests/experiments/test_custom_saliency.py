"""experiments/custom_saliency.py registers a saliency and a fitness and prunes with them end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tyrjax.calibration.statistics import attention_inputs, embed_windows
from tyrjax.model.blocks import layer
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "custom_saliency.py"
DAMP = 0.01  # Týr's Hessian damping: H + DAMP · mean(diag H) · I (structured.local_pruner)


def abs_taylor_removal_order(params, cfg: ModelConfig, calib: np.ndarray) -> np.ndarray:
    """Block 0's heads by their |W ⊙ H_d W| score, lowest first, computed here in float64."""
    _, heads = attention_inputs(layer(params, 0), cfg, embed_windows(params, calib))
    X = np.asarray(heads, np.float64).reshape(-1, cfg.n_heads * cfg.head_dim)
    H = X.T @ X
    H_d = H + DAMP * np.mean(np.diag(H)) * np.eye(len(H))
    W = np.asarray(params["layers"]["wo"][0], np.float64)
    scores = np.abs(W * (H_d @ W)).sum(axis=1).reshape(cfg.n_heads, cfg.head_dim).sum(axis=1)
    return np.argsort(scores, kind="stable")


def test_the_registered_saliency_decides_what_is_pruned(tmp_path):
    out = tmp_path / "runs.json"
    done = subprocess.run([sys.executable, str(EXPERIMENT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| abs-taylor | js |" in done.stdout
    record = json.loads(out.read_text())
    default, custom = record["runs"]["tyr/kl"], record["runs"]["abs-taylor/js"]
    assert default["head_mask"] != custom["head_mask"] or default["ffn_mask"] != custom["ffn_mask"]
    for run in (default, custom):
        assert np.isfinite(run["search_fitness"]) and all(np.isfinite(p) and p > 1 for p in run["ppl"].values())

    # Block 0 sees the embedded windows whatever is pruned after it, so the heads the custom run
    # removed there are the lowest-scoring ones under abs-taylor, which the default saliency's are not.
    cfg = ModelConfig.from_hf(record["config"])
    params = init_random_params(cfg, record["seed"], scale=record["scale"])
    order = abs_taylor_removal_order(params, cfg, np.asarray(record["calib"], np.int32))
    for run, by_abs_taylor in ((custom, True), (default, False)):
        removed = np.flatnonzero(~np.asarray(run["head_mask"][0], bool))
        assert len(removed) >= 1
        assert (set(removed.tolist()) == set(order[:len(removed)].tolist())) == by_abs_taylor
