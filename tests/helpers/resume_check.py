"""A Týr run on a mesh that can be killed (SIGKILL) mid-way, like a preempted host, and resumed.

    python tests/resume_check.py WORK_DIR MESH kill-block N        killed once block N is saved
    python tests/resume_check.py WORK_DIR MESH kill-generation N   killed once generation N is saved
    python tests/resume_check.py WORK_DIR MESH finish OUT.npz       resumes WORK_DIR, then runs
                                                                    afresh in WORK_DIR.fresh

`finish` saves both runs' results to OUT.npz as "resumed/NAME" and "fresh/NAME", with the
blocks each run built and the generations each run saved.
"""
import os
import signal
import sys
from pathlib import Path

import numpy as np

import tyrjax.tyr.pipeline as pipeline
import tyrjax.tyr.supernet as supernet
from scale_fixtures import CFG, SPARSITY, configure_jax, tiny_model, tyr_config
from tyrjax.parallel.sharding import make_mesh

TCFG = tyr_config(generations=3)
SAVED: dict[str, list[int]] = {"blocks": [], "generations": []}
KILL_AT: dict[str, int] = {}


def record_saves() -> None:
    """Note every supernet block and search generation written; die right after the one to kill at."""
    save_block, save_state = supernet.SupernetStore.save_block, pipeline.save_state

    def block_saved(self, block, levels, stream):
        save_block(self, block, levels, stream)
        SAVED["blocks"].append(block)
        if KILL_AT.get("block") == block:
            os.kill(os.getpid(), signal.SIGKILL)

    def generation_saved(path, state):
        save_state(path, state)
        SAVED["generations"].append(state.generation - 1)
        if KILL_AT.get("generation") == state.generation - 1:
            os.kill(os.getpid(), signal.SIGKILL)

    supernet.SupernetStore.save_block = block_saved
    pipeline.save_state = generation_saved


def run(work_dir: Path, mesh) -> dict[str, np.ndarray]:
    SAVED["blocks"], SAVED["generations"] = [], []
    params, calib = tiny_model()
    result = pipeline.run_tyr(params, CFG, calib, SPARSITY, TCFG, work_dir=work_dir, progress=False, mesh=mesh)
    history = result.iterations[0].history
    return {"genome": result.iterations[0].genome, "fitness": np.array([h["fitness"] for h in history]),
            "head": result.head_mask, "ffn": result.ffn_mask, "wo": np.asarray(result.params["layers"]["wo"]),
            "w_down": np.asarray(result.params["layers"]["w_down"]),
            "built_blocks": np.array(SAVED["blocks"]), "saved_generations": np.array(SAVED["generations"])}


def main() -> None:
    configure_jax()
    work_dir, mesh, mode = Path(sys.argv[1]), make_mesh(sys.argv[2]), sys.argv[3]
    record_saves()
    if mode != "finish":
        KILL_AT[mode.removeprefix("kill-")] = int(sys.argv[4])
        run(work_dir, mesh)
        sys.exit("the run was meant to be killed")
    resumed, fresh = run(work_dir, mesh), run(Path(f"{work_dir}.fresh"), mesh)
    np.savez(sys.argv[4], **{f"resumed/{k}": v for k, v in resumed.items()},
             **{f"fresh/{k}": v for k, v in fresh.items()})


if __name__ == "__main__":
    main()
