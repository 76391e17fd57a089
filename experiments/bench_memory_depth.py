"""Peak resident memory and wall time of `tyrjax prune` against model depth.

    python experiments/make_random_checkpoints.py --out /tmp/tyrjax-depth
    python experiments/bench_memory_depth.py --checkpoints /tmp/tyrjax-depth [--layers 4,8,16,32] [--out runs/depth]
                                             [--modes stream,held]

Runs `tyrjax prune --method tyr` on each OUT/layers-L checkpoint in its own process, with settings
small enough for 2 CPU cores (one iteration, one generation of 4 offspring, 2 calibration windows,
one evaluation window), and measures that process's peak RSS and CPU time (`os.wait4`) and its
wall time. Each mode is one way of holding the model: `stream` passes `--stream` (blocks read
from the checkpoint when needed), `held` keeps the whole model in memory. Prints a markdown table
per mode with ratios to the shallowest model: memory should stay flat with depth (at most 1.3x)
while time grows linearly. CPU time is the measure of work that other processes on a shared
machine do not inflate.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tyrjax.model.config import ModelConfig

PRUNE_ARGS = ["--method", "tyr", "--preset", "quick", "--sparsity", "0.5", "--iterations", "1", "--generations", "1",
              "--offspring", "4", "--calib-windows", "2", "--eval-windows", "1", "--eval-data", "pydoc"]


MODE_ARGS = {"stream": ["--stream"], "held": []}


def run_prune(model_dir: Path, out: Path, mode: str) -> tuple[float, float, float]:
    """(peak RSS in MB, CPU seconds, wall seconds) of `tyrjax prune` on `model_dir`, in its own process."""
    command = [sys.executable, "-m", "tyrjax.cli", "prune", "--model", str(model_dir), "--out", str(out), *PRUNE_ARGS,
               *MODE_ARGS[mode]]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
    with child.stderr:
        stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)  # the rusage of this child alone (RUSAGE_CHILDREN would be the max of all)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = stderr.decode(errors="replace")[-2000:]
        raise SystemExit(f"tyrjax prune failed on {model_dir}:\n{tail}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, wall  # Linux reports ru_maxrss in kB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, required=True, help="the --out of make_random_checkpoints.py")
    ap.add_argument("--layers", default="4,8,16,32", help="comma-separated depths (default 4,8,16,32)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-memory-depth"), help="run directories go here")
    ap.add_argument("--modes", default="stream,held", help="comma-separated: stream (--stream), held (default: both)")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        if mode not in MODE_ARGS:
            raise SystemExit(f"--modes: unknown mode {mode!r}; use {', '.join(MODE_ARGS)}")
    depths = [int(x) for x in args.layers.split(",")]
    for n in depths:
        if not (args.checkpoints / f"layers-{n}" / "config.json").exists():
            raise SystemExit(f"{args.checkpoints / f'layers-{n}'}: missing; run experiments/make_random_checkpoints.py "
                             f"--out {args.checkpoints}")
    for mode in args.modes.split(","):
        print(f"\n### {mode}\n")
        print_table(measure(args.checkpoints, depths, args.out / mode, mode))


def measure(checkpoints: Path, depths: list[int], out: Path, mode: str) -> list[tuple]:
    rows = []
    for n in depths:
        model_dir = checkpoints / f"layers-{n}"
        rss, cpu, wall = run_prune(model_dir, out / f"layers-{n}", mode)
        phases = json.loads((out / f"layers-{n}" / "metrics.json").read_text())["wall_s"]
        cfg = ModelConfig.from_json_file(model_dir / "config.json")
        rows.append((n, cfg.total_params() / 1e6, rss, cpu, wall, phases))
        print(f"{mode}, {n} layers: peak RSS {rss:.0f} MB, CPU {cpu:.1f} s, wall {wall:.1f} s", file=sys.stderr)
    return rows


def print_table(rows: list[tuple]) -> None:
    rss0, cpu0 = rows[0][2], rows[0][3]
    print("| layers | parameters (M) | peak RSS (MB) | RSS / shallowest | CPU (s) | CPU / shallowest | wall (s) | "
          "supernet wall (s) | search wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, params, rss, cpu, wall, phases in rows:
        print(f"| {n} | {params:.1f} | {rss:.0f} | {rss / rss0:.2f} | {cpu:.0f} | {cpu / cpu0:.2f} | {wall:.0f} | "
              f"{phases.get('supernet', float('nan')):.0f} | {phases.get('search', float('nan')):.0f} |")
    worst = max(r[2] for r in rows) / rss0
    print(f"\npeak RSS, deepest against shallowest: {rows[-1][2] / rss0:.2f}x (largest {worst:.2f}x; target at most 1.30x)",
          flush=True)


if __name__ == "__main__":
    main()
