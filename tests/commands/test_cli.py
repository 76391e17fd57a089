"""The command line's own contract: every default stated in --help, one-line errors for every
bad flag, one name per idea."""
import argparse

import pytest

from tyrjax.cli import build_parser, main


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def shown_default(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def options_with_a_default(parser: argparse.ArgumentParser):
    """Every optional flag that takes a value and may be left out."""
    for action in parser._actions:
        if not action.option_strings or action.required or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        yield action


def test_every_option_states_its_default_in_its_help():
    missing = []
    for name, parser in command_parsers().items():
        formatter = parser._get_formatter()
        for action in options_with_a_default(parser):
            text = formatter._expand_help(action) if action.help else ""
            stated = "default" in text and (action.default is None or shown_default(action.default) in text)
            if not stated:
                missing.append(f"{name} {action.option_strings[0]} (default {action.default!r}): {text!r}")
    assert not missing, "\n".join(missing)


def test_preset_dependent_flags_print_each_presets_value():
    from tyrjax.tyr.pipeline import PRESETS

    prune = command_parsers()["prune"]
    helps = {a.option_strings[0]: a.help for a in prune._actions if a.option_strings}
    for flag, field in (("--iterations", "iterations"), ("--generations", "generations"), ("--offspring", "offspring")):
        for preset in ("quick", "paper"):
            assert f"{preset} {getattr(PRESETS[preset], field)}" in helps[flag]
    assert "quick 64, paper 256" in helps["--calib-windows"]


@pytest.mark.parametrize("argv, flag", [
    (["prune", "--method", "wanda", "--pattern", "0.5", "--calib-windows", "0"], "--calib-windows"),
    (["prune", "--method", "wanda", "--pattern", "0.5", "--calib-windows", "-3"], "--calib-windows"),
    (["prune", "--method", "tyr", "--sparsity", "0.5", "--device-memory", "0"], "--device-memory"),
    (["prune", "--method", "nothing"], "--method"),
    (["eval", "--eval-windows", "x"], "--eval-windows"),
    (["bench", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["generate", "--prompt", "a", "--top-p", "1.5"], "--top-p"),
    (["generate", "--prompt", "a", "--top-k", "-1"], "--top-k"),
    (["sds", "--adjust-steps", "-1"], "--adjust-steps"),
    (["plan", "--model", "smollm2-135m", "--out", "x", "--calib-windows", "0"], "--calib-windows"),
])
def test_a_refused_flag_prints_one_line_naming_it(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith(f"tyrjax {argv[0]}: error: argument {flag}")


def test_eval_refuses_the_calibration_flags_it_would_ignore(capsys):
    for flag in ("--calib-windows", "--data"):
        assert main(["eval", flag, "4"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tyrjax eval: error: unrecognized arguments") and flag in err


def test_generate_and_bench_name_the_decode_length_alike():
    parsers = command_parsers()
    for name in ("generate", "bench"):
        assert parsers[name].parse_args(["--new-tokens", "5", *(["--prompt", "a"] if name == "generate" else [])]).new_tokens == 5
    # the old generate spelling still works, hidden from --help
    assert parsers["generate"].parse_args(["--prompt", "a", "--max-new-tokens", "7"]).new_tokens == 7
    assert "--max-new-tokens" not in parsers["generate"].format_help()
