"""Flags the commands share, and how they become the API's typed settings."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from tyrjax.api import DataConfig, ModelSpec
from tyrjax.api.configs import corpora_list
from tyrjax.parallel.memory import CPU_DEFAULT_BYTES, GB
from tyrjax.runs.rundir import default_out, print_table


def positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or a positive integer")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or a positive number")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in (0, 1]")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. 1,4."""
    return [positive_int(x) for x in text.split(",")]


def model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF directory, .gguf file, orbax run dir or hub name (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--tokenizer", default=None, help="directory with tokenizer.json, when the model has none (default: the model's own)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="parameter dtype; statistics stay fp32 (default %(default)s)")


def data_args(p: argparse.ArgumentParser, calibration: bool = True, calib_default: int | None = 64,
              calib_help: str = "calibration windows of 512 tokens (default %(default)s, the protocol's)") -> None:
    """The evaluation flags, and the calibration flags of a command that calibrates (`calibration`)."""
    g = p.add_argument_group("data (the shakespeare-v1 protocol by default; general-v1: --data general "
                             "--eval-data shakespeare,pydoc,sotu)")
    if calibration:
        g.add_argument("--data", default="shakespeare",
                       help="calibration corpus: shakespeare, general (BBC news, Wikipedia and the Shakespeare training "
                            "plays), pydoc, sotu, bbcnews, wikipedia, a text file or directory, a .jsonl/.parquet file "
                            "with a 'text' field, or "
                            "hf:NAME[:CONFIG[:SPLIT]] (default %(default)s)")
        g.add_argument("--calib-windows", type=positive_int, default=calib_default, help=calib_help)
    g.add_argument("--eval-windows", type=positive_int, default=16, help="evaluation windows of 1024 tokens per corpus (default %(default)s)")
    g.add_argument("--eval-data", default="shakespeare,pydoc",
                   help="comma-separated evaluation corpora, each its held-out split (default %(default)s; "
                        "sotu: the State of the Union addresses, one window from each of 16 held-out speeches 1790-2026)")
    g.add_argument("--batch-size", type=positive_int, default=1, help="evaluation windows scored per batch (default %(default)s)")


def device_memory_arg(g: argparse._ActionsContainer, use: str) -> None:
    """`--device-memory GB`: the per-device budget, and what the command does with it (`use`)."""
    g.add_argument("--device-memory", type=positive_float, default=None, metavar="GB",
                   help=f"per-device memory budget {use} (default: what the device reports; "
                        f"{CPU_DEFAULT_BYTES / GB:g} GB on CPU); a budget below a phase's smallest chunk stops before "
                        "any work, naming the phase and the smallest budget that works")


def out_arg(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help=f"run directory (default runs/{command}-TIMESTAMP); rerunning the same command with the same "
                        "settings resumes there, anything else stops if it holds files")
    p.add_argument("--force", action="store_true",
                   help="write into --out even when it holds another run (whose files are deleted first) or files "
                        "tyrjax did not write (which are kept)")


def scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale (several devices or hosts)")
    g.add_argument("--mesh", default=None,
                   help="device mesh, e.g. data=4,tensor=2 (axes data, fsdp, tensor; data takes the devices the others "
                        "leave) or auto (every device on data); default: one device, or auto in a multi-host run")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 in a multi-host run, or auto on a TPU pod / SLURM "
                        "(default: env TYRJAX_COORDINATOR, else a single-host run)")
    g.add_argument("--num-processes", type=positive_int, default=None,
                   help="processes in the run (default: env TYRJAX_NUM_PROCESSES, else what --coordinator finds)")
    g.add_argument("--process-id", type=non_negative_int, default=None,
                   help="this process's index, 0 writes the run files (default: env TYRJAX_PROCESS_ID, else what "
                        "--coordinator finds)")


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
    """The flags' `DataConfig`; a command without calibration flags keeps DataConfig's calibration defaults."""
    calib = {k: getattr(args, k) for k in ("data", "calib_windows") if hasattr(args, k)}
    return DataConfig(calib=calib.get("data", DataConfig.calib), calib_windows=calib.get("calib_windows"),
                      eval_windows=args.eval_windows,
                      eval_corpora=corpora_list(args.eval_data), batch_size=args.batch_size)


def out_dir(args: argparse.Namespace, command: str) -> Path:
    return args.out or default_out(command)


def print_results(metrics: dict) -> None:
    """One layout for every pruning run: the dense and the pruned perplexity per corpus, the
    attention+MLP parameters kept (nonzero, for unstructured runs), the sparsity and the wall time."""
    label = f"{metrics['method']} {metrics['pattern']}" if metrics.get("pattern") else metrics["method"]
    dense, pruned = metrics["dense_ppl"], metrics["ppl"]
    rows = [("", "dense", label, "change")]
    rows += [(f"ppl {k}", f"{dense[k]:.3f}", f"{pruned[k]:.3f}", f"{100 * (pruned[k] / dense[k] - 1):+.1f}%") for k in pruned]
    params = metrics["params"]
    if "pruned" in params:
        before, after, what = params["dense"]["attn_mlp"], params["pruned"]["attn_mlp"], "attn+MLP params"
    else:
        before, after, what = params["attn_mlp"], params.get("attn_mlp_nonzero", params["attn_mlp"]), "attn+MLP nonzero"
    rows.append((what, f"{before:,}", f"{after:,}", f"{100 * (after / before - 1):+.1f}%"))
    print_table(rows)
    sparsity, wall = metrics["sparsity"], metrics["wall_s"]
    total = wall.get("total")
    if not isinstance(total, (int, float)):
        total = sum(v for v in wall.values() if isinstance(v, (int, float)))
    print(f"sparsity: target {sparsity['target']:.4f}, achieved {sparsity['achieved']:.4f} (attention+MLP); "
          f"wall {total:.1f} s")
