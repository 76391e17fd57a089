"""Týr against the structured baselines on the default model (shakespeare-v1 protocol).

    python experiments/bench_tyr.py [--preset quick] [--sparsities 0.25,0.5] [--calib-windows 64]
                                    [--eval-windows 16] [--methods magnitude,wanda-sp,flap,uniform,tyr]
                                    [--iterations N] [--generations N] [--ppl-only]

For each sparsity and method (Týr reported after its first and after its last iteration, from
one run, each re-pruned along its found path as `tyrjax prune` outputs it): perplexity on held-out Shakespeare and pydoc, attention+MLP
parameters removed, wall time. Then, in the same run, the compact Týr model at the largest
sparsity against the dense model (prefill latency and decode throughput, ratios) and candidate
scoring batched against one by one (ratio); --ppl-only leaves these two out. Full Týr is
also compared window by window with its first iteration and with uniform (the perplexity
change with a 95 % paired-bootstrap interval over the evaluation windows). Prints markdown tables.
"""
import argparse
import dataclasses
import time

import numpy as np

import tyrjax
from tyrjax.evaluation.paired import format_ratio, paired_ratio
from tyrjax.tyr.search.levels import centre_genome
from tyrjax.tyr.search.mutation import level_switch
from tyrjax.evaluation.speed import measure_speed
from tyrjax.tyr.fitness import BatchScorer, teacher_topk
from tyrjax.tyr.pipeline import PRESETS, distribution_selection, initial_grid, removed_groups, run_tyr
from tyrjax.tyr.supernet import build_supernet


def evaluate_compact(model, sets, params, ccfg, label):
    """Score a compact result; returns (model, `tyrjax.api.perplexity_metrics`, fraction removed)."""
    pruned = tyrjax.Model(params, ccfg, model.tokenizer, label)
    return (pruned, tyrjax.api.perplexity_metrics(pruned, sets, progress=False),
            1 - ccfg.attn_mlp_params() / model.cfg.attn_mlp_params())


def run_method(model, calib, sets, sparsity, method, tcfg, data, preset):
    """Rows of (label, model, metrics, removed, wall s). Týr also reports its first iteration's
    result (what one iteration alone gives) from the same run, with that iteration's time."""
    if method != "tyr":
        result = tyrjax.prune(model, method, sparsity=sparsity, config=tcfg, preset=preset, data=data, progress=False)
        removed = 1 - result.model.cfg.attn_mlp_params() / model.cfg.attn_mlp_params()
        return [(method, result.model, result.metrics, removed, result.metrics["wall_s"]["prune"])]
    result = run_tyr(model.params, model.cfg, calib, sparsity, tcfg)
    rows = []
    for i, it in enumerate(result.iterations):
        label = "tyr (1 iteration)" if i == 0 else f"tyr ({i + 1} iterations)"
        wall = sum(result.supernet_s[: i + 1]) + sum(result.search_s[: i + 1])
        if i == len(result.iterations) - 1:  # the command's output: re-pruned along the found path
            selection = result.selection
            wall += sum(result.supernet_s[i + 1:])
        else:  # what this iteration alone would have output
            t0 = time.perf_counter()
            selection = distribution_selection(model.params, model.cfg, calib,
                                               removed_groups(it.head_mask, it.ffn_mask), tcfg, progress=False,
                                               settle_kv=True)
            wall += time.perf_counter() - t0
        rows.append((label, *evaluate_compact(model, sets, *selection.compact(), label), wall))
    return rows


def paired_rows(rows):
    """Full Týr against its first iteration and against uniform, window by window."""
    out = []
    for s in dict.fromkeys(r[1] for r in rows if r[1] > 0):
        at = {label: metrics for label, sparsity, metrics, _, _ in rows if sparsity == s}
        tyr = [label for label in at if label.startswith("tyr") and label != "tyr (1 iteration)"]
        for base in ("tyr (1 iteration)", "uniform"):
            if tyr and base in at:
                out.append((s, tyr[-1], base, {c: paired_ratio(at[base]["window_nll"][c], at[tyr[-1]]["window_nll"][c])
                                               for c in at[base]["window_nll"]}))
    return out


