"""Flags the commands share, and how they become the API's typed settings."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from tyrjax.api import DataConfig, ModelSpec
from tyrjax.api.configs import corpora_list
from tyrjax.runs.rundir import default_out, print_table


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. 1,4."""
    return [positive_int(x) for x in text.split(",")]


def model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF directory, .gguf file, orbax run dir or hub name (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--tokenizer", default=None, help="directory with tokenizer.json, when the model has none")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="parameter dtype (statistics stay fp32)")


def data_args(p: argparse.ArgumentParser, calib_default: int | None = 64) -> None:
    g = p.add_argument_group("data (the shakespeare-v1 protocol by default; general-v1: --data general --eval-data shakespeare,pydoc,sotu)")
    g.add_argument("--data", default="shakespeare",
                   help="calibration corpus: shakespeare, general (BBC news + Wikipedia), pydoc, sotu, bbcnews, wikipedia, "
                        "a text file or directory, a .jsonl/.parquet file with a 'text' field, or hf:NAME[:CONFIG[:SPLIT]]")
    g.add_argument("--calib-windows", type=positive_int, default=calib_default,
                   help="calibration windows of 512 tokens (default: 64, the protocol's; structured prune: the preset's, 64 for quick and 256 for paper)")
    g.add_argument("--eval-windows", type=positive_int, default=16, help="evaluation windows of 1024 tokens per corpus (default 16)")
    g.add_argument("--eval-data", default="shakespeare,pydoc",
                   help="comma-separated evaluation corpora, each its held-out split (default shakespeare,pydoc; "
                        "sotu: the State of the Union addresses, one window from each of 16 held-out speeches 1790-2026)")
    g.add_argument("--batch-size", type=positive_int, default=1, help="windows scored per batch")


def out_arg(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", type=Path, default=None, help=f"run directory (default runs/{command}-TIMESTAMP)")


def scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale (several devices or hosts)")
    g.add_argument("--mesh", default=None,
                   help="device mesh, e.g. data=4,tensor=2 (axes data, fsdp, tensor; data takes the devices the others "
                        "leave) or auto (every device on data); default: one device, or auto in a multi-host run")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 in a multi-host run, or auto on a TPU pod / SLURM (env TYRJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=positive_int, default=None, help="processes in the run (env TYRJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 writes the run files (env TYRJAX_PROCESS_ID)")


@contextlib.contextmanager
def scaled(args: argparse.Namespace):
    """Join the other processes of a multi-host run, then run the command on its mesh."""
    if not hasattr(args, "coordinator"):  # commands without the scale flags (plan meshes are simulated)
        yield
        return
    from tyrjax.parallel.distributed import initialize
    from tyrjax.parallel.sharding import mesh_from_flag, use_mesh

    initialize(args.coordinator, args.num_processes, args.process_id)
    with use_mesh(mesh_from_flag(args.mesh)):
        yield


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(args.model, args.tokenizer, args.dtype, stream=getattr(args, "stream", False))


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(calib=args.data, calib_windows=args.calib_windows, eval_windows=args.eval_windows,
                      eval_corpora=corpora_list(args.eval_data), batch_size=args.batch_size)


def out_dir(args: argparse.Namespace, command: str) -> Path:
    return args.out or default_out(command)


def print_unstructured(metrics: dict) -> None:
    """The dense and the pruned perplexity per corpus, the sparsity and the wall time."""
    dense, pruned = metrics["dense_ppl"], metrics["ppl"]
    rows = [("corpus", "dense ppl", f"{metrics['method']} {metrics['pattern']} ppl", "change")]
    rows += [(k, f"{dense[k]:.3f}", f"{pruned[k]:.3f}", f"{100 * (pruned[k] / dense[k] - 1):+.1f}%") for k in pruned]
    print_table(rows)
    sparsity = metrics["sparsity"]
    print(f"sparsity: target {sparsity['target']:.4f}, achieved {sparsity['achieved']:.4f} "
          f"(attention+MLP linear weights); wall {metrics['wall_s']['total']:.1f} s")
