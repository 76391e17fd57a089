"""`tyrjax.prune` and `tyrjax.api.sds`, and the one driver both run: load, calibrate, score the dense
model, prune, score the pruned model, write the run directory."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from tyrjax.api.bounds import check_run_sizes
from tyrjax.api.configs import DataConfig, SDSConfig, data_settings, out_path
from tyrjax.api.methods import (PRUNE_METHODS, UNSTRUCTURED_METHODS, RunFacts, StructuredMethod,
                                UnstructuredMethod)
from tyrjax.api.results import PruneResult
from tyrjax.api.scoring import calibration_windows, dense_reference, evaluation_sets, perplexity_metrics
from tyrjax.api.sources import (ModelSource, dtype_name, is_streamed, open_model, source_paths, source_settings,
                                tokenizer_dir)
from tyrjax.checkpoints.loading import on_active_mesh
from tyrjax.errors import TyrjaxError
from tyrjax.files import write_json
from tyrjax.parallel.distributed import is_writer
from tyrjax.runs.report import write_report
from tyrjax.runs.rundir import Timer, claim_run_dir
from tyrjax.tyr.pipeline import PRESETS, TyrConfig, removed_groups

PruningMethod = Union[StructuredMethod, UnstructuredMethod]


def run_pruning(source: ModelSource, method: PruningMethod, data: DataConfig, out: Path | None,
                progress: bool = True, command: str = "prune", force: bool = False) -> PruneResult:
    """Prune the model of `source` with `method`; with `out`, write the run directory (metrics.json,
    the pruned model, report.md and the method's files) of `command`: see `claim_run_dir`."""
    method.check(is_streamed(source))  # before anything is loaded or written
    if out is not None:
        settings = {"model": source_settings(source), "method": method.settings(), "data": data_settings(data)}
        claim = claim_run_dir(out, command, settings, force, inputs=[*source_paths(source), *method.inputs()])
    timer = Timer()
    with timer.phase("load"):
        model = open_model(source)
        dtype = dtype_name(source, model)
        bound = method.bind(model)
        n_calib = data.calib_windows or method.calib_windows()
        check_run_sizes(model, data, n_calib, method.budget_bytes(), method.calibration_streams, "--device-memory")
    with timer.phase(method.phases.data):
        calib = calibration_windows(model, data.calib, n_calib)
        sets = evaluation_sets(model, data.eval_windows, data.eval_corpora)
        dense_served = on_active_mesh(model)
        method.check_budget(dense_served, calib, sets, data.batch_size)  # before any work is written
    budget = method.budget_bytes()
    if out is not None:
        claim.take()
    with timer.phase("dense_eval"):
        dense = dense_reference(dense_served, sets, data.batch_size, progress, budget)
    del dense_served
    with timer.phase("prune"):
        pruned = method.prune(model, calib, out, bound, progress)
    if pruned.phase_s:
        del timer.wall_s["prune"]
        timer.wall_s.update(pruned.phase_s)
    # Only the pruned model is needed from here on: drop the dense weights.
    dense_model = dataclasses.replace(model, params=None)
    del model
    with timer.phase(method.phases.pruned_eval):
        evaluated = perplexity_metrics(on_active_mesh(pruned.served), sets, data.batch_size, progress, budget)
    with timer.phase(method.phases.save):
        # in a multi-process run, process 0 writes the run directory
        outputs = method.save(pruned, out, dense_model, tokenizer_dir(source)) if out is not None and is_writer() else {}
    wall_s = {**timer.wall_s, "total": round(sum(timer.wall_s.values()), 3)} if method.phases.total else timer.wall_s
    metrics = method.metrics(RunFacts(dense_model, pruned, dense, evaluated, calib, sets, wall_s, outputs, data, dtype))
    metrics["resumes"] = claim.resume_count if out is not None else 0  # wall_s includes the resumed runs' work
    if out is not None:
        method.write_files(out, dense_model, pruned, metrics)
        write_json(out / "metrics.json", metrics)
        if is_writer():
            write_report(out)
    head, ffn = pruned.head_mask, pruned.ffn_mask
    return PruneResult(
        pruned.model, metrics, out, head, ffn,
        removed_groups=None if head is None else removed_groups(head, ffn),
        history=pruned.history,
        layers=None if pruned.report is None else pruned.report["layers"],
    )


def pruning_method(method: str, sparsity: float | None, pattern: str | None, config: TyrConfig | None,
                   preset: str, distribution: str | Path | None, export: Sequence[str] = ()) -> PruningMethod:
    """The method `tyrjax.prune` runs: structured with a sparsity, unstructured with a pattern."""
    if method not in PRUNE_METHODS:
        raise TyrjaxError(f"prune: unknown method {method!r}; use one of {', '.join(PRUNE_METHODS)}")
    if preset not in PRESETS:
        raise TyrjaxError(f"prune: unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    config = PRESETS[preset] if config is None else config
    if method in UNSTRUCTURED_METHODS or pattern is not None:
        if sparsity is not None:
            raise TyrjaxError("prune: give either --pattern (unstructured) or --sparsity (structured), not both")
        if method not in UNSTRUCTURED_METHODS + ("magnitude",):
            raise TyrjaxError(f"prune: --method {method} is structured; use --sparsity instead of --pattern")
        if pattern is None:
            raise TyrjaxError(f"prune: --method {method} needs --pattern (e.g. 0.5, 2:4, 4:8)")
        if export:
            raise TyrjaxError(f"--export {export[0]}: applies to structured pruning (--sparsity); an unstructured "
                              "run writes RUN_DIR/hf, a stock checkpoint with zeros")
        return UnstructuredMethod(method, pattern, seed=config.seed, device_memory_gb=config.device_memory_gb)
    if sparsity is None:
        raise TyrjaxError(f"prune: --method {method} needs --sparsity in (0, 1), e.g. --sparsity 0.5")
    return StructuredMethod(method, sparsity, config, preset, None if distribution is None else Path(distribution),
                            tuple(export))


def prune(
    model: ModelSource = None,
    method: str = "tyr",
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
    config: TyrConfig | None = None,
    preset: str = "quick",
    distribution: str | Path | None = None,
    export: Sequence[str] = (),
    data: DataConfig = DataConfig(),
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> PruneResult:
    """Prune `model` (a loaded `Model`, a `ModelSpec`, a path or hub name; None: the embedded
    default) and score it against the dense model on the evaluation windows.

    Structured, with `sparsity` (the fraction of attention+MLP parameters to remove):
    tyr, uniform, wanda-sp, flap, magnitude; `config` (default: the `preset`'s `TyrConfig`)
    sets Týr's search and the local pruner, `distribution` applies a saved run's
    distribution.json instead of searching, `export` ("hf-padded") adds checkpoints beside
    RUN_DIR/model (`tyrjax.checkpoints.export`). Unstructured, with `pattern` (0.5, 2:4, 4:8):
    sparsegpt, wanda, magnitude. With `out`, the run directory `tyrjax prune --out` writes: a
    directory holding another run stops the call before any work unless `force`
    (`tyrjax.runs.rundir.claim_run_dir`); the same call resumes there.
    """
    chosen = pruning_method(method, sparsity, pattern, config, preset, distribution, export)
    return run_pruning(model, chosen, data, out_path(out), progress, "prune", force)


def sds(
    model: ModelSource = None,
    config: SDSConfig = SDSConfig(),
    *,
    data: DataConfig = DataConfig(),
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> PruneResult:
    """SDS (Sparse-Dense-Sparse) on every attention and MLP linear layer of `model`: prune
    one-shot, re-dense toward the dense layer's outputs, prune again (see `SDSConfig`). With
    `out`, the run directory `tyrjax sds --out` writes (`force` as for `prune`)."""
    method = UnstructuredMethod(f"sds-{config.pruner}", config.pattern, sds=config, seed=config.seed,
                                device_memory_gb=config.device_memory_gb)
    return run_pruning(model, method, data, out_path(out), progress, "sds", force)
