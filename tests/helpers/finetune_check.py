"""Fine-tuning of a tiny sparse model, killed with SIGKILL after a checkpoint and resumed, or run on a mesh.

    python finetune_check.py CKPT_DIR kill STEP          trains; dies (SIGKILL) once step STEP is checkpointed
    python finetune_check.py CKPT_DIR resume OUT.npz      resumes CKPT_DIR to the end, then runs afresh without
                                                          checkpoints; saves both as "resumed/*" and "fresh/*"
    python finetune_check.py - mesh OUT.npz MESH...        one device, then each mesh (e.g. data=8, data=2,fsdp=4):
                                                          saves "one/*" and "MESH/*"
"""
import dataclasses
import os
import signal
import sys
from pathlib import Path

import numpy as np
from recovery_fixtures import CFG, SMALL, dense_params, sparse_params, windows
from scale_fixtures import configure_jax

from tyrjax.parallel.sharding import make_mesh
from tyrjax.recovery.modules import weight_masks
from tyrjax.recovery.train import train
from tyrjax.tyr.fitness import teacher_topk

CONFIG = dataclasses.replace(SMALL, tokens=6 * 8 * 16, batch_size=8, loss="kd+lm", lr=1e-2)
BUDGET = 16 * 10**9


def run(checkpoint_dir, mesh=None, on_step=None, method="lora") -> dict[str, np.ndarray]:
    teacher_params, student = dense_params(), sparse_params(dense_params(), "2:4")
    config = dataclasses.replace(CONFIG, method=method)
    result = train(student, CFG, windows(config.windows), config, masks=weight_masks(student),
                   teacher=lambda b: teacher_topk(teacher_params, CFG, b, config.topk, mesh=mesh),
                   checkpoint_dir=checkpoint_dir, mesh=mesh, budget_bytes=BUDGET, progress=False, on_step=on_step)
    layers = result.params["layers"]
    out = {name: np.asarray(layers[name]) for name in ("wq", "wk", "wo", "w_up", "w_down", "attn_norm")}
    out["final_norm"] = np.asarray(result.params["final_norm"])
    out["losses"] = result.losses
    out["resumed_at"] = np.asarray(result.resumed_at)
    return out


def main() -> None:
    configure_jax()
    ckpt, mode = sys.argv[1], sys.argv[2]
    if mode == "kill":
        kill_at = int(sys.argv[3])

        def die(step, loss):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        run(Path(ckpt), on_step=die)
        sys.exit("not killed")
    results = {}
    if mode == "resume":
        for name, directory in (("resumed", Path(ckpt)), ("fresh", None)):
            results.update({f"{name}/{k}": v for k, v in run(directory).items()})
    else:
        for method in ("lora", "full"):
            results.update({f"{method}/one/{k}": v for k, v in run(None, method=method).items()})
            for text in sys.argv[4:]:
                results.update({f"{method}/{text}/{k}": v for k, v in run(None, make_mesh(text), method=method).items()})
    np.savez(sys.argv[3], **results)


if __name__ == "__main__":
    main()
