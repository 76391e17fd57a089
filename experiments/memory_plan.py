"""Týr's per-device memory for Llama-3.1-8B and 70B from XLA's analysis of the compiled phases
(`tyrjax.runs.xla_plan`, the library behind `tyrjax plan`), on simulated CPU devices.

    python experiments/memory_plan.py [--out DIR]

Plans, each `--preset paper`, bf16 weights:
  - Llama-3.1-8B, blocks streamed from the checkpoint, one device;
  - Llama-3.1-70B on 8 devices, `tensor=8` and `fsdp=8`, the model held;
  - Llama-3.1-70B on 8 devices, `tensor=8`, blocks streamed from the checkpoint.
Prints one markdown table per plan and writes DIR/NAME/plan.json. Sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 itself when it is not set.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from tyrjax.files import write_json  # noqa: E402
from tyrjax.model.catalog import builtin_config  # noqa: E402
from tyrjax.parallel.sharding import make_mesh  # noqa: E402
from tyrjax.runs.xla_plan import plan  # noqa: E402

GB = 10**9
# (name, model, mesh (None: one device), --stream, budget per device)
PLANS = [
    ("llama-3.1-8b-stream-1dev", "llama-3.1-8b", None, True, 16 * GB),
    ("llama-3.1-70b-tensor8", "llama-3.1-70b", "tensor=8", False, 40 * GB),
    ("llama-3.1-70b-fsdp8", "llama-3.1-70b", "fsdp=8", False, 40 * GB),
    ("llama-3.1-70b-tensor8-stream", "llama-3.1-70b", "tensor=8", True, 40 * GB),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/memory_plan"), help="where each plan.json goes")
    args = ap.parse_args()
    for name, model, mesh_text, stream, budget in PLANS:
        mesh = None
        if mesh_text:
            mesh = make_mesh(mesh_text, jax.devices()[:8])
        result = plan(builtin_config(model), "paper", mesh, stream, budget,
                      model_name=f"{model} --preset paper{' --stream' if stream else ''}")
        write_json(args.out / name / "plan.json", result.to_json())
        print(result.table() + "\n")


if __name__ == "__main__":
    main()
