"""Zero-shot accuracy retained and measured speed-up of pruned models against their dense original.

    python experiments/bench_retained.py RUN_DIR [RUN_DIR ...] [--limit 100] [--out results.json]

Each RUN_DIR is a `tyrjax prune` or `tyrjax sds` run directory (the pruned model in RUN_DIR/model);
all of them must have pruned the same dense model, which is found from their metrics.json and
scored once. Prints two markdown tables:
- zero-shot accuracy on the papers' tasks (`tyrjax eval --tasks paper`) per task,
  the mean over tasks, and the retained fraction (pruned mean / dense mean), for acc and acc_norm;
- for compact (structurally pruned) models: time to first token and decode throughput against
  the dense model, measured shape by shape in this run (`tyrjax bench`'s sweep), as speed-ups.
Unstructured and N:M models keep the dense shapes (zeros are stored), so dense kernels run them
at the dense speed; they appear in the accuracy table only.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from tyrjax.api import zero_shot
from tyrjax.evaluation.speed import Contender, speed_sweep
from tyrjax.errors import TyrjaxError
from tyrjax.runs.lineage import dense_spec, find_origin
from tyrjax.checkpoints.loading import load_model
from tyrjax.files import write_json
from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT

METRICS = ("acc", "acc_norm")


def mean_accuracy(tasks: dict[str, dict[str, Any]], metric: str) -> float:
    """The unweighted mean of `metric` over tasks (each task counts once, as in the papers' tables);
    a task without acc_norm (BoolQ, RTE, WinoGrande, MMLU) counts with its acc."""
    return statistics.fmean(t.get(metric, t["acc"]) for t in tasks.values())


def retained(pruned: dict[str, dict[str, Any]], dense: dict[str, dict[str, Any]], metric: str) -> float:
    """Pruned mean accuracy over dense mean accuracy, on the tasks both were scored on."""
    if set(pruned) != set(dense):
        raise TyrjaxError(f"the pruned and dense models were scored on different tasks: {sorted(pruned)} vs {sorted(dense)}")
    return mean_accuracy(pruned, metric) / mean_accuracy(dense, metric)


def label_of(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    sparsity = metrics.get("pattern") or f"{metrics['sparsity']['target']:g}"
    return f"{metrics['method']} {sparsity} ({run_dir.name})"


def common_dense(run_dirs: list[Path]) -> str | None:
    """The dense model every run pruned (a `--model` value; None = the embedded default)."""
    specs = set()
    for run_dir in run_dirs:
        origin = find_origin(str(run_dir / "model"))
        if origin is None:
            raise TyrjaxError(f"{run_dir}: not a prune/sds run directory (needs metrics.json and model/)")
        specs.add(dense_spec(origin))
    if len(specs) != 1:
        raise TyrjaxError(f"the runs pruned different dense models ({sorted(map(str, specs))}); compare them separately")
    return specs.pop()


def accuracy_table(results: dict[str, dict[str, dict[str, Any]]], dense_label: str) -> list[str]:
    """Markdown: a row per model with per-task acc / acc_norm, the means and the retained fractions."""
    dense = results[dense_label]
    tasks = sorted(dense)
    head = "| model | " + " | ".join(tasks) + " | mean acc / acc_norm | retained acc / acc_norm |"
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for label, scores in results.items():
        cells = [f"{scores[t]['acc']:.3f} / {scores[t].get('acc_norm', scores[t]['acc']):.3f}" for t in tasks]
        means = " / ".join(f"{mean_accuracy(scores, m):.3f}" for m in METRICS)
        kept = " / ".join(f"{100 * retained(scores, dense, m):.1f} %" for m in METRICS)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {means} | {kept} |")
    n = " · ".join(f"{t} {dense[t]['n']}" for t in tasks)
    lines.append(f"\nitems per task: {n}")
    return lines


def speed_summary(rows: list[dict[str, Any]], label: str) -> list[str]:
    """Markdown: one row per measured shape of the pruned model, with its speed-ups over dense."""
    lines = ["| model | batch | prompt | ttft s (dense) | ttft speed-up | decode tok/s (dense) | decode speed-up |",
             "|---|---|---|---|---|---|---|"]
    dense = {(r["batch"], r["prompt"]): r for r in rows if "ttft_speedup" not in r}
    for r in rows:
        if "ttft_speedup" in r:
            d = dense[(r["batch"], r["prompt"])]
            lines.append(f"| {label} | {r['batch']} | {r['prompt']} | {r['ttft_s']:.4f} ({d['ttft_s']:.4f}) | "
                         f"{r['ttft_speedup']:.2f}x | {r['decode_tok_s']:.1f} ({d['decode_tok_s']:.1f}) | "
                         f"{r['decode_speedup']:.2f}x |")
    return lines


def is_compact(model, dense) -> bool:
    return model.cfg.attn_mlp_params() < dense.cfg.attn_mlp_params()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="prune / sds run directories")
    ap.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"items per task (default {DEFAULT_LIMIT})")
    ap.add_argument("--batch-sizes", default="1,8", help="speed sweep batch sizes (default 1,8)")
    ap.add_argument("--prompt-lengths", default="128,512", help="speed sweep prompt lengths (default 128,512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = ap.parse_args()

    dense = load_model(common_dense(args.runs))
    dense_label = f"dense ({dense.source})"
    accuracy = {dense_label: zero_shot(dense, "paper", args.limit)}
    speed: dict[str, list[dict[str, Any]]] = {}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompt_lengths = [int(p) for p in args.prompt_lengths.split(",")]
    for run_dir in args.runs:
        label = label_of(run_dir)
        model = load_model(str(run_dir / "model"))
        accuracy[label] = zero_shot(model, "paper", args.limit)
        print("\n".join(accuracy_table(accuracy, dense_label)), flush=True)
        if is_compact(model, dense):
            speed[label] = speed_sweep(Contender(label, model.params, model.cfg),
                                       Contender(dense_label, dense.params, dense.cfg),
                                       batch_sizes, prompt_lengths, args.new_tokens, args.repeats)
            print("\n".join(speed_summary(speed[label], label)), flush=True)

    print("\n## Zero-shot accuracy (offline suite)\n")
    print("\n".join(accuracy_table(accuracy, dense_label)))
    for label, rows in speed.items():
        print(f"\n## Speed: {label} against dense\n")
        print("\n".join(speed_summary(rows, label)))
    if args.out is not None:
        write_json(args.out, {"limit": args.limit, "accuracy": accuracy, "speed": speed})


if __name__ == "__main__":
    main()
