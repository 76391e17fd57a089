"""`tyrjax report RUN_DIR... [--out DIR]`: several runs in one table and one plot."""
from __future__ import annotations

import argparse
from pathlib import Path

from tyrjax import api
from tyrjax.commands.common import out_arg, out_dir
from tyrjax.runs.rundir import print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare several runs: one table and one plot of perplexity against sparsity",
                       description="Read the metrics.json of each RUN_DIR (eval, prune or sds runs) and write OUT/comparison.md "
                                   "(perplexity and its change against the dense model, achieved sparsity, parameters; also "
                                   "printed) and OUT/ppl_vs_sparsity.png (one line per method, the dense model as a reference). "
                                   "Runs scored on the same evaluation windows are also compared window by window with the "
                                   "first RUN_DIR: the perplexity change with a 95 % paired-bootstrap interval, which tells a "
                                   "real difference from window sampling noise. Runs scored on the same zero-shot task "
                                   "items (--tasks with the same --limit) are compared item by item the same way: the "
                                   "change of the mean accuracy with its 95 % interval.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories to compare")
    out_arg(p, "report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    out = out_dir(args, "report")
    comparison = api.report(args.run_dirs, out, force=args.force)
    print_table(comparison.table)
    if comparison.paired:
        print(f"\nagainst {args.run_dirs[0]}, window by window:")
        print_table(comparison.paired)
    print(f"wrote {comparison.markdown} and {comparison.plot}")
