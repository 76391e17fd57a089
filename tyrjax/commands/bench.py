"""`tyrjax bench`: time to first token and decode throughput, a pruned model against its dense original."""
from __future__ import annotations

import argparse

from tyrjax import api
from tyrjax.commands.common import model_args, model_spec, out_arg, out_dir, positive_int, positive_ints
from tyrjax.evaluation.speed import speed_table
from tyrjax.runs.rundir import print_table

DESCRIPTION = """\
Time to first token (the prefill of a batch of prompts) and greedy decode throughput (tokens/s
over --new-tokens KV-cached steps) for every --batch-sizes x --prompt-lengths shape. Each shape
is compiled once, an untimed warm-up call precedes the timed ones, and the medians of --repeats
runs are reported. Writes OUT/metrics.json ("speed" rows) and OUT/report.md, and prints the table.

The dense model is measured in the same run, shape by shape, and each row of --model gets its
speedups: dense time to first token / its own, and its decode tokens/s / the dense model's.
Which dense model:
  --against DENSE_MODEL  that model
  --against none         none: --model is measured alone
  (default)              when --model is a prune or sds output (RUN_DIR/model), the model that
                         run pruned, as recorded in RUN_DIR/metrics.json; otherwise the
                         embedded default. When that is --model itself, --model is measured alone.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time to first token and decode tokens/s, a pruned model against its dense original",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--against", default=None, metavar="DENSE_MODEL",
                   help="dense model measured in the same run for the speedups, or 'none' (default: see above)")
    p.add_argument("--batch-sizes", type=positive_ints, default=[1, 4], metavar="N,N", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--prompt-lengths", type=positive_ints, default=[128, 512], metavar="T,T", help="comma-separated prompt lengths (default 128,512)")
    p.add_argument("--new-tokens", type=positive_int, default=32,
                   help="greedy decode steps after the prompt, all of them timed (default %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per shape and model; the median is reported (default 5)")
    out_arg(p, "bench")
    p.set_defaults(func=run)


def bench_config(args: argparse.Namespace) -> api.BenchConfig:
    return api.BenchConfig(tuple(args.batch_sizes), tuple(args.prompt_lengths), args.new_tokens, args.repeats, args.against)


def run(args: argparse.Namespace) -> None:
    out = out_dir(args, "bench")
    result = api.bench(model_spec(args), bench_config(args), out=out, force=args.force)
    if result.dense_note:
        print(result.dense_note)
    print_table(speed_table(result.rows))
    print(f"wrote {out}")
