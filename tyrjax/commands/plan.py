"""`tyrjax plan`: each phase's memory per device from XLA's own analysis, before any run."""
from __future__ import annotations

import argparse
from pathlib import Path

from tyrjax.commands.common import positive_float, positive_int
from tyrjax.files import write_json
from tyrjax.model.catalog import HF_CONFIGS, resolve_config
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.parallel.sharding import make_mesh
from tyrjax.runs.rundir import claim_run_dir
from tyrjax.runs.xla_plan import PlanSettings, plan
from tyrjax.tyr.pipeline import PRESETS

DESCRIPTION = f"""\
For every phase (Týr's teacher, supernet build and search scoring, perplexity evaluation, SDS
and the structured baselines) the real jitted functions are lowered and compiled for abstract
arrays with the shapes, dtypes and shardings of the run, on the devices present; no weights
are created or read. Each phase's figure is its largest compiled call (memory_analysis:
arguments + outputs + temporaries - aliases) plus what the phase keeps alive between calls;
the analytical count stands beside it. Writes OUT/plan.json and prints the same as a table.

CONFIG is a built-in name ({', '.join(HF_CONFIGS)}),
a config.json or a model directory.

Simulated devices: to plan for N devices on a machine with fewer, run with
  XLA_FLAGS=--xla_force_host_platform_device_count=N tyrjax plan --mesh tensor=N ...
A budget below what some phase's smallest chunk needs writes plan.json ("fits": false) and
stops with an error naming the phase and the smallest budget that works. On CPU devices XLA
computes bf16 matmuls on fp32 copies of their operands, so bf16 figures made on CPU include
copies an accelerator does not make.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="per-device memory of every phase, from XLA's analysis of the compiled functions",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="CONFIG", help="built-in name, config.json or model directory")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="Týr preset (default %(default)s)")
    p.add_argument("--mesh", default=None,
                   help="device mesh, e.g. data=2,tensor=4 (axes data, fsdp, tensor); default: one device")
    p.add_argument("--stream", action="store_true", help="blocks read from the checkpoint when needed, only the head held")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default %(default)s)")
    p.add_argument("--calib-windows", type=positive_int, default=None,
                   help="512-token calibration windows (default: the last search stage's, at least 64)")
    p.add_argument("--device-memory", type=positive_float, default=None, metavar="GB",
                   help="per-device budget in GB (default: what the device reports; 16 on CPU)")
    p.add_argument("--out", type=Path, required=True,
                   help="directory for plan.json (a new one, or one of an earlier plan; another run's stops)")
    p.add_argument("--force", action="store_true",
                   help="write into --out even when it holds another run (whose files are deleted first) or files "
                        "tyrjax did not write (which are kept)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # A plan takes seconds to remake: any plan may replace one, no other command's run.
    claim = claim_run_dir(Path(args.out), "plan", {}, args.force, inputs=[p for p in [args.model] if Path(p).exists()])
    cfg = resolve_config(args.model)
    mesh = make_mesh(args.mesh) if args.mesh else None
    budget = device_memory_bytes(args.device_memory)
    settings = PlanSettings(preset=args.preset, stream=args.stream, dtype=args.dtype, calib_windows=args.calib_windows)
    result = plan(cfg, args.preset, mesh, args.stream, budget, model_name=str(args.model), settings=settings)
    claim.take()
    path = write_json(Path(args.out) / "plan.json", result.to_json())
    print(result.table())
    print(f"wrote {path}")
    result.check_budget()
