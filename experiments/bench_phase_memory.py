"""Each phase's measured peak memory on the default model against `tyrjax plan`'s figures.

    python experiments/bench_phase_memory.py [--calib-windows 16 --eval-windows 4 --sds-windows 8 --sds-steps 5]

Every phase (teacher, supernet build, search scoring, evaluation, SDS, the Wanda-sp baseline)
runs in its own subprocess on the embedded SmolLM2-135M in fp32, with the settings the plan is
made for (`runs.xla_plan.PlanSettings`: the quick preset, fp32, these window counts, this backend). On CPU
the device's memory is the process's, so a phase's peak is the process's resident high-water
mark (VmHWM, reset after the model and data are loaded; Linux `/proc/self/clear_refs`). Each
phase runs twice in its process:

  first run  peak − resident set after the imports: the model's weights, the data and the
             phase's arrays, plus the host memory XLA's compiler takes while the phase's
             functions compile (which no executable's memory analysis reports)
  warm run   the second run's peak − the resident set just before it (the phase's arrays; its
             functions are compiled), plus the model and data (resident set once loaded − after
             the imports): what the plan counts
  warm, anonymous   the same from the resident anonymous memory alone (RssAnon, its peak
             sampled every 2 ms): without the pages of memory-mapped files, which are the page
             cache of what the phase reads from disk (the search's supernet), not memory it holds
  warm, by arrays   the warm run's increment plus the bytes of the arrays alive once the model
             and data are loaded (`jax.live_arrays()`), instead of the resident set's growth
             while loading: that growth also holds what no device would (the machine code of
             the functions compiled while the data was made, Python's and the runtime's own
             memory), which a plan of device memory does not count

beside the XLA figure and the analytical count of `tyrjax.runs.xla_plan.plan` for the same
settings. The supernet build runs on the model's first --supernet-blocks blocks (what it holds
does not grow with the blocks built; the whole build takes many minutes here) and is planned for
that config; the search scores the quick preset's last stage (3 offspring on 4 windows) on a
whole-model supernet kept in TYRJAX_CACHE/bench_supernets (built once, as experiments/bench_flops.py
builds it).

Once the model and data are loaded, and again before the warm run, the C heap's free pages are
handed back (`malloc_trim`), so each resident figure counts what is held, not what earlier work
freed.

`--mmap-threshold BYTES` runs the phases with glibc's mmap threshold fixed there
(`MALLOC_MMAP_THRESHOLD_`). By default glibc raises the threshold each time a large block is
freed (up to 32 MB), after which XLA's buffers below it come from the heap's arenas, whose freed
chunks stay resident until trimmed: the resident peak then also holds freed buffers. A fixed
threshold maps every larger buffer on its own and unmaps it when freed, so the resident set
follows what is alive.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("teacher", "supernet", "search", "evaluation", "sds", "baselines")
GB = 1e9


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class AnonPeak:
    """The highest resident anonymous memory (RssAnon: what the process allocates, without the
    pages of memory-mapped files, such as a supernet read from disk) while the block runs,
    sampled every 2 ms by a thread: a spike shorter than that can be missed."""

    def __enter__(self) -> "AnonPeak":
        self.peak, self._stop = status_kb("RssAnon") * 1024, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, status_kb("RssAnon") * 1024)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kb("RssAnon") * 1024)


def trim_heap() -> None:
    """Collect Python's garbage and hand the C heap's free pages back to the kernel (glibc
    `malloc_trim`), so the resident set counts what is held, not what earlier work freed."""
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    """Set the resident high-water mark to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def settings_of(args):
    """The plan's settings for the measured run: on this machine's backend, so the search's head
    is planned the way it runs here (rows gathered at the top-k on a CPU)."""
    import jax

    from tyrjax.runs.xla_plan import PlanSettings

    return PlanSettings(preset="quick", dtype="float32", calib_windows=args.calib_windows, eval_windows=args.eval_windows,
                        sds_windows=args.sds_windows, sds_window=args.sds_window, sds_pattern="2:4",
                        sds_steps=args.sds_steps, platform=jax.default_backend())


def first_blocks(params, cfg, n: int):
    """The model cut to its first `n` decoder blocks (the real shapes)."""
    import jax

    layers = jax.tree_util.tree_map(lambda a: a[:n], params["layers"])
    return dict(params, layers=layers), dataclasses.replace(cfg, n_layers=n)


