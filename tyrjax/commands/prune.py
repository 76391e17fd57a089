"""`tyrjax prune`: structured (--sparsity) or unstructured (--pattern) pruning into one run directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from tyrjax import api
from tyrjax.api.methods import PRESET_CALIB_WINDOWS, UNSTRUCTURED_CALIB_WINDOWS, UNSTRUCTURED_METHODS, preset_config
from tyrjax.checkpoints.export import EXPORT_FORMATS, EXPORT_USES
from tyrjax.commands.common import (data_args, data_config, device_memory_arg, model_args, model_spec, out_arg, out_dir,
                                    positive_int, print_results, scale_args)
from tyrjax.tyr.pipeline import PRESETS

PRESET_CHOICES = ("quick", "paper")

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
bf16 levels, twice that in fp32). With --stream, the structured methods (tyr, uniform,
wanda-sp, flap, magnitude and --distribution) hold only the embedding and head in memory and
read each decoder block from the checkpoint when needed: for models larger than memory.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (Týr, structured baselines, or one-shot SparseGPT/Wanda/magnitude)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    data_args(p, calib_default=None,
              calib_help=f"calibration windows of 512 tokens (default: {UNSTRUCTURED_CALIB_WINDOWS} for the unstructured "
                         f"methods; the structured ones take the preset's, {per_preset(PRESET_CALIB_WINDOWS.get)})")
    out_arg(p, "prune")
    scale_args(p)
    p.add_argument("--method", required=True, choices=api.PRUNE_METHODS, help="pruning method (see above)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="structured: fraction of attention+MLP parameters to remove, in (0, 1) (no default: "
                        "the structured methods need it)")
    p.add_argument("--pattern", default=None,
                   help="unstructured: a fraction like 0.5, or N:M like 2:4 / 4:8 (no default: the unstructured methods need it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search's random draws (default %(default)s)")
    g = p.add_argument_group("structured pruning")
    g.add_argument("--preset", default="quick", choices=PRESET_CHOICES,
                   help="quick: sized for 2 CPU cores (about 25 min on the default model, the cores to itself); "
                        "paper: the papers' settings, for accelerators (default %(default)s)")
    g.add_argument("--distribution", type=Path, default=None,
                   help="apply a searched distribution file instead of searching (default: search)")
    g.add_argument("--export", action="append", default=[], choices=EXPORT_FORMATS,
                   help="also write RUN_DIR/hf_padded: a stock Llama/Qwen2 checkpoint, each layer padded with zeros "
                        "to the widest, that transformers and other engines load (RUN_DIR/model loads only in tyrjax; "
                        "default: none)")
    g.add_argument("--keep-supernets", action="store_true",
                   help="keep the supernets in RUN_DIR/work (default: delete each once its search is done, "
                        "and the last once the pruned model is built; uniform and --distribution too)")
    g.add_argument("--stream", action="store_true",
                   help="hold only the embedding and head; read each decoder block from the checkpoint when a phase "
                        "needs it, so memory does not grow with depth (structured methods; "
                        "safetensors checkpoints)")
    g.add_argument("--iterations", type=positive_int, default=None,
                   help=f"Týr prune-and-search iterations (default: the preset's, {per_preset(preset_field('iterations'))})")
    g.add_argument("--generations", type=positive_int, default=None,
                   help=f"search generations per iteration (default: the preset's, {per_preset(preset_field('generations'))})")
    g.add_argument("--offspring", type=positive_int, default=None,
                   help=f"offspring per generation (default: the preset's, {per_preset(preset_field('offspring'))})")
    device_memory_arg(g, "every phase (Týr's and the evaluation) is chunked to")
    g.add_argument("--supernet-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the supernet levels on disk (default: the model's dtype)")
    p.set_defaults(func=run)


def preset_field(name: str):
    return lambda preset: getattr(PRESETS[preset], name)


def per_preset(value_of) -> str:
    """Each preset's value of a setting, e.g. "quick 2, paper 4"."""
    return ", ".join(f"{preset} {value_of(preset)}" for preset in PRESET_CHOICES)


def run(args: argparse.Namespace) -> None:
    config = preset_config(args.preset, iterations=args.iterations, generations=args.generations,
                           offspring=args.offspring, seed=args.seed, keep_supernets=args.keep_supernets,
                           device_memory_gb=args.device_memory, supernet_dtype=args.supernet_dtype)
    structured = args.pattern is None and args.method not in UNSTRUCTURED_METHODS
    out = out_dir(args, f"prune-{args.method}" if structured else "prune")
    result = api.prune(model_spec(args), args.method, sparsity=args.sparsity, pattern=args.pattern, config=config,
                       preset=args.preset, distribution=args.distribution, export=args.export,
                       data=data_config(args), out=out,
                       force=args.force)
    print_results(result.metrics)
    if result.layers is None:
        print(f"wrote {out}")
        for name, path in result.metrics["outputs"].items():
            print(f"  {path}: {EXPORT_USES[name]}")
    else:
        print(f"wrote {out / 'metrics.json'}")

