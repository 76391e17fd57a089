"""Outputs of a tiny model's supernet (held and stored), search scores, SDS weights and layer losses
(four variants: SparseGPT, Wanda with the adjustment everywhere, the fit on dense inputs, the
streams on the host in chunks), one-shot SparseGPT and structured baselines, for a comparison
between two trees: which arrays differ, whether any zero pattern does, and the largest difference.

    PYTHONPATH=TREE_A python experiments/bit_identity_check.py A.npz STORE_A
    PYTHONPATH=TREE_B python experiments/bit_identity_check.py B.npz STORE_B
    python experiments/bit_identity_check.py --compare A.npz B.npz
"""
import sys

import numpy as np
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.tyr.pipeline import TyrConfig, initial_grid
from tyrjax.tyr.supernet import build_supernet
from tyrjax.tyr.fitness import BatchScorer, teacher_topk
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.tyr.baselines import structured_baseline
from tyrjax.sds import prune_oneshot, run_sds_pipeline

if sys.argv[1] == "--compare":
    a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
    shared = [k for k in a.files if k in b.files]
    differ = sorted(set(a.files) ^ set(b.files)) + [k for k in shared if not np.array_equal(a[k], b[k])]
    zeros = [k for k in shared if ".loss." not in k and not np.array_equal(a[k] == 0, b[k] == 0)]
    worst = max((float(np.max(np.abs(a[k] - b[k]))) for k in shared if a[k].dtype.kind == "f"), default=0.0)
    losses = [k for k in shared if ".loss." in k]
    rel = max((float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(a[k]), 1e-12))) for k in losses), default=0.0)
    print(f"{len(a.files)} arrays; differing: {len(differ)} ({', '.join(differ[:6]) or 'none'}"
          f"{', …' if len(differ) > 6 else ''}); zero patterns differing: {zeros or 'none'}; "
          f"largest difference {worst:.3g}; layer losses to {rel:.3g} relative")
    sys.exit(1 if differ else 0)

cfg = ModelConfig(vocab_size=128, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
params = init_random_params(cfg, 0, scale=0.2)
calib = np.random.default_rng(0).integers(0, 128, (12, 32))
tcfg = TyrConfig(topk=16, candidate_batch=4, mlp_multiple=4, interval=0.25)
grid = initial_grid(cfg, 0.4, tcfg)
out = {}
for name, store in (("held", None), ("stored", sys.argv[2])):
    sn = build_supernet(params, cfg, calib, grid, store_dir=store, progress=False)
    for b in range(cfg.n_layers):
        for f, a in sn.block(b)._asdict().items():
            out[f"{name}.{b}.{f}"] = np.asarray(a)
    teacher = teacher_topk(params, cfg, calib, 16)
    parent = centre_genome(grid)
    genomes = np.stack([level_switch(i, parent, grid) for i in range(6)])
    out[f"{name}.scores"] = BatchScorer(params, cfg, sn, batch=4)(genomes, parent, calib, teacher.idx, teacher.logp)
SDS_VARIANTS = {"sds": {"pruner": "sparsegpt"}, "sds-wanda": {"pruner": "wanda", "adjust": "always"},
                "sds-dense-inputs": {"pruner": "sparsegpt", "inputs": "dense", "adjust": "always"},
                "sds-chunked": {"pruner": "sparsegpt", "adjust": "always", "budget_bytes": 600_000}}
for tag, kw in SDS_VARIANTS.items():
    sds, report = run_sds_pipeline(params, cfg, calib, "2:4", steps=5, progress=False, **kw)
    out.update({f"{tag}.{k}": np.asarray(v) for k, v in sds["layers"].items()})
    out.update({f"{tag}.loss.{layer}.{k}": np.asarray(v) for layer, r in report["layers"].items()
                for k, v in r["loss"].items()})
oneshot, _ = prune_oneshot(params, cfg, calib, "0.5", "sparsegpt", progress=False)
out.update({f"oneshot.{k}": np.asarray(v) for k, v in oneshot["layers"].items()})
for method in ("wanda-sp", "flap"):
    p, _, head, ffn, _ = structured_baseline(params, cfg, calib, 0.4, method, mlp_multiple=4, progress=False)
    out[f"{method}.head"], out[f"{method}.ffn"] = head, ffn
    out[f"{method}.bo"] = np.asarray(p["layers"]["bo"]) if "bo" in p["layers"] else np.zeros(1)
np.savez(sys.argv[1], **out)
