"""Supernet levels in float32 against bfloat16 on the default model: disk size and perplexity.

    python experiments/bench_supernet_dtype.py [--size-windows 2] [--calib-windows 8] [--eval-windows 2]

Disk: the first supernet of a Týr run at 50 % (the quick preset's nine levels per layer),
built into a store once with each dtype; the bytes of its level files. The calibration windows
do not change the size, so few are used. Perplexity: a uniform 50 % prune (the Týr local
pruner at the first grid's centre in every layer), its levels stored in each dtype and read
back into the float32 model, on the held-out evaluation windows. Prints markdown tables.
"""
import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import tyrjax
from tyrjax.tyr.pipeline import PRESETS, initial_grid, uniform_selection
from tyrjax.tyr.supernet import build_supernet

DTYPES = ("float32", "bfloat16")


def store_bytes(directory: Path) -> int:
    """Bytes of a supernet store's level files (the stream file, float32 either way, left out)."""
    return sum(p.stat().st_size for p in directory.glob("block_*.npy"))


def supernet_sizes(model, windows, tcfg) -> dict[str, tuple[int, float]]:
    """dtype -> (bytes on disk, build seconds) of the first supernet of a 50 % run."""
    grid = initial_grid(model.cfg, 0.5, tcfg)
    sizes = {}
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_supernet(model.params, model.cfg, windows, grid, store_dir=Path(tmp) / "supernet", dtype=dtype,
                           progress=False)
            sizes[dtype] = store_bytes(Path(tmp) / "supernet"), time.perf_counter() - t0
    return sizes


def uniform_perplexities(model, calib, sets, tcfg) -> dict[str, dict[str, float]]:
    """dtype -> perplexity per corpus of the uniform 50 % prune with its levels in that dtype."""
    out = {}
    for dtype in DTYPES:
        selection = uniform_selection(model.params, model.cfg, calib, 0.5,
                                      dataclasses.replace(tcfg, supernet_dtype=dtype), progress=False)
        params, ccfg = selection.compact()
        pruned = tyrjax.Model(params, ccfg, model.tokenizer, f"uniform 50 %, {dtype} levels")
        out[dtype] = tyrjax.evaluate(pruned, sets, progress=False)["ppl"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-windows", type=int, default=2, help="calibration windows of the nine-level builds")
    ap.add_argument("--calib-windows", type=int, default=8, help="calibration windows of the uniform prune")
    ap.add_argument("--eval-windows", type=int, default=2)
    args = ap.parse_args()
    tcfg = PRESETS["quick"]
    model = tyrjax.load_model()
    calib = tyrjax.calibration_windows(model, calib_windows=args.calib_windows)
    sets = tyrjax.evaluation_sets(model, args.eval_windows)
    sizes = supernet_sizes(model, calib[:args.size_windows], tcfg)
    ppl = uniform_perplexities(model, calib, sets, tcfg)
    print(f"\nmodel {model.source}; nine-level supernet at 50 % on {args.size_windows} calibration windows; "
          f"uniform 50 % on {args.calib_windows} calibration windows, {args.eval_windows} evaluation windows\n")
    corpora = list(sets)
    print("| levels | supernet on disk (MB) | build s | " + " | ".join(f"uniform 50 % ppl {c}" for c in corpora) + " |")
    print("|---|---|---|" + "---|" * len(corpora))
    for dtype in DTYPES:
        size, seconds = sizes[dtype]
        cells = " | ".join(f"{ppl[dtype][c]:.3f}" for c in corpora)
        print(f"| {dtype} | {size / 1e6:.1f} | {seconds:.0f} | {cells} |")
    ratio = sizes["bfloat16"][0] / sizes["float32"][0]
    changes = ", ".join(f"{c} {ppl['bfloat16'][c] / ppl['float32'][c] - 1:+.3%}" for c in corpora)
    print(f"\nbfloat16 / float32 on disk: {ratio:.3f}; perplexity change with bfloat16 levels: {changes}")


if __name__ == "__main__":
    main()
