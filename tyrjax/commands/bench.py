"""`tyrjax bench`: time to first token and decode throughput over a sweep of batch sizes and
prompt lengths, a (pruned) model against its dense original measured in the same run."""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from tyrjax import api
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.runs.lineage import dense_spec, find_origin
from tyrjax.checkpoints.loading import HUB_NAME, Model, load_model, resolve_model_dir
from tyrjax.model.decoder import Params, to_compact
from tyrjax.runs.rundir import Timer, default_out, print_table, record_command
from tyrjax.files import write_json
from tyrjax.evaluation.speed import compilations, measure_speed, speed_table


class Contender(NamedTuple):
    """A model in the sweep, under the name its rows carry."""

    label: str
    params: Params
    cfg: ModelConfig


def sweep_shapes(batch_sizes: Sequence[int], prompt_lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Every (batch, prompt) pair, each once, in the order given."""
    return list(dict.fromkeys(itertools.product(batch_sizes, prompt_lengths)))


def measure_row(c: Contender, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """One shape of one model; `compiles` counts the decode step's compilations it caused
    (2 for a new shape: the prompt and the one-token step; never one per generated token)."""
    with compilations("decode_step") as compiled:
        speed = measure_speed(c.params, c.cfg, batch, prompt, new_tokens, repeats)
    return {"model": c.label, "batch": batch, "prompt": prompt, "new_tokens": new_tokens, **speed,
            "compiles": len(compiled)}


def add_speedups(rows: list[dict[str, Any]], dense_label: str) -> list[dict[str, Any]]:
    """Each row of another model gains, from the dense row of the same shape, how many times
    faster it is: `ttft_speedup` = dense ttft / ttft, `decode_speedup` = tok/s / dense tok/s."""
    dense = {(r["batch"], r["prompt"]): r for r in rows if r["model"] == dense_label}
    out = []
    for r in rows:
        ref = dense.get((r["batch"], r["prompt"]))
        if r["model"] != dense_label and ref is not None:
            r = {**r, "ttft_speedup": ref["ttft_s"] / r["ttft_s"], "decode_speedup": r["decode_tok_s"] / ref["decode_tok_s"]}
        out.append(r)
    return out


def speed_sweep(model: Contender, dense: Contender | None, batch_sizes: Sequence[int], prompt_lengths: Sequence[int],
                new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Rows of `measure_row` for every shape, the dense model measured right before `model` on
    each shape so both see the same machine state; `model`'s rows carry speedups vs dense."""
    contenders = [Contender(c.label, *to_compact(c.params, c.cfg)) for c in (dense, model) if c is not None]
    rows = [measure_row(c, b, p, new_tokens, repeats) for b, p in sweep_shapes(batch_sizes, prompt_lengths) for c in contenders]
    return add_speedups(rows, dense.label) if dense is not None else rows



def _same_directory(a: str | None, b: str | None) -> bool:
    return resolve_model_dir(a).resolve() == resolve_model_dir(b).resolve()


def dense_for(args: argparse.Namespace, model: Model) -> Model | None:
    """The dense model to compare with: --against, else the one recorded by the run that wrote
    --model, else the embedded default; None for --against none or when it is --model itself."""
    if args.against == "none":
        return None
    if args.against is not None:
        if not Path(args.against).expanduser().exists() and not HUB_NAME.match(args.against):
            raise TyrjaxError(f"--against {args.against}: no such file or directory; pass the dense model's directory, "
                              ".gguf file or hub name, or 'none'")
        spec, why = args.against, "--against"
    else:
        origin = find_origin(args.model)
        if origin is None:
            spec, why = None, "the embedded default: --model records no run it was pruned by"
        else:
            try:
                spec = dense_spec(origin)
            except TyrjaxError as e:
                raise TyrjaxError(f"{e}; pass the dense model with --against DENSE_MODEL (or --against none)") from None
            why = f"recorded in {origin.run_dir / 'metrics.json'}"
    if _same_directory(spec, args.model):
        print("dense reference: --model is the dense model itself; measuring it alone")
        return None
    dense = load_model(spec, args.dtype)
    base = ("hidden_size", "n_layers", "vocab_size")
    if args.against is None and any(getattr(dense.cfg, k) != getattr(model.cfg, k) for k in base):
        raise TyrjaxError(
            f"--model {args.model}: its dense reference defaulted to {dense.source} ({why}), which has another "
            f"architecture (hidden size {dense.cfg.hidden_size}, {dense.cfg.n_layers} blocks, vocabulary "
            f"{dense.cfg.vocab_size}; --model has {model.cfg.hidden_size}, {model.cfg.n_layers}, {model.cfg.vocab_size}); "
            "pass the dense original with --against DENSE_MODEL, or --against none"
        )
    print(f"dense reference: {dense.source} ({why})")
    return dense


def check_lengths(cfg: ModelConfig, prompt_lengths: Sequence[int], new_tokens: int) -> None:
    longest = max(prompt_lengths) + new_tokens
    if longest > cfg.max_position_embeddings:
        raise TyrjaxError(
            f"--prompt-lengths {max(prompt_lengths)} + --new-tokens {new_tokens} = {longest} positions, more than the "
            f"model's {cfg.max_position_embeddings}; use shorter prompts or fewer new tokens"
        )


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """`tyrjax bench`: load, sweep, write OUT/metrics.json and OUT/report.md, print the table."""
    from tyrjax.runs.report import write_report

    out: Path = args.out or default_out("bench")
    timer = Timer()
    with timer.phase("load"):
        model = load_model(args.model, args.dtype, args.tokenizer)
        check_lengths(model.cfg, args.prompt_lengths, args.new_tokens)
        dense = dense_for(args, model)
        if dense is not None:
            check_lengths(dense.cfg, args.prompt_lengths, args.new_tokens)
    record_command(out)
    with timer.phase("bench"):
        rows = speed_sweep(
            Contender(model.source, model.params, model.cfg),
            None if dense is None else Contender(dense.source, dense.params, dense.cfg),
            args.batch_sizes, args.prompt_lengths, args.new_tokens, args.repeats,
        )
    params = {"model": api.param_counts(model)}
    if dense is not None:
        params["dense"] = api.param_counts(dense)
    metrics = {
        "model": model.source,
        "dense_model": None if dense is None else dense.source,
        "dtype": args.dtype,
        "device": jax.devices()[0].device_kind,
        "batch_sizes": list(args.batch_sizes),
        "prompt_lengths": list(args.prompt_lengths),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "params": params,
        "speed": rows,
        "wall_s": {**timer.wall_s, "total": round(sum(timer.wall_s.values()), 3)},
    }
    write_json(out / "metrics.json", metrics)
    print_table(speed_table(rows))
    write_report(out)
    print(f"wrote {out}")
    return metrics
