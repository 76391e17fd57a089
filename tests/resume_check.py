"""A Týr run that can be killed (SIGKILL) mid-way, like a preempted host, and resumed.

    python tests/resume_check.py WORK_DIR MESH kill-block N        killed once block N is saved
    python tests/resume_check.py WORK_DIR MESH kill-generation N   killed once generation N is saved
    python tests/resume_check.py WORK_DIR MESH finish OUT.npz       resumes WORK_DIR, then runs
                                                                    afresh in WORK_DIR.fresh

MESH is a --mesh string, or "none" for one device. `finish` saves both runs' results to OUT.npz
as "resumed/NAME" and "fresh/NAME".
"""
import os
import signal
import sys
from pathlib import Path

import numpy as np

import tyrjax.tyr.pipeline as pipeline
import tyrjax.tyr.supernet as supernet
from scale_fixtures import CFG, SPARSITY, tiny_model, tyr_config
from tyrjax.sharding import make_mesh

TCFG = tyr_config(generations=3)


def die_after(fn, is_last):
    def wrapped(*args):
        fn(*args)
        if is_last(*args):
            os.kill(os.getpid(), signal.SIGKILL)

    return wrapped


def run(work_dir: Path, mesh) -> dict[str, np.ndarray]:
    params, calib = tiny_model()
    result = pipeline.run_tyr(params, CFG, calib, SPARSITY, TCFG, work_dir=work_dir, progress=False, mesh=mesh)
    history = result.iterations[0].history
    return {"genome": result.iterations[0].genome, "fitness": np.array([h["fitness"] for h in history]),
            "head": result.head_mask, "ffn": result.ffn_mask, "wo": np.asarray(result.params["layers"]["wo"]),
            "w_down": np.asarray(result.params["layers"]["w_down"])}


def main() -> None:
    work_dir, mesh_text, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    mesh = None if mesh_text == "none" else make_mesh(mesh_text)
    if mode == "kill-block":
        last = int(sys.argv[4])
        store = supernet.SupernetStore
        store.save_block = die_after(store.save_block, lambda self, block, levels, stream: block == last)
    elif mode == "kill-generation":
        last = int(sys.argv[4])
        pipeline.save_state = die_after(pipeline.save_state, lambda path, state: state.generation == last + 1)
    if mode != "finish":
        run(work_dir, mesh)
        sys.exit("the run was meant to be killed")
    resumed, fresh = run(work_dir, mesh), run(Path(f"{work_dir}.fresh"), mesh)
    np.savez(sys.argv[4], **{f"resumed/{k}": v for k, v in resumed.items()},
             **{f"fresh/{k}": v for k, v in fresh.items()})


if __name__ == "__main__":
    main()