def scoring_ratio(model, calib, tcfg, sparsity, n_candidates=8):
    grid = initial_grid(model.cfg, sparsity, tcfg)
    windows = calib[:2]
    net = build_supernet(model.params, model.cfg, windows, grid, progress=False)
    teacher = teacher_topk(model.params, model.cfg, windows[:1], tcfg.topk)
    parent = centre_genome(grid)
    genomes = np.stack([level_switch(i, parent, grid) for i in range(n_candidates)])
    rows = {}
    for name, batch in (("one by one", 1), ("batched", tcfg.candidate_batch)):
        scorer = BatchScorer(model.params, model.cfg, net, batch)
        args = (genomes, parent, windows[:1], teacher.idx, teacher.logp)
        scorer(*args)  # compile
        t0 = time.perf_counter()
        scorer(*args)
        rows[name] = time.perf_counter() - t0
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    ap.add_argument("--sparsities", default="0.25,0.5")
    ap.add_argument("--methods", default="magnitude,wanda-sp,flap,uniform,tyr")
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=None, help="Týr iterations (preset default)")
    ap.add_argument("--generations", type=int, default=None, help="search generations per iteration (preset default)")
    ap.add_argument("--ppl-only", action="store_true", help="leave out the speed and scoring-ratio tables")
    args = ap.parse_args()
    overrides = {k: getattr(args, k) for k in ("iterations", "generations") if getattr(args, k) is not None}
    tcfg = dataclasses.replace(PRESETS[args.preset], **overrides)
    model = tyrjax.load_model()
    data = tyrjax.DataConfig(calib_windows=args.calib_windows, eval_windows=args.eval_windows)
    calib = tyrjax.calibration_windows(model, data.calib, args.calib_windows)
    sets = tyrjax.evaluation_sets(model, data.eval_windows, data.eval_corpora)
    dense = tyrjax.api.dense_reference(model, sets)
    rows = [("dense", 0.0, dense, 0.0, 0.0)]
    best = None
    for s in (float(x) for x in args.sparsities.split(",")):
        for method in args.methods.split(","):
            for label, pruned, metrics, removed, wall in run_method(model, calib, sets, s, method, tcfg, data, args.preset):
                rows.append((label, s, metrics, removed, wall))
                print(f"{label} @ {s}: {metrics['ppl']} removed {removed:.3f} in {wall:.0f}s", flush=True)
                if label.startswith("tyr"):
                    best = (s, pruned)
    print(f"\nmodel {model.source}; calib windows {len(calib)}; eval windows {args.eval_windows}; preset {args.preset} "
          f"{overrides or ''}\n")
    print("| method | target | removed | ppl shakespeare | ppl pydoc | wall s |")
    print("|---|---|---|---|---|---|")
    for method, s, metrics, removed, wall in rows:
        ppl = metrics["ppl"]
        print(f"| {method} | {s:.2f} | {removed:.3f} | {ppl['shakespeare']:.2f} | {ppl['pydoc']:.2f} | {wall:.0f} |")
    paired = paired_rows(rows)
    if paired:
        print("\nWindow by window (perplexity change, 95 % paired-bootstrap interval, windows better):\n")
        print("| target | model | against | shakespeare | pydoc |")
        print("|---|---|---|---|---|")
        for s, label, base, by_corpus in paired:
            cells = " | ".join(f"{format_ratio(r)}, {r.b_better}/{r.n_windows}" for r in by_corpus.values())
            print(f"| {s:.2f} | {label} | {base} | {cells} |")
    if args.ppl_only:
        return
    if best is not None:
        print(f"\nCompact Týr model at {best[0]:.2f} against the dense model (batch 1, prompt 256, 32 new tokens):\n")
        print("| model | prefill s | decode tok/s |")
        print("|---|---|---|")
        d = measure_speed(model.params, model.cfg, 1, 256, 32)
        p = measure_speed(best[1].params, best[1].cfg, 1, 256, 32)
        print(f"| dense | {d['ttft_s']:.3f} | {d['decode_tok_s']:.1f} |")
        print(f"| Týr | {p['ttft_s']:.3f} | {p['decode_tok_s']:.1f} |")
        print(f"| ratio | {d['ttft_s'] / p['ttft_s']:.2f}x | {p['decode_tok_s'] / d['decode_tok_s']:.2f}x |")
    r = scoring_ratio(model, calib, tcfg, 0.5)
    print("\nCandidate scoring, 8 candidates on 512 tokens:\n")
    print("| scoring | s | ratio |")
    print("|---|---|---|")
    print(f"| one by one | {r['one by one']:.2f} | 1.00x |")
    print(f"| batched | {r['batched']:.2f} | {r['one by one'] / r['batched']:.2f}x |")


if __name__ == "__main__":
    main()
