"""Run the sharded phases on simulated CPU devices, and on one device, and save both.

    python tests/multidevice_check.py OUT.npz MESH [MESH ...]   (XLA_FLAGS from the caller)

For one device ("one") and each mesh: the supernet (its blocks' levels stacked), the teacher,
the searched genome and its fitness, the SDS weights of the first block, the Wanda-sp and FLAP
masks (and FLAP's biases) and the forward logits go into OUT.npz as "LABEL/NAME"; OUT.json holds the PartitionSpecs the sharded arrays really had
(the levels as the scorer lays out a batch of candidates' block).
"""
import json
import sys
from pathlib import Path

import numpy as np

from scale_fixtures import CFG, SPARSITY, configure_jax, tiny_model, tyr_config
from tyrjax.model.decoder import forward_jit
from tyrjax.sds.pipeline import run_sds_pipeline
from tyrjax.parallel.sharding import make_mesh
from tyrjax.tyr.baselines import structured_baseline
from tyrjax.tyr.fitness import BatchScorer, teacher_topk
from tyrjax.tyr.pipeline import initial_grid, search_iteration
from tyrjax.tyr.supernet import BlockLevels, build_supernet


def phases(params, calib, mesh) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tcfg = tyr_config()
    grid = initial_grid(CFG, SPARSITY, tcfg)
    supernet = build_supernet(params, CFG, calib, grid, progress=False, mesh=mesh)
    teacher = teacher_topk(params, CFG, calib, tcfg.topk, mesh=mesh)
    found = search_iteration(params, CFG, supernet, grid, calib, teacher, tcfg, 0, None, False, mesh)
    first_block = dict(params, layers={k: v[:1] for k, v in params["layers"].items()})
    sds, _ = run_sds_pipeline(first_block, CFG.replace(n_layers=1), calib, "2:4", "sparsegpt", steps=4, adjust_steps=4,
                              adjust="always", progress=False, mesh=mesh)
    logits = forward_jit(params, CFG, calib, mesh)
    baselines = {}
    for method in ("wanda-sp", "flap"):
        pruned, _, head, ffn, _ = structured_baseline(params, CFG, calib, SPARSITY, method,
                                                      mlp_multiple=tcfg.mlp_multiple, progress=False, mesh=mesh)
        baselines.update({f"{method}.head_keep": head, f"{method}.ffn_keep": ffn})
    baselines["flap.bo"] = np.asarray(pruned["layers"]["bo"])  # the compensation biases
    blocks = [supernet.block(b) for b in range(supernet.n_blocks)]
    out = {f"supernet.{f}": np.stack([getattr(levels, f) for levels in blocks]) for f in BlockLevels._fields}
    out.update({f"sds.{k}": np.asarray(v) for k, v in sds["layers"].items()}, **baselines)
    out.update(teacher_idx=teacher.idx, teacher_logp=teacher.logp, genome=found.genome,
               fitness=np.float64(found.fitness), logits=np.asarray(logits))
    specs = {}
    if mesh:
        scorer = BatchScorer(params, CFG, supernet, tcfg.candidate_batch, mesh=mesh)
        genomes = np.repeat(found.genome[None], scorer.batch, 0)
        placed = scorer.put_levels(scorer.candidate_levels(scorer.call_blocks(0, CFG.n_layers), genomes))
        specs = {"candidate_levels.wo": str(placed.wo.sharding.spec), "logits": str(logits.sharding.spec)}
    return out, specs


def main() -> None:
    configure_jax()
    out_path, meshes = Path(sys.argv[1]), sys.argv[2:]
    params, calib = tiny_model()
    arrays, specs = {}, {}
    for label in ["one", *meshes]:
        mesh = None if label == "one" else make_mesh(label)
        values, specs[label] = phases(params, calib, mesh)
        arrays.update({f"{label}/{k}": v for k, v in values.items()})
    np.savez(out_path, **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(specs))


if __name__ == "__main__":
    main()
