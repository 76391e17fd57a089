"""An SDS run on a mesh stopped as it reaches its second block, resumed, and run afresh.

    python tests/helpers/sds_resume_check.py WORK_DIR MESH OUT.npz   (XLA_FLAGS from the caller)

For each way of holding the streams (on the devices, and on the host in chunks under a small
budget), OUT.npz holds "PATH/fresh/NAME" and "PATH/resumed/NAME" for every layer weight,
"PATH/blocks_at_stop" (the blocks the store held when the run stopped), "PATH/resumed_blocks"
(the blocks the resumed run computed) and "PATH/chunked" (whether the host's chunked loop ran
them); OUT.json holds both runs' per-layer records.
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


def watch_blocks(blocks_run: list[tuple[str, int]], stop: int | None = None) -> None:
    """Both block loops note each block they run (loop, block), and raise `Stopped` on reaching
    block `stop`."""
    for name in ("process_block", "process_block_chunked"):
        run_block = getattr(pipeline, name)

        def watched(*args, block, _run_block=run_block, _name=name, **kwargs):
            if block == stop:
                raise Stopped
            blocks_run.append((_name, block))
            return _run_block(*args, block=block, **kwargs)

        setattr(pipeline, name, watched)


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
        watch_blocks([], stop=1)
        if not stops(lambda: pipeline.run_sds_pipeline(params, CFG, calib, mesh=mesh, budget_bytes=budget,
                                                       store_dir=store, **SDS)):
            sys.exit("the run was meant to stop in block 1")
        pipeline.process_block, pipeline.process_block_chunked = unpatched
        arrays[f"{path}/blocks_at_stop"] = np.int64(json.loads((store / PROGRESS).read_text())["completed"])
        resumed_blocks = []
        watch_blocks(resumed_blocks)
        runs[path]["resumed"] = pipeline.run_sds_pipeline(params, CFG, calib, mesh=mesh, budget_bytes=budget,
                                                          store_dir=store, **SDS)
        pipeline.process_block, pipeline.process_block_chunked = unpatched
        arrays[f"{path}/resumed_blocks"] = np.array([block for _, block in resumed_blocks])
        arrays[f"{path}/chunked"] = np.bool_({loop for loop, _ in resumed_blocks} == {"process_block_chunked"})
        for run, (new, report) in runs[path].items():
            arrays.update({f"{path}/{run}/{k}": np.asarray(v) for k, v in new["layers"].items()})
            records[f"{path}/{run}"] = report["layers"]
    np.savez(out_path, **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(records))


if __name__ == "__main__":
    main()
