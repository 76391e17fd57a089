"""`tyrjax sds`: Sparse-Dense-Sparse into one run directory.

RUN_DIR holds metrics.json (method, pattern, sparsity target/achieved/per layer, perplexities of
the dense and the pruned model, wall time per step, hyperparameters), layer_losses.json (each
linear layer's reconstruction loss per step), command.json, the pruned model as orbax
(`model/`, loadable with --model) and as Hugging Face safetensors with zeros (`hf/`).
"""
from __future__ import annotations

import argparse

from tyrjax import api
from tyrjax.commands.common import (data_args, data_config, device_memory_arg, model_args, model_spec, non_negative_int, out_arg, out_dir,
                                    positive_int, print_results, scale_args)

DESCRIPTION = """\
SDS (Sparse-Dense-Sparse): 1) prune every linear layer one-shot, 2) re-dense: optimise all
weights toward the dense layer's outputs with an L1/L2 penalty (optax, full batch through Gram
matrices), 3) prune again with the same pruner and pattern and, in layers where that did not
beat step 1, adjust the sparse weights. Each layer keeps its lowest-loss result.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sds", help="Sparse-Dense-Sparse: prune, re-dense with L1/L2 (optax), prune again",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p)
    out_arg(p, "sds")
    scale_args(p)
    p.add_argument("--pruner", default="sparsegpt", choices=["sparsegpt", "wanda"],
                   help="one-shot pruner of steps 1 and 3 (default %(default)s)")
    p.add_argument("--pattern", default="0.5", help="a fraction like 0.5, or N:M like 2:4 / 4:8 (default 0.5)")
    p.add_argument("--steps", type=positive_int, default=200, help="optimizer steps of the re-dense step per layer (the paper's epochs; full batch; default %(default)s)")
    p.add_argument("--adjust-steps", type=non_negative_int, default=None, help="steps of the sparse weight adjustment (default: --steps; 0 skips it)")
    p.add_argument("--adjust", default="paper", choices=["paper", "always"],
                   help="where the adjustment runs: 'paper' (default) only in layers where re-pruning did not beat "
                        "the one-shot weights, as the paper; 'always' in every layer, each keeping its lowest-loss result")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: tuned per pruner, 3e-4 for sparsegpt and 1e-3 for wanda)")
    p.add_argument("--l1", type=float, default=None, help="L1 weight of the re-dense objective, per token (default 0: see experiments/RESULTS.md, SDS hyperparameters)")
    p.add_argument("--l2", type=float, default=None, help="L2 weight of the re-dense objective, per token (default 0: see experiments/RESULTS.md, SDS hyperparameters)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                   help="optimizer of the re-dense and adjustment steps (default %(default)s)")
    p.add_argument("--inputs", default="pruned", choices=["pruned", "dense"],
                   help="re-dense inputs from the pruned model (the paper's) or the dense model (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="recorded with the run; SDS draws no randomness (default %(default)s)")
    device_memory_arg(p, "the evaluation is chunked to and SDS's block loop must fit")
    p.add_argument("--stream", action="store_true",
                   help="hold only the embedding and head; read each decoder block from the checkpoint when SDS "
                        "needs it, so memory does not grow with depth (safetensors checkpoints)")
    p.set_defaults(func=run)


def sds_config(args: argparse.Namespace) -> api.SDSConfig:
    return api.SDSConfig(pruner=args.pruner, pattern=args.pattern, steps=args.steps, adjust_steps=args.adjust_steps,
                         adjust=args.adjust, lr=args.lr, l1=args.l1, l2=args.l2, optimizer=args.optimizer,
                         inputs=args.inputs, seed=args.seed, device_memory_gb=args.device_memory)


def run(args: argparse.Namespace) -> None:
    out = out_dir(args, "sds")
    result = api.sds(model_spec(args), sds_config(args), data=data_config(args), out=out, force=args.force)
    print_results(result.metrics)
    print(f"wrote {out / 'metrics.json'}")
