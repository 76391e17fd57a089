"""`tyrjax.bench`: time to first token and decode throughput over a sweep of batch sizes and
prompt lengths, a (pruned) model against its dense original measured in the same run."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from tyrjax.api.bounds import check_decode_batch, held_bytes
from tyrjax.api.configs import ALONE, BenchConfig, out_path
from tyrjax.api.results import BenchResult
from tyrjax.api.scoring import param_counts
from tyrjax.api.sources import ModelSource, dtype_name, open_model, source_paths, source_settings
from tyrjax.checkpoints.loading import HUB_NAME, Model, load_model, resolve_model_dir
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.speed import Contender, speed_sweep
from tyrjax.files import write_json
from tyrjax.model.blocks import ModelBlocks
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.runs.lineage import dense_spec, find_origin
from tyrjax.runs.report import write_report
from tyrjax.runs.rundir import Timer, claim_run_dir


def _is_directory_of(spec: str | None, model: Model) -> bool:
    return model.directory is not None and resolve_model_dir(spec).resolve() == Path(model.directory).resolve()


def dense_original(model: Model, against: str | None, dtype: str) -> tuple[Model | None, str | None]:
    """The dense model to compare with, and why that one: `against`, else the one recorded by
    the run that wrote `model`, else the embedded default; None for `ALONE` or when it is
    `model` itself."""
    if against == ALONE:
        return None, None
    if against is not None:
        if not Path(against).expanduser().exists() and not HUB_NAME.match(against):
            raise TyrjaxError(f"--against {against}: no such file or directory; pass the dense model's directory, "
                              ".gguf file or hub name, or 'none'")
        spec, why = against, "--against"
    else:
        origin = find_origin(model.source)
        if origin is None:
            spec, why = None, "the embedded default: --model records no run it was pruned by"
        else:
            try:
                spec = dense_spec(origin)
            except TyrjaxError as e:
                raise TyrjaxError(f"{e}; pass the dense model with --against DENSE_MODEL (or --against none)") from None
            why = f"recorded in {origin.run_dir / 'metrics.json'}"
    if _is_directory_of(spec, model):
        return None, "dense reference: --model is the dense model itself; measuring it alone"
    dense = load_model(spec, dtype)
    base = ("hidden_size", "n_layers", "vocab_size")
    if against is None and any(getattr(dense.cfg, k) != getattr(model.cfg, k) for k in base):
        raise TyrjaxError(
            f"--model {model.source}: its dense reference defaulted to {dense.source} ({why}), which has another "
            f"architecture (hidden size {dense.cfg.hidden_size}, {dense.cfg.n_layers} blocks, vocabulary "
            f"{dense.cfg.vocab_size}; --model has {model.cfg.hidden_size}, {model.cfg.n_layers}, {model.cfg.vocab_size}); "
            "pass the dense original with --against DENSE_MODEL, or --against none"
        )
    return dense, f"dense reference: {dense.source} ({why})"


def padded_beside(model: Model) -> Path | None:
    """RUN_DIR/hf_padded, when `model` is the compact RUN_DIR/model of a run that wrote one."""
    if model.directory is None or not model.cfg.is_compact or Path(model.directory).name != "model":
        return None
    padded = Path(model.directory).parent / "hf_padded"
    return padded if (padded / "config.json").is_file() else None


def check_lengths(cfg: ModelConfig, prompt_lengths: Sequence[int], new_tokens: int) -> None:
    longest = max(prompt_lengths) + new_tokens
    if longest > cfg.max_position_embeddings:
        raise TyrjaxError(
            f"--prompt-lengths {max(prompt_lengths)} + --new-tokens {new_tokens} = {longest} positions, more than the "
            f"model's {cfg.max_position_embeddings}; use --new-tokens {max(cfg.max_position_embeddings - max(prompt_lengths), 0)} "
            f"or fewer, or prompts of at most {max(cfg.max_position_embeddings - new_tokens, 0)} tokens"
        )


def check_memory(models: list[Model], config: BenchConfig) -> None:
    """The largest batch of the sweep at its longest prompt against the memory of its decode,
    with every measured model held."""
    resident = sum(held_bytes(m) for m in models)
    for m in models:
        head = m.params.head if isinstance(m.params, ModelBlocks) else m.params
        itemsize = jnp.dtype(head["embed"].dtype).itemsize
        check_decode_batch(m.cfg, max(config.batch_sizes), max(config.prompt_lengths), config.new_tokens, itemsize,
                           device_memory_bytes(), resident)


def bench(model: ModelSource = None, config: BenchConfig = BenchConfig(), *, out: str | Path | None = None,
          force: bool = False) -> BenchResult:
    """Measure `model` (a loaded `Model`, a `ModelSpec`, a path or hub name; None: the embedded
    default) against its dense original on every shape of `config`, and beside it the padded
    stock export of its run (RUN_DIR/hf_padded) when there is one; with `out`, write
    OUT/metrics.json ("speed" rows) and OUT/report.md (`force` as for `tyrjax.prune`)."""
    out = out_path(out)
    if out is not None:
        settings = {"model": source_settings(model), "bench": dataclasses.asdict(config)}
        claim = claim_run_dir(out, "bench", settings, force,
                              inputs=[*source_paths(model), *([config.against] if config.against else [])])
    timer = Timer()
    with timer.phase("load"):
        loaded = open_model(model)
        dtype = dtype_name(model, loaded)
        check_lengths(loaded.cfg, config.prompt_lengths, config.new_tokens)
        dense, note = dense_original(loaded, config.against, dtype)
        if dense is not None:
            check_lengths(dense.cfg, config.prompt_lengths, config.new_tokens)
        padded_dir = padded_beside(loaded)
        padded = None if padded_dir is None else load_model(str(padded_dir), dtype)
        check_memory([m for m in (loaded, dense, padded) if m is not None], config)
    if out is not None:
        claim.take()
    with timer.phase("bench"):
        rows = speed_sweep(
            Contender(loaded.source, loaded.params, loaded.cfg),
            None if dense is None else Contender(dense.source, dense.params, dense.cfg),
            config.batch_sizes, config.prompt_lengths, config.new_tokens, config.repeats,
            others=() if padded is None else (Contender(padded.source, padded.params, padded.cfg),),
        )
    params = {"model": param_counts(loaded)}
    if padded is not None:
        params["padded"] = param_counts(padded)
    if dense is not None:
        params["dense"] = param_counts(dense)
    metrics = {
        "model": loaded.source,
        "dense_model": None if dense is None else dense.source,
        "padded_model": None if padded is None else padded.source,
        "dtype": dtype,
        "device": jax.devices()[0].device_kind,
        "batch_sizes": list(config.batch_sizes),
        "prompt_lengths": list(config.prompt_lengths),
        "new_tokens": config.new_tokens,
        "repeats": config.repeats,
        "params": params,
        "speed": rows,
        "wall_s": {**timer.wall_s, "total": round(sum(timer.wall_s.values()), 3)},
    }
    if out is not None:
        write_json(out / "metrics.json", metrics)
        write_report(out)
    return BenchResult(metrics, note, out)
