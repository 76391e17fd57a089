"""Pick SDS's default learning rate, λ1 and λ2 on the default model: a small staged grid.

    python experiments/sds_hparams.py --blocks 3 --calib-windows 16 --eval-windows 4 --pattern 2:4

SDS runs on the first --blocks blocks only (the rest stay dense) with --calib-windows
calibration windows; each setting is scored by the perplexity of that model on held-out
Shakespeare and Python docs (geometric mean of the two, lower is better) and, as a
calibration-side diagnostic, by the geometric mean over layers of the kept loss relative to
one-shot. Stages: λ1 (λ2 = 0, lr = 1e-3), then λ2 at the best λ1, then the learning rate.
The winner is then checked with the other pruner.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

import tyrjax
from tyrjax import api
from bench_sds import evaluate, run_method

L1_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
L2_GRID = (1e-4, 1e-3, 1e-2)
LR_GRID = (3e-4, 3e-3)


def score(ppl: dict[str, float]) -> float:
    return float(np.exp(np.mean(np.log(list(ppl.values())))))


def loss_ratio(report: dict) -> float:
    """Geometric mean over layers of (kept loss / one-shot loss): below 1 = SDS helped."""
    ratios = [r["loss"]["chosen"] / r["loss"]["oneshot"] for r in report["layers"].values() if r["loss"]["oneshot"] > 0]
    return float(np.exp(np.mean(np.log(ratios))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--pruner", default="sparsegpt")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()

    model = tyrjax.load_model()
    calib = api.calibration_windows(model, "shakespeare", args.calib_windows)
    sets = api.evaluation_sets(model, args.eval_windows)
    rows = []

    def run(spec: str, **hp: float) -> float:
        sds = {"steps": args.steps, **hp}
        params, report, seconds = run_method(model.params, model.cfg, calib, spec, args.pattern,
                                             blocks=args.blocks, sds=sds, progress=False)
        ppl = evaluate(params, model.cfg, sets)
        row = {"method": spec, **hp, "ppl": ppl, "score": score(ppl), "wall_s": round(seconds, 1)}
        if spec.startswith("sds-"):
            row.update(loss_ratio=loss_ratio(report), chosen=report["chosen"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row["score"]

    dense = evaluate(model.params, model.cfg, sets)
    print(json.dumps({"method": "dense", "ppl": dense, "score": score(dense)}), flush=True)
    sds_name = f"sds-{args.pruner}"
    run(args.pruner)
    best = {"lr": 1e-3, "l1": 0.0, "l2": 0.0}
    for key, grid in (("l1", L1_GRID), ("l2", L2_GRID), ("lr", LR_GRID)):
        scores = {best[key]: next((r["score"] for r in rows if r["method"] == sds_name and all(r.get(k) == v for k, v in best.items())), None)}
        for value in grid:
            if value in scores and scores[value] is not None:
                continue
            scores[value] = run(sds_name, **{**best, key: value})
        best[key] = min(scores, key=lambda v: scores[v])
        print(f"# best {key} = {best[key]}", flush=True)
    other = "wanda" if args.pruner == "sparsegpt" else "sparsegpt"
    run(other)
    run(f"sds-{other}", **best)
    run(f"sds-{other}", lr=1e-3, l1=0.0, l2=0.0)

    print(f"\nbest: {best}\n")
    print("| method | lr | λ1 | λ2 | ppl shakespeare | ppl pydoc | geo-mean | loss ratio | kept (oneshot/repruned/adjusted) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| dense | | | | {dense['shakespeare']:.3f} | {dense['pydoc']:.3f} | {score(dense):.3f} | | | |")
    for r in rows:
        kept = "/".join(str(v) for v in r["chosen"].values()) if "chosen" in r else ""
        ratio = f"{r['loss_ratio']:.3f}" if "loss_ratio" in r else ""
        hp = " | ".join(f"{r[k]:g}" if k in r else "" for k in ("lr", "l1", "l2"))
        print(f"| {r['method']} | {hp} | {r['ppl']['shakespeare']:.3f} | {r['ppl']['pydoc']:.3f} | {r['score']:.3f} | {ratio} | {kept} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
