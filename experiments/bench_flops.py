"""Achieved FLOP/s of Týr's phases on the default model, against the machine's fp32 matmul peak.

    python experiments/bench_flops.py [--blocks 4 --calib-windows 64 --candidates 16 --score-windows 1]

Phases (the embedded SmolLM2-135M, fp32):
  supernet build     `build_supernet` (statistics, local pruner over the quick preset's 9 levels,
                     propagation, levels written to disk) on the first --blocks blocks
  candidate scoring  `BatchScorer` on --candidates level-switch offspring of the centre genome
                     (the quick preset's first stage: 512-token windows, top-512 teacher, batches
                     of 4), every block of the model, with a supernet built on --score-calib-windows
  teacher top-k      `teacher_topk` on the same windows (reference)
  evaluation         `window_nll_sums` on one 1024-token window (reference)

Each phase runs twice. The first run counts: every call of a jitted tyrjax function is compiled
once more for its HLO, whose matrix FLOPs (loops counted as often as they run,
experiments/hlo_flops.py) are added up, and each call is timed alone (synchronously): the
captures, the Gram matrices (`calibration.statistics._sums`) and the local pruner of the build;
the two plain matrix products of `prune_block` that run outside jit are counted from their
shapes. The second run is timed as the phase runs in a real job. Achieved FLOP/s = FLOPs / the
second run's wall time. The peak is the best of 1024² and 2048² fp32 `jnp.dot`s (median of 5
after a warm-up), measured in the same process just before and just after each phase's timed
run; a phase's % is against the mean of the two. The whole-model supernet the scoring reads is
kept in the cache (TYRJAX_CACHE/bench_supernets) between runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hlo_flops import cost_analysis_flops, hlo_flops  # noqa: E402

import tyrjax  # noqa: E402
from tyrjax.model.decoder import is_stacked  # noqa: E402

PJIT = type(jax.jit(lambda x: x))


def matmul_peak(sizes=(1024, 2048), repeats: int = 5) -> tuple[float, int]:
    """The best fp32 matmul FLOP/s over `sizes` (median of `repeats` after warm-up), and its size."""
    dot = jax.jit(jnp.dot)
    best = (0.0, 0)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        dot(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            dot(a, b).block_until_ready()
            times.append(time.perf_counter() - start)
        best = max(best, (2.0 * n ** 3 / float(np.median(times)), n))
    return best


def _key(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    parts = []
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            parts.append((tuple(leaf.shape), str(leaf.dtype)))
        else:
            try:
                hash(leaf)
                parts.append(leaf)
            except TypeError:
                parts.append(repr(leaf))
    return (str(treedef), tuple(parts))


@dataclasses.dataclass
class Kernel:
    """What the counting run saw of one jitted function."""

    calls: int = 0
    flops: float = 0.0
    xla_flops: float = 0.0  # cost_analysis(): loop bodies once
    seconds: float = 0.0


class Counter:
    """Replaces every module-level jitted tyrjax function (wherever it is bound) by one that
    compiles it once per signature for its FLOPs and times each call alone."""

    def __init__(self):
        self.kernels: dict[str, Kernel] = defaultdict(Kernel)
        self.cache: dict[tuple, tuple] = {}
        self.patched: list[tuple] = []

    def _wrap(self, fn, name: str):
        def counted(*args, **kwargs):
            if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
                return fn(*args, **kwargs)  # inside another traced function: counted there
            key = (name, _key((args, kwargs)))
            if key not in self.cache:
                compiled = fn.lower(*args, **kwargs).compile()
                self.cache[key] = (hlo_flops(compiled.as_text()), cost_analysis_flops(compiled))
                jax.block_until_ready(fn(*args, **kwargs))  # its own compilation, outside the timing
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            k = self.kernels[name]
            k.seconds += time.perf_counter() - start
            flops, xla = self.cache[key]
            k.flops += flops.at(run_fraction(name, args))
            k.xla_flops += xla
            k.calls += 1
            return out
        return counted

    def __enter__(self):
        wrappers = {}
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith("tyrjax") or module is None:
                continue
            for attr, obj in list(vars(module).items()):
                if isinstance(obj, PJIT):
                    name = f"{obj.__module__.removeprefix('tyrjax.')}.{getattr(obj, '__name__', attr)}"
                    wrappers.setdefault(id(obj), self._wrap(obj, name))
                    self.patched.append((module, attr, obj))
                    setattr(module, attr, wrappers[id(obj)])
        return self

    def __exit__(self, *exc):
        for module, attr, obj in self.patched:
            setattr(module, attr, obj)

    def add(self, name: str, flops: float) -> None:
        """FLOPs of work outside jit, counted from shapes."""
        k = self.kernels[name]
        k.calls += 1
        k.flops += flops

    @property
    def flops(self) -> float:
        return sum(k.flops for k in self.kernels.values())


def run_fraction(name: str, args: tuple) -> float:
    """The share of a scan's conditional blocks that run: `candidate_blocks` runs the first
    `n_run` (the blocks left before the model's end, capped at k) of its k blocks and passes the
    state through the rest."""
    if name.endswith("candidate_blocks"):
        k = args[3].wo.shape[0]
        return min(int(args[2]), k) / k
    return 1.0


def first_blocks(model, n: int):
    """The default model cut to its first `n` decoder blocks (the real shapes)."""
    cfg = dataclasses.replace(model.cfg, n_layers=n)
    layers = model.params["layers"]
    layers = jax.tree_util.tree_map(lambda a: a[:n], layers) if is_stacked(model.params) else layers[:n]
    return dict(model.params, layers=layers), cfg


def eager_supernet_flops(cfg, windows: np.ndarray) -> float:
    """`prune_block`'s propagation products outside jit: heads @ wo and hidden @ w_down, per block."""
    tokens = windows.size
    return cfg.n_layers * 2.0 * tokens * cfg.hidden_size * (cfg.n_heads * cfg.head_dim + cfg.intermediate_size)


def measure(name: str, phase, eager_flops: float = 0.0) -> dict:
    """Count `phase()` once, then time it once more between two measurements of the peak (the
    machine is shared, so the peak available moves)."""
    with Counter() as counter:
        phase(0)
    if eager_flops:
        counter.add("prune_block eager products", eager_flops)
    peak_before = matmul_peak()[0]
    start = time.perf_counter()
    phase(1)
    wall = time.perf_counter() - start
    peak_after = matmul_peak()[0]
    row = {"phase": name, "flops": counter.flops, "xla_flops": sum(k.xla_flops for k in counter.kernels.values()),
           "wall_s": wall, "kernel_s": sum(k.seconds for k in counter.kernels.values()),
           "peak": (peak_before + peak_after) / 2, "peaks": (peak_before, peak_after), "kernels": dict(counter.kernels)}
    print(f"{name}: {row['flops'] / 1e9:.1f} GFLOP in {wall:.2f} s, peak {peak_before / 1e9:.0f} / {peak_after / 1e9:.0f} "
          "GFLOP/s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=4, help="blocks of the supernet build (default 4 of 30)")
    ap.add_argument("--calib-windows", type=int, default=64, help="calibration windows of the build (quick preset: 64)")
    ap.add_argument("--score-calib-windows", type=int, default=2,
                    help="calibration windows of the whole-model supernet the scoring reads (its levels' values do not "
                         "change the scoring's work)")
    ap.add_argument("--candidates", type=int, default=16, help="offspring scored (quick preset's first stage: 16)")
    ap.add_argument("--score-windows", type=int, default=1, help="512-token windows they are scored on (first stage: 1)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--phases", default="supernet,scoring,teacher,evaluation", help="which phases to run")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    from tyrjax.tyr.fitness import BatchScorer, teacher_topk
    from tyrjax.tyr.pipeline import PRESETS, initial_grid
    from tyrjax.tyr.search.levels import centre_genome
    from tyrjax.tyr.search.mutation import level_switch
    from tyrjax.tyr.supernet import build_supernet
    perplexity = importlib.import_module("tyrjax.evaluation.perplexity")  # the package re-exports a function of that name
    from tyrjax.files import cache_dir

    tcfg = PRESETS["quick"]
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.devices()[0].device_kind}")
    peak_before, size = matmul_peak()
    print(f"fp32 matmul peak before the phases: {peak_before / 1e9:.1f} GFLOP/s (n={size})")
    model = tyrjax.load_model()
    calib = tyrjax.calibration_windows(model, calib_windows=max(args.calib_windows, args.score_calib_windows,
                                                                 args.score_windows))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_flops_"))

    params, cfg = first_blocks(model, args.blocks)
    grid = initial_grid(cfg, args.sparsity, tcfg)
    build_windows = calib[:args.calib_windows]
    if "supernet" in phases:
        rows.append(measure(f"supernet build ({args.blocks} blocks, {args.calib_windows}x512 tokens)",
                            lambda run: build_supernet(params, cfg, build_windows, grid, store_dir=tmp / f"build{run}",
                                                       progress=False),
                            eager_flops=eager_supernet_flops(cfg, build_windows)))

    full_grid = initial_grid(model.cfg, args.sparsity, tcfg)
    # kept between runs: building every block's levels takes minutes and is not measured here
    supernet = build_supernet(model.params, model.cfg, calib[:args.score_calib_windows], full_grid,
                              store_dir=cache_dir() / "bench_supernets" / f"quick-{args.score_calib_windows}w",
                              progress=False)
    tokens = calib[:args.score_windows]
    teacher = teacher_topk(model.params, model.cfg, tokens, tcfg.topk)
    parent = centre_genome(full_grid)
    rng = np.random.default_rng(0)
    genomes = np.stack([level_switch(rng, parent, full_grid) for _ in range(args.candidates)])
    scorer = BatchScorer(model.params, model.cfg, supernet, batch=tcfg.candidate_batch)
    if "scoring" in phases:
        rows.append(measure(f"candidate scoring ({args.candidates} x {args.score_windows}x512 tokens, "
                            f"{model.cfg.n_layers} blocks)", lambda run: scorer(genomes, parent, tokens, teacher.idx, teacher.logp)))
    if "teacher" in phases:
        rows.append(measure(f"teacher top-{tcfg.topk} ({args.score_windows}x512 tokens)",
                            lambda run: teacher_topk(model.params, model.cfg, tokens, tcfg.topk)))
    window = tyrjax.evaluation_sets(model, 1, ("shakespeare",))["shakespeare"]
    if "evaluation" in phases:
        rows.append(measure("evaluation forward (1x1024 tokens)",
                            lambda run: np.asarray(perplexity.window_nll_sums(model.params, model.cfg,
                                                                              jnp.asarray(window)))))

    peak_after, size_after = matmul_peak()
    print(f"fp32 matmul peak after the phases: {peak_after / 1e9:.1f} GFLOP/s (n={size_after})\n")
    print("| phase | GFLOP (HLO, loops counted) | GFLOP (cost_analysis) | wall s | GFLOP/s | peak GFLOP/s (before, after) "
          "| % of peak | in jitted calls (each alone): s | outside them |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["flops"] / r["wall_s"]
        outside = max(0.0, 1 - r["kernel_s"] / r["wall_s"])
        print(f"| {r['phase']} | {r['flops'] / 1e9:.1f} | {r['xla_flops'] / 1e9:.1f} | {r['wall_s']:.2f} | "
              f"{rate / 1e9:.1f} | {r['peaks'][0] / 1e9:.0f}, {r['peaks'][1] / 1e9:.0f} | {100 * rate / r['peak']:.0f} % | "
              f"{r['kernel_s']:.2f} | {100 * outside:.0f} % of the wall |")
    print("\nper jitted function (counting run; each call timed alone):")
    print("| phase | function | calls | GFLOP | s | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for name, k in sorted(r["kernels"].items(), key=lambda kv: -kv[1].flops):
            if k.flops < 0.01 * r["flops"] and k.seconds < 0.05 * r["kernel_s"]:
                continue
            rate = k.flops / k.seconds if k.seconds else math.nan
            print(f"| {r['phase'].split(' (')[0]} | {name} | {k.calls} | {k.flops / 1e9:.1f} | {k.seconds:.2f} | "
                  f"{rate / 1e9:.1f} | {100 * rate / r['peak']:.0f} % |")


if __name__ == "__main__":
    main()
