"""`tyrjax prune`: structured (--sparsity) or unstructured (--pattern) pruning into one run directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from tyrjax import api
from tyrjax.api.methods import UNSTRUCTURED_METHODS, preset_config
from tyrjax.commands.common import (data_args, data_config, device_memory_arg, model_args, model_spec, out_arg, out_dir, positive_int,
                                    print_unstructured, scale_args)

DESCRIPTION = """\
Prune a model and write RUN_DIR with metrics.json, the pruned model and plots.

Structured (--sparsity S, heads and neurons removed, a physically smaller model):
  tyr        Týr-the-Pruner: local OBS pruning into a supernet, evolutionary search, coarse to fine
  uniform    the Týr local pruner at the same sparsity in every layer
  wanda-sp   structured Wanda, same ratio in every layer
  flap       FLAP: fluctuation metric, adaptive ratios, bias compensation
  magnitude  structured magnitude (with --sparsity)
Unstructured / N:M (--pattern 0.5 | 2:4 | 4:8, zeros in dense shapes):
  sparsegpt  SparseGPT (OBS column sweep)
  wanda      Wanda (|W| x input norm)
  magnitude  magnitude (with --pattern)

Týr keeps its supernet (every level of every block) and search state on disk in RUN_DIR/work;
rerunning the same command resumes there. Once an iteration's search is done, its result is
saved and its supernet deleted (--keep-supernets keeps them), so the disk holds one supernet
at a time: `tyrjax plan` gives its size for a large model (about 45 GB for an 8B model with
bf16 levels, twice that in fp32). With --stream, tyr, uniform and --distribution hold only the
embedding and head in memory and read each decoder block from the checkpoint when needed: for
models larger than memory.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (Týr, structured baselines, or one-shot SparseGPT/Wanda/magnitude)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p, calib_default=None)
    out_arg(p, "prune")
    scale_args(p)
    p.add_argument("--method", required=True, choices=api.PRUNE_METHODS, help="pruning method (see above)")
    p.add_argument("--sparsity", type=float, default=None, help="structured: fraction of attention+MLP parameters to remove, in (0, 1)")
    p.add_argument("--pattern", default=None, help="unstructured: a fraction like 0.5, or N:M like 2:4 / 4:8")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("structured pruning")
    g.add_argument("--preset", default="quick", choices=["quick", "paper"],
                   help="quick: sized for 2 CPU cores (~30 min on the default model); paper: the papers' settings, for accelerators")
    g.add_argument("--distribution", type=Path, default=None, help="apply a searched distribution file instead of searching")
    g.add_argument("--keep-supernets", action="store_true",
                   help="keep every iteration's supernet in RUN_DIR/work (default: delete each once its search is done)")
    g.add_argument("--stream", action="store_true",
                   help="hold only the embedding and head; read each decoder block from the checkpoint when a phase "
                        "needs it, so memory does not grow with depth (tyr, uniform and --distribution; "
                        "safetensors checkpoints)")
    g.add_argument("--iterations", type=positive_int, default=None, help="Týr prune-and-search iterations (preset default)")
    g.add_argument("--generations", type=positive_int, default=None, help="search generations per iteration (preset default)")
    g.add_argument("--offspring", type=positive_int, default=None, help="offspring per generation (preset default)")
    device_memory_arg(g, "every phase (Týr's and the evaluation) is chunked to")
    g.add_argument("--supernet-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the supernet levels on disk (default: the model's dtype)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = preset_config(args.preset, iterations=args.iterations, generations=args.generations,
                           offspring=args.offspring, seed=args.seed, keep_supernets=args.keep_supernets,
                           device_memory_gb=args.device_memory, supernet_dtype=args.supernet_dtype)
    structured = args.pattern is None and args.method not in UNSTRUCTURED_METHODS
    out = out_dir(args, f"prune-{args.method}" if structured else "prune")
    result = api.prune(model_spec(args), args.method, sparsity=args.sparsity, pattern=args.pattern, config=config,
                       preset=args.preset, distribution=args.distribution, data=data_config(args), out=out)
    if result.layers is None:
        print_structured(result.metrics)
        print(f"wrote {out}")
    else:
        print_unstructured(result.metrics)
        print(f"wrote {out / 'metrics.json'}")


def print_structured(m: dict) -> None:
    print(f"{'':12}{'dense':>12}{m['method']:>14}")
    for corpus, value in m["ppl"].items():
        print(f"{'ppl ' + corpus:<12}{m['dense_ppl'][corpus]:>12.3f}{value:>14.3f}")
    print(f"{'params':<12}{m['params']['dense']['attn_mlp']:>12,}{m['params']['pruned']['attn_mlp']:>14,}  (attention+MLP)")
    print(f"sparsity: target {m['sparsity']['target']:.3f}, achieved {m['sparsity']['achieved']:.3f}")
