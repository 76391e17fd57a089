"""An SDS run on a mesh stopped inside its second block, resumed, and run afresh.

    python tests/helpers/sds_resume_check.py WORK_DIR MESH OUT.npz   (XLA_FLAGS from the caller)

For each way of holding the streams (on the devices, and on the host in chunks under a small
budget), OUT.npz holds "PATH/fresh/NAME" and "PATH/resumed/NAME" for every layer weight, and
"PATH/blocks_at_stop" (the blocks the store held when the run stopped) and "PATH/chunked" (whether
the host's chunked loop ran the blocks); OUT.json holds both
runs' per-layer records.
"""
import json
import sys
from pathlib import Path

import numpy as np

import tyrjax.sds.pipeline as pipeline
from scale_fixtures import CFG, configure_jax, tiny_model
from tyrjax.model.blocks import device_bytes
from tyrjax.parallel.sharding import make_mesh
from tyrjax.sds.store import PROGRESS

SDS = dict(pattern="2:4", pruner="sparsegpt", steps=3, adjust_steps=3, adjust="always", progress=False)


class Stopped(Exception):
    """What a kill leaves: the run stops at the start of a block."""


def stop_at_block(stop: int, loops_run: list[str]) -> None:
    """Both block loops raise `Stopped` when they reach block `stop`; each call's loop is noted."""
    for name in ("process_block", "process_block_chunked"):
        run_block = getattr(pipeline, name)

        def stopping(*args, block, _run_block=run_block, _name=name, **kwargs):
            loops_run.append(_name)
            if block == stop:
                raise Stopped
            return _run_block(*args, block=block, **kwargs)

        setattr(pipeline, name, stopping)


def stops(run) -> bool:
    """Whether `run()` stopped with `Stopped`."""
    try:
        run()
    except Stopped:
        return True
    return False


def main() -> None:
    configure_jax()
    work_dir, mesh, out_path = Path(sys.argv[1]), make_mesh(sys.argv[2]), Path(sys.argv[3])
    params, calib = tiny_model()
    host_budget = int(2 * device_bytes(params) + pipeline.sums_bytes(CFG) + 2 * pipeline.window_bytes(CFG, 16))
    paths = {"device": None, "host": host_budget}
    runs = {path: {"fresh": pipeline.run_sds_pipeline(params, CFG, calib, mesh=mesh, budget_bytes=budget, **SDS)}
            for path, budget in paths.items()}
    unpatched = pipeline.process_block, pipeline.process_block_chunked
    arrays, records = {}, {}
    for path, budget in paths.items():
        store = work_dir / path
        loops_run = []
        stop_at_block(1, loops_run)
        if not stops(lambda: pipeline.run_sds_pipeline(params, CFG, calib, mesh=mesh, budget_bytes=budget,
                                                       store_dir=store, **SDS)):
            sys.exit("the run was meant to stop in block 1")
        pipeline.process_block, pipeline.process_block_chunked = unpatched
        arrays[f"{path}/blocks_at_stop"] = np.int64(json.loads((store / PROGRESS).read_text())["completed"])
        arrays[f"{path}/chunked"] = np.bool_(set(loops_run) == {"process_block_chunked"})
        runs[path]["resumed"] = pipeline.run_sds_pipeline(params, CFG, calib, mesh=mesh, budget_bytes=budget,
                                                          store_dir=store, **SDS)
        for run, (new, report) in runs[path].items():
            arrays.update({f"{path}/{run}/{k}": np.asarray(v) for k, v in new["layers"].items()})
            records[f"{path}/{run}"] = report["layers"]
    np.savez(out_path, **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(records))


if __name__ == "__main__":
    main()
