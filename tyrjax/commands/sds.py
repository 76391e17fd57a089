"""`tyrjax prune --method sparsegpt|wanda|magnitude` and `tyrjax sds`: run, evaluate, write RUN_DIR.

RUN_DIR holds metrics.json (method, pattern, sparsity target/achieved/per layer, perplexities of
the dense and the pruned model, wall time per step, hyperparameters), layer_losses.json (each
linear layer's reconstruction loss per step), command.json, the pruned model as orbax
(`model/`, loadable with --model) and as Hugging Face safetensors with zeros (`hf/`).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable

from tyrjax import api
from tyrjax.checkpoints.hf import save_hf, save_orbax
from tyrjax.parallel.distributed import is_writer
from tyrjax.checkpoints.loading import Model, load_model
from tyrjax.model.decoder import Params
from tyrjax.runs.report import write_report
from tyrjax.runs.rundir import Timer, default_out, print_table, record_command
from tyrjax.files import write_json
from tyrjax.sds.pipeline import check_pattern_fits, prune_oneshot, run_sds_pipeline, sds_settings
from tyrjax.checkpoints.loading import on_active_mesh
from tyrjax.sparse import parse_pattern


def _tokenizer_dir(model: Model, args: argparse.Namespace) -> Path | None:
    """Where the tokenizer files to copy beside the saved model live."""
    return Path(args.tokenizer) if args.tokenizer else model.directory


def _corpora(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(c for c in args.eval_data.split(",") if c)


def _per_layer_sparsity(layers: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {k: r["sparsity"] for k, r in layers.items()}


def _layer_losses(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per layer: the loss (one-shot) or the loss of every step and the kept one (SDS)."""
    out = {}
    for key, r in layers.items():
        if "loss" in r:
            out[key] = {"loss": r["loss"], **({"chosen": r["chosen"]} if "chosen" in r else {})}
    return out


def _print_comparison(dense: dict[str, float], pruned: dict[str, float], label: str) -> None:
    rows = [("corpus", "dense ppl", f"{label} ppl", "change")]
    rows += [(k, f"{dense[k]:.3f}", f"{pruned[k]:.3f}", f"{100 * (pruned[k] / dense[k] - 1):+.1f}%") for k in pruned]
    print_table(rows)


def _run(
    args: argparse.Namespace,
    command: str,
    run: Callable[[Model, Any], tuple[Params, dict[str, Any]]],
) -> dict[str, Any]:
    """Shared driver: load, calibrate, dense eval, `run`, pruned eval, save, report."""
    parse_pattern(args.pattern)  # a bad pattern fails before any loading
    out = args.out or default_out(command)
    timer = Timer()
    with timer.phase("load"):
        model = load_model(args.model, args.dtype, args.tokenizer)
        check_pattern_fits(model.params, args.pattern)
    with timer.phase("data"):
        calib = api.calibration_windows(model, args.data, args.calib_windows)
        sets = api.evaluation_sets(model, args.eval_windows, _corpora(args))
    with timer.phase("dense_eval"):
        dense = api.dense_reference(on_active_mesh(model), sets, args.batch_size)
    with timer.phase("prune"):
        params, report = run(model, calib)
    pruned = dataclasses.replace(model, params=params)
    with timer.phase("eval"):
        evaluated = api.evaluate(on_active_mesh(pruned), sets, args.batch_size)
    with timer.phase("save"):
        if is_writer():  # in a multi-process run, process 0 writes the run directory
            tok_dir = _tokenizer_dir(model, args)
            save_orbax(params, model.cfg, out / "model", tok_dir)
            save_hf(params, model.cfg, out / "hf", tok_dir)
    metrics = {
        "model": model.source,
        "method": report["method"],
        "pattern": report["pattern"],
        "sparsity": {**report["sparsity"], "per_layer": _per_layer_sparsity(report["layers"])},
        "ppl": evaluated["ppl"],
        "dense_ppl": dense["ppl"],
        "window_nll": evaluated["window_nll"],
        "window_digest": evaluated["window_digest"],
        "dense_window_nll": dense["window_nll"],
        "params": evaluated["params"],
        "hyperparameters": report.get("hyperparameters", {}),
        "chosen": report.get("chosen"),
        "data": args.data,
        "calib_windows": list(calib.shape),
        "eval_windows": {k: list(v.shape) for k, v in sets.items()},
        "dtype": args.dtype,
        "seed": args.seed,
        "wall_s": {**timer.wall_s, "total": round(sum(timer.wall_s.values()), 3)},
    }
    if metrics["chosen"] is None:
        del metrics["chosen"]
    record_command(out)
    write_json(out / "layer_losses.json", _layer_losses(report["layers"]))
    write_json(out / "metrics.json", metrics)
    if is_writer():
        write_report(out)
    _print_comparison(dense["ppl"], evaluated["ppl"], f"{report['method']} {report['pattern']}")
    print(f"sparsity: target {report['sparsity']['target']:.4f}, achieved {report['sparsity']['achieved']:.4f} "
          f"(attention+MLP linear weights); wall {metrics['wall_s']['total']:.1f} s")
    print(f"wrote {out / 'metrics.json'}")
    return metrics


def run_oneshot(args: argparse.Namespace) -> dict[str, Any]:
    """`tyrjax prune --method sparsegpt|wanda|magnitude --pattern P`."""

    def run(model: Model, calib: Any) -> tuple[Params, dict[str, Any]]:
        return prune_oneshot(model.params, model.cfg, calib, args.pattern, args.method)

    return _run(args, "prune", run)


def run_sds(args: argparse.Namespace) -> dict[str, Any]:
    """`tyrjax sds --pruner sparsegpt|wanda --pattern P [--steps --lr --l1 --l2 ...]`."""

    # bad hyperparameters fail before any loading
    sds_settings(args.pruner, args.steps, args.adjust_steps, args.lr, args.l1, args.l2, args.optimizer, args.inputs, args.adjust)

    def run(model: Model, calib: Any) -> tuple[Params, dict[str, Any]]:
        return run_sds_pipeline(
            model.params, model.cfg, calib, args.pattern, args.pruner,
            steps=args.steps, adjust_steps=args.adjust_steps, adjust=args.adjust, lr=args.lr, l1=args.l1, l2=args.l2,
            optimizer=args.optimizer, inputs=args.inputs,
        )

    return _run(args, "sds", run)
