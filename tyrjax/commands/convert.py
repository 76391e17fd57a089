"""`tyrjax convert`: a GGUF file into a Hugging Face style directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from tyrjax.errors import TyrjaxError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a GGUF file into a Hugging Face style directory",
                       description="Dequantize a llama/qwen2 GGUF to fp32 safetensors + config.json + tokenizer.json (no torch needed).")
    p.add_argument("gguf", type=Path, help="input .gguf file")
    p.add_argument("out", type=Path, help="output directory (must not exist, or be a previous conversion)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from tyrjax.checkpoints.gguf import convert_gguf

    if not args.gguf.is_file():
        raise TyrjaxError(f"{args.gguf}: no such GGUF file")
    out = convert_gguf(args.gguf, args.out)
    print(f"wrote {out}")