def run_phase(args) -> dict:
    """In the subprocess: load, reset the peak, run one phase, report the resident figures."""
    import jax
    import numpy as np

    import tyrjax

    jax.devices()
    after_imports, after_imports_anon = status_kb("VmRSS") * 1024, status_kb("RssAnon") * 1024
    from tyrjax.runs.xla_plan import plan

    s = settings_of(args)
    model = tyrjax.load_model()
    cfg, params, tcfg = model.cfg, model.params, s.tyr
    calib = tyrjax.calibration_windows(model, calib_windows=s.n_calib, length=s.window)
    store = Path(args.work) / "supernet"
    extra = {}
    if args.phase == "evaluation":
        from tyrjax.evaluation.perplexity import window_nlls

        batch = plan(cfg, "quick", None, False, settings=s, phases=("evaluation",)).phases["evaluation"].chunks[
            "windows_per_call"]
        windows = tyrjax.evaluation_sets(model, s.eval_windows, ("shakespeare",), s.eval_window)["shakespeare"]
        extra["windows_per_call"] = batch

        def phase(run):
            return window_nlls(params, cfg, windows, batch, progress=False)
    elif args.phase == "sds":
        from tyrjax.sds.pipeline import run_sds_pipeline

        sds_calib = tyrjax.calibration_windows(model, calib_windows=s.sds_windows, length=s.sds_window)

        def phase(run):
            return run_sds_pipeline(params, cfg, sds_calib, s.sds_pattern, "sparsegpt", steps=s.sds_steps,
                                    progress=False)[0]
    elif args.phase == "baselines":
        from tyrjax.tyr.baselines import structured_baseline

        def phase(run):
            return structured_baseline(params, cfg, calib, 0.5, "wanda-sp", mlp_multiple=tcfg.mlp_multiple,
                                       progress=False)[0]
    else:
        from tyrjax.tyr.fitness import BatchScorer, teacher_topk
        from tyrjax.tyr.pipeline import initial_grid
        from tyrjax.tyr.search.levels import centre_genome
        from tyrjax.tyr.search.mutation import level_switch
        from tyrjax.tyr.supernet import build_supernet

        grid = initial_grid(cfg, 0.5, tcfg)
        if args.phase == "teacher":
            def phase(run):
                return teacher_topk(params, cfg, calib, tcfg.topk).logp
        elif args.phase == "supernet":
            part, part_cfg = first_blocks(params, cfg, args.supernet_blocks)
            part_grid = initial_grid(part_cfg, 0.5, tcfg)
            params = model = None  # only the first blocks stay
            gc.collect()

            def phase(run):  # a new store each run: a build into a finished store would read it back
                build_supernet(part, part_cfg, calib, part_grid, store_dir=store / f"run{run}", progress=False)
        else:
            from tyrjax.files import cache_dir

            windows = calib[:min(s.n_calib, -(-tcfg.stages[-1][1] // s.window))]
            teacher = teacher_topk(params, cfg, windows, tcfg.topk)
            supernet = build_supernet(params, cfg, calib[:2], grid, store_dir=cache_dir() / "bench_supernets" / "quick-2w",
                                      progress=False)
            parent = centre_genome(grid)
            rng = np.random.default_rng(0)
            genomes = np.stack([level_switch(rng, parent, grid) for _ in range(tcfg.stages[-1][0])])
            scorer = BatchScorer(params, cfg, supernet, batch=tcfg.candidate_batch)
            extra["windows"], extra["candidates"] = len(windows), len(genomes)

            def phase(run):
                return scorer(genomes, parent, windows, teacher.idx, teacher.logp)
    trim_heap()
    loaded, loaded_anon = status_kb("VmRSS") * 1024, status_kb("RssAnon") * 1024
    loaded_arrays = sum(a.nbytes for a in jax.live_arrays())
    reset_peak()
    start = time.perf_counter()
    jax.block_until_ready(phase(0))
    wall = time.perf_counter() - start
    peak = status_kb("VmHWM") * 1024
    trim_heap()
    before_warm = status_kb("VmRSS") * 1024  # with the first run's compiled functions
    before_warm_anon = status_kb("RssAnon") * 1024
    reset_peak()
    start = time.perf_counter()
    with AnonPeak() as anon:
        jax.block_until_ready(phase(1))
    warm_wall = time.perf_counter() - start
    warm_peak = status_kb("VmHWM") * 1024
    return {"phase": args.phase, "after_imports": after_imports, "loaded": loaded, "peak": peak, "wall_s": wall,
            "before_warm": before_warm, "warm_peak": warm_peak, "warm_wall_s": warm_wall,
            "after_imports_anon": after_imports_anon, "loaded_anon": loaded_anon, "loaded_arrays": loaded_arrays,
            "before_warm_anon": before_warm_anon, "warm_peak_anon": anon.peak, **extra}


def plan_figures(args, phases: list[str]) -> dict:
    """The plan of every phase for the default model (the supernet's for its first blocks)."""
    from tyrjax.checkpoints.loading import load_model
    from tyrjax.runs.xla_plan import plan

    cfg = load_model().cfg
    figures = {}
    for name in phases:
        phase_cfg = dataclasses.replace(cfg, n_layers=args.supernet_blocks) if name == "supernet" else cfg
        p = plan(phase_cfg, "quick", None, False, settings=settings_of(args), phases=(name,)).phases[name]
        figures[name] = {"xla": p.xla_bytes_per_device, "plan": p.plan_bytes_per_device, "chunks": p.chunks}
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-windows", type=int, default=16, help="512-token calibration windows (teacher, supernet, "
                                                                  "baseline; the search scores on the quick preset's last stage)")
    ap.add_argument("--eval-windows", type=int, default=4, help="1024-token evaluation windows")
    ap.add_argument("--sds-windows", type=int, default=8)
    ap.add_argument("--sds-window", type=int, default=512)
    ap.add_argument("--sds-steps", type=int, default=5)
    ap.add_argument("--supernet-blocks", type=int, default=3, help="blocks of the supernet build (of 30)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="fix glibc's mmap threshold at this many bytes in the phases' processes (0: glibc's "
                         "dynamic threshold)")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(run_phase(args)))
        return
    phases = [p for p in args.phases.split(",") if p]
    figures = plan_figures(args, phases)
    work = tempfile.mkdtemp(prefix="bench_phase_memory_")
    common = [f"--calib-windows={args.calib_windows}", f"--eval-windows={args.eval_windows}",
              f"--sds-windows={args.sds_windows}", f"--sds-window={args.sds_window}", f"--sds-steps={args.sds_steps}",
              f"--supernet-blocks={args.supernet_blocks}", f"--work={work}"]
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    rows = []
    for name in phases:
        done = subprocess.run([sys.executable, __file__, f"--phase={name}", *common], capture_output=True, text=True,
                              env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"phase {name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(lines[0][len("RESULT "):]))
        print(f"{name}: {rows[-1]}", file=sys.stderr)
    print(f"settings: {settings_of(args)}; glibc mmap threshold: "
          f"{args.mmap_threshold or 'dynamic'}")
    print("| phase | first run GB (peak − after imports) | warm run GB (its increment + model and data) "
          "| warm, anonymous GB | warm, model and data by their arrays GB | XLA plan GB | analytical GB | first / XLA "
          "| warm / XLA | warm anonymous / XLA | warm by arrays / XLA | warm by arrays / analytical | plan chunks "
          "| wall s first / warm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = figures[r["phase"]]
        first = r["peak"] - r["after_imports"]
        warm = r["warm_peak"] - r["before_warm"] + r["loaded"] - r["after_imports"]
        anon = r["warm_peak_anon"] - r["before_warm_anon"] + r["loaded_anon"] - r["after_imports_anon"]
        arrays = r["warm_peak"] - r["before_warm"] + r["loaded_arrays"]
        chunks = ", ".join(f"{k}={v}" for k, v in f["chunks"].items())
        print(f"| {r['phase']} | {first / GB:.2f} | {warm / GB:.2f} | {anon / GB:.2f} | {arrays / GB:.2f} "
              f"| {f['xla'] / GB:.2f} | {f['plan'] / GB:.2f} | {first / f['xla']:.2f} | {warm / f['xla']:.2f} "
              f"| {anon / f['xla']:.2f} | {arrays / f['xla']:.2f} | {arrays / f['plan']:.2f} | {chunks} "
              f"| {r['wall_s']:.1f} / {r['warm_wall_s']:.1f} |")
    print(f"resident after imports: {rows[0]['after_imports'] / GB:.2f} GB; with the model and data: "
          f"{rows[0]['loaded'] / GB:.2f} GB (first phase)")


if __name__ == "__main__":
    main()
