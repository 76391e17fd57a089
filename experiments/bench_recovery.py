"""Recovery fine-tuning of pruned default models: perplexity before and after, exact sparsity, and
the training step's tokens/s against the forward's, measured in the same run.

    python experiments/bench_recovery.py --rows tyr-lora,sds-lora,tyr-full \\
        --tyr RUN_DIR/model --sds RUN_DIR/model --tokens 8192 [--tasks paper --limit 40] --out runs/bench_recovery

Each row is one `tyrjax.finetune` call (the `tyrjax finetune` command): LoRA or full fine-tuning
distilled (KD at the teacher's top-k) from the dense default model, on `--data` windows; the table
is printed in Markdown and saved as OUT/results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import tyrjax
from tyrjax.api.configs import DataConfig, TasksConfig
from tyrjax.evaluation.paired import PairedAccuracy, format_accuracy
from tyrjax.files import write_json

ROWS = {
    "tyr-lora": ("tyr", "lora"),
    "tyr-full": ("tyr", "full"),
    "sds-lora": ("sds", "lora"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="tyr-lora,sds-lora,tyr-full", help=f"comma-separated rows of {','.join(ROWS)}")
    p.add_argument("--tyr", help="the Týr 50%% run's model directory")
    p.add_argument("--sds", help="the SDS-SparseGPT 2:4 run's model directory")
    p.add_argument("--table", nargs="+", type=Path, default=None,
                   help="print the table of these finished row directories (ROW_DIR/metrics.json) and exit")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: FinetuneConfig's per method)")
    p.add_argument("--data", default="general")
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--eval-data", default="shakespeare,pydoc,sotu")
    p.add_argument("--tasks", default=None, help="zero-shot tasks before and after (e.g. paper); default none")
    p.add_argument("--limit", type=int, default=40, help="items per task (default 40)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_recovery"))
    args = p.parse_args()
    if args.table:
        print(table({d.name: json.loads((d / "metrics.json").read_text()) for d in args.table}))
        return
    data = DataConfig(eval_windows=args.eval_windows, eval_corpora=tuple(args.eval_data.split(",")))
    tasks = None if args.tasks is None else TasksConfig(args.tasks, args.limit)
    results = {}
    for row in args.rows.split(","):
        source, method = ROWS[row]
        config = dataclasses.replace(tyrjax.FinetuneConfig(), method=method, tokens=args.tokens, seq_len=args.seq_len,
                                     batch_size=args.batch_size, data=args.data, lr=args.lr)
        model = args.tyr if source == "tyr" else args.sds
        result = tyrjax.finetune(model, config, data=data, tasks=tasks, out=args.out / row)
        results[row] = result.metrics
        write_json(args.out / "results.json", {k: _summary(m) for k, m in results.items()})
        print(table(results), flush=True)


def _summary(m: dict) -> dict:
    return {k: m[k] for k in ("student", "method", "ppl_before", "ppl", "dense_ppl", "sparsity", "train",
                              "tasks_mean_before", "tasks_mean", "tasks_limit", "tasks_mean_change")
            if k in m} | {"train": {k: v for k, v in m["train"].items() if k != "loss"}}


def table(results: dict) -> str:
    corpora = list(next(iter(results.values()))["ppl"])
    head = ["row", *[f"{c} ppl before → after (change; dense)" for c in corpora], "sparsity kept",
            "mean acc before → after (change [95 % CI], item by item)", "train tokens", "steps", "train wall s", "final loss", "step tok/s",
            "warm step tok/s", "forward tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, m in results.items():
        t, s = m["train"], m["sparsity"]
        cells = [row]
        for c in corpora:
            change = m["ppl"][c] / m["ppl_before"][c] - 1
            cells.append(f"{m['ppl_before'][c]:.2f} → {m['ppl'][c]:.2f} ({change:+.1%}; {m.get('dense_ppl', {}).get(c, float('nan')):.2f})")
        if s["compact"]:
            kept = "compact, same widths"
        else:
            kept = f"zeros {s['zeros_before']:,} = {s['zeros_after']:,}" if s["zeros_before"] == s["zeros_after"] \
                else f"zeros {s['zeros_before']:,} ≠ {s['zeros_after']:,}"
        acc = f"{m['tasks_mean_before']:.3f} → {m['tasks_mean']:.3f}" if "tasks_mean" in m else "–"
        if "tasks_mean_change" in m:
            acc += f" ({format_accuracy(PairedAccuracy(**m['tasks_mean_change']))})"
        warm = t.get("warm_step_tokens_per_s")
        cells += [kept, acc,
                  f"{t['tokens']:,}", str(t["steps"]), f"{t['wall_s']:.0f}", f"{t['final_loss']:.4f}",
                  f"{t['step_tokens_per_s']:.1f}", "–" if warm is None else f"{warm:.1f}",
                  f"{t['forward_tokens_per_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
