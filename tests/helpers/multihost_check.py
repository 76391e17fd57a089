"""One process of a two-process run on this machine (each process sees 2 CPU devices).

    python tests/multihost_check.py PORT PROCESS_ID ROOT

Joins the other process over 127.0.0.1:PORT, runs Týr on one 4-device mesh spanning both
processes with its work directory in ROOT/work<PROCESS_ID>, writes a run file into
ROOT/run<PROCESS_ID> the way commands do, scores perplexity with the parameters sharded over
both processes, and saves what it found to ROOT/result<PROCESS_ID>.npz (outside the guarded
writers: it is the check's own output).
"""
import sys
from pathlib import Path

import jax
import numpy as np

from tyrjax.parallel.distributed import initialize, is_writer

PORT, PROCESS_ID, ROOT = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
initialize(f"127.0.0.1:{PORT}", 2, PROCESS_ID)

from scale_fixtures import CFG, SPARSITY, configure_jax, tiny_model, tyr_config  # noqa: E402
from tyrjax.evaluation.perplexity import perplexity  # noqa: E402
from tyrjax.runs.rundir import claim_run_dir  # noqa: E402
from tyrjax.files import write_json
from tyrjax.parallel.sharding import make_mesh  # noqa: E402
from tyrjax.model.axes import shard_params
from tyrjax.tyr.pipeline import run_tyr  # noqa: E402


def main() -> None:
    configure_jax()
    mesh = make_mesh("data=2,tensor=2")
    assert mesh.devices.size == 4 and len(jax.local_devices()) == 2
    params, calib = tiny_model()
    result = run_tyr(params, CFG, calib, SPARSITY, tyr_config(), work_dir=ROOT / f"work{PROCESS_ID}", progress=False,
                     mesh=mesh)
    run_dir = ROOT / f"run{PROCESS_ID}"
    claim_run_dir(run_dir, "check", {}).take()
    write_json(run_dir / "metrics.json", {"fitness": result.iterations[0].fitness})
    ppl = perplexity(shard_params(params, CFG, mesh), CFG, calib, batch_size=4, progress=False)
    np.savez(ROOT / f"result{PROCESS_ID}.npz", genome=result.iterations[0].genome, head=result.head_mask,
             ffn=result.ffn_mask, wo=np.asarray(result.params["layers"]["wo"]),
             w_down=np.asarray(result.params["layers"]["w_down"]), ppl=ppl, writer=is_writer())


if __name__ == "__main__":
    main()
