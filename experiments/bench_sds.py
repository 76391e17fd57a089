"""Unstructured / N:M benchmark on the default model and the shakespeare-v1 protocol.

    python experiments/bench_sds.py                       # the full benchmark (hours on 2 CPU cores)
    python experiments/bench_sds.py --calib-windows 4 --eval-windows 2 --patterns 2:4 --steps 50

Methods: magnitude, wanda, sparsegpt (one-shot) and sds-wanda, sds-sparsegpt, each at every
pattern; ablations at --ablation-patterns: `sds-P:l1` (with the L1 term, λ1 = 1e-4: the tuned
default has λ1 = λ2 = 0, so it is the run "without the L1/L2 terms"), `sds-P:noreg` (forces
λ1 = λ2 = 0 whatever --l1/--l2 say) and `sds-P:dense` (re-dense on the dense model's inputs). Prints one markdown table: perplexity on held-out
Shakespeare and Python docs, the change against the one-shot base pruner, and wall time.
`--blocks N` prunes only the first N blocks (the rest stay dense) for quick comparisons.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import tyrjax
from tyrjax import api
from tyrjax.model.config import ModelConfig
from tyrjax.evaluation.perplexity import perplexity
from tyrjax.model.decoder import Params
from tyrjax.sds import prune_oneshot, run_sds_pipeline

ONESHOT = ("magnitude", "wanda", "sparsegpt")
DEFAULT_METHODS = "magnitude,wanda,sparsegpt,sds-wanda,sds-sparsegpt"
ABLATIONS = {"l1": {"l1": 1e-4}, "noreg": {"l1": 0.0, "l2": 0.0}, "dense": {"inputs": "dense"}}


def first_blocks(params: Params, cfg: ModelConfig, n: int) -> tuple[Params, ModelConfig]:
    """The model truncated to its first n blocks (stacked form), to prune only those."""
    out = dict(params)
    out["layers"] = jax.tree_util.tree_map(lambda a: a[:n], params["layers"])
    return out, cfg.replace(n_layers=n)


def splice_blocks(params: Params, pruned: Params) -> Params:
    """`params` with its first blocks replaced by the (stacked) `pruned` ones."""
    out = dict(params)
    out["layers"] = jax.tree_util.tree_map(lambda a, b: a.at[: b.shape[0]].set(b), params["layers"], pruned["layers"])
    return out


def run_method(
    params: Params, cfg: ModelConfig, calib: np.ndarray, spec: str, pattern: str, *, blocks: int | None = None,
    sds: dict[str, Any] | None = None, progress: bool = True,
) -> tuple[Params, dict[str, Any], float]:
    """Prune with `spec` (a one-shot name, or sds-PRUNER[:noreg|:dense]); returns (params, report, seconds)."""
    sds = dict(sds or {})
    base, part = (params, cfg) if blocks is None else first_blocks(params, cfg, blocks)
    start = time.perf_counter()
    if spec in ONESHOT:
        new, report = prune_oneshot(base, part, calib, pattern, spec, progress=progress)
    else:
        name, _, variant = spec.partition(":")
        if variant and variant not in ABLATIONS:
            raise SystemExit(f"unknown variant {variant!r} in {spec!r}; use one of {', '.join(ABLATIONS)}")
        sds.update(ABLATIONS.get(variant, {}))
        new, report = run_sds_pipeline(base, part, calib, pattern, name.removeprefix("sds-"), progress=progress, **sds)
    jax.block_until_ready(new)
    seconds = time.perf_counter() - start
    return (new if blocks is None else splice_blocks(params, new)), report, seconds


def evaluate(params: Params, cfg: ModelConfig, sets: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: perplexity(params, cfg, w, desc=f"ppl {k}", progress=False) for k, w in sets.items()}


def base_of(spec: str) -> str:
    return spec.split(":")[0].removeprefix("sds-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--patterns", default="0.5,2:4,4:8")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--ablation-patterns", default="2:4", help="patterns that also run the ablations ('' for none)")
    ap.add_argument("--ablations", default="l1,dense", help=f"ablation variants of every sds method, from {', '.join(ABLATIONS)}")
    ap.add_argument("--blocks", type=int, default=None, help="prune only the first N blocks")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--adjust-steps", type=int, default=None)
    ap.add_argument("--adjust", default="paper", choices=["paper", "always"])
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--l1", type=float, default=None)
    ap.add_argument("--l2", type=float, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = ap.parse_args()

    model = tyrjax.load_model()
    calib = api.calibration_windows(model, "shakespeare", args.calib_windows)
    sets = api.evaluation_sets(model, args.eval_windows)
    sds = dict(steps=args.steps, adjust_steps=args.adjust_steps, adjust=args.adjust, lr=args.lr, l1=args.l1, l2=args.l2)
    methods = [m for m in args.methods.split(",") if m]
    ablated = [p for p in args.ablation_patterns.split(",") if p]
    dense = api.dense_reference(model, sets)["ppl"]
    print(f"dense: {dense}", flush=True)
    results = []
    for pattern in (p for p in args.patterns.split(",") if p):
        specs = list(methods)
        if pattern in ablated:
            specs += [f"{m}:{a}" for m in methods if m.startswith("sds-") for a in args.ablations.split(",") if a]
        for spec in specs:
            params, report, seconds = run_method(model.params, model.cfg, calib, spec, pattern, blocks=args.blocks, sds=sds)
            ppl = evaluate(params, model.cfg, sets)
            results.append({"pattern": pattern, "method": spec, "ppl": ppl, "wall_s": round(seconds, 1),
                            "sparsity": report["sparsity"], "chosen": report.get("chosen"),
                            "hyperparameters": report.get("hyperparameters")})
            print(json.dumps(results[-1]), flush=True)
            del params
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "dense": dense, "results": results}, indent=2))
    print_table(dense, results)


def print_table(dense: dict[str, float], results: list[dict[str, Any]]) -> None:
    """Markdown: ppl per corpus, change vs the one-shot base pruner of the same pattern, wall time."""
    corpora = list(dense)
    base = {(r["pattern"], r["method"]): r["ppl"] for r in results if r["method"] in ONESHOT}
    print("| pattern | method | " + " | ".join(f"ppl {c}" for c in corpora) + " | vs base | wall s |")
    print("|---|---|" + "---|" * len(corpora) + "---|---|")
    print("| dense | | " + " | ".join(f"{dense[c]:.3f}" for c in corpora) + " | | |")
    for r in results:
        ref = base.get((r["pattern"], base_of(r["method"]))) if r["method"] not in ONESHOT else None
        change = " / ".join(f"{100 * (r['ppl'][c] / ref[c] - 1):+.1f}%" for c in corpora) if ref else ""
        cells = " | ".join(f"{r['ppl'][c]:.3f}" for c in corpora)
        print(f"| {r['pattern']} | {r['method']} | {cells} | {change} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
