"""`tyrjax.evaluate`: perplexity on the evaluation corpora (and zero-shot accuracy), beside the
dense original when the model is the output of a pruning run."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tyrjax.api.bounds import check_run_sizes
from tyrjax.api.budgets import evaluation_vocab_chunk
from tyrjax.api.configs import DataConfig, TasksConfig, data_settings, out_path
from tyrjax.api.results import EvalResult
from tyrjax.api.scoring import dense_comparison, evaluation_sets, model_identity, perplexity_metrics, windows_digest
from tyrjax.api.sources import ModelSource, dtype_name, open_model, source_paths, source_settings
from tyrjax.checkpoints.loading import Model, load_model, on_active_mesh
from tyrjax.evaluation.zeroshot import prepare_tasks, task_split, tasks_mean, zero_shot
from tyrjax.errors import TyrjaxError
from tyrjax.files import cache_dir, write_json
from tyrjax.parallel.distributed import is_writer
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.runs.lineage import dense_spec, find_origin
from tyrjax.runs.report import write_report
from tyrjax.runs.rundir import claim_run_dir


def evaluate(
    model: ModelSource = None,
    *,
    data: DataConfig = DataConfig(),
    tasks: TasksConfig | None = None,
    sets: dict[str, np.ndarray] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    device_memory_gb: float | None = None,
) -> EvalResult:
    """Perplexity of `model` (a loaded `Model`, a `ModelSpec`, a path or hub name; None: the
    embedded default) on `data`'s evaluation windows (or the given `sets`), each window scored
    alone; with `tasks`, zero-shot accuracy through lm-evaluation-harness. A model written by
    `tyrjax prune` or `tyrjax sds` is compared with the dense model that run pruned. With `out`,
    the run directory `tyrjax eval --out` writes (`force` as for `tyrjax.prune`). The LM head runs
    in vocabulary chunks sized to `device_memory_gb` per device (None: what the device reports,
    `parallel.memory`); a budget below one chunk stops before any window is scored."""
    out = out_path(out)
    budget = device_memory_bytes(device_memory_gb)
    if out is not None:
        settings = {"model": source_settings(model), "data": data_settings(data, calibrates=False),
                    "tasks": None if tasks is None else dataclasses.asdict(tasks),
                    "sets": None if sets is None else {k: windows_digest(v) for k, v in sets.items()}}
        claim = claim_run_dir(out, "eval", settings, force, inputs=source_paths(model))
    start = time.perf_counter()
    if tasks is not None:
        from tyrjax.evaluation.harness import require_lm_eval

        require_lm_eval()
        prepare_tasks(tasks.tasks)  # check the names and fetch the local task data before any other work
    loaded = open_model(model)
    dtype = dtype_name(model, loaded)
    if sets is None:
        check_run_sizes(loaded, data, None, budget, budget_flag="--device-memory")
        sets = evaluation_sets(loaded, data.eval_windows, data.eval_corpora)
    served = on_active_mesh(loaded)
    evaluation_vocab_chunk(served, sets, data.batch_size, budget)
    metrics = perplexity_metrics(served, sets, data.batch_size, progress, budget)
    metrics.update(dense_comparison(loaded.source, sets, dtype, data.batch_size, budget))
    metrics["eval_windows"] = {k: list(v.shape) for k, v in sets.items()}
    metrics["dtype"] = dtype
    tasks_wall_s = {}
    if tasks is not None:
        tasks_start = time.perf_counter()
        metrics.update(task_metrics(loaded, tasks, progress))
        tasks_wall_s["tasks"] = round(time.perf_counter() - tasks_start, 2)
        if metrics.get("dense_model") is not None or "pruned_by" in metrics:
            dense = dense_task_reference(loaded.source, tasks, dtype, progress)
            if dense is not None:
                metrics.update(dense_tasks=dense["tasks"], dense_tasks_mean=dense["tasks_mean"])
    metrics["wall_s"] = {"total": round(time.perf_counter() - start, 2), **tasks_wall_s}
    if out is not None:
        claim.take()
        write_json(out / "metrics.json", metrics)
        if is_writer():
            write_report(out)
    return EvalResult(metrics, out)


def task_metrics(model: Model, tasks: TasksConfig, progress: bool = True) -> dict[str, Any]:
    """metrics.json's task fields: per-task accuracy ({"acc", "acc_norm", "stderr", "n"}), their
    mean acc, the split each was scored on and the items cap."""
    scores = zero_shot(model, tasks.tasks, tasks.limit, tasks.batch_size, progress=progress)
    return {"tasks": scores, "tasks_mean": tasks_mean(scores),
            "tasks_split": {name: task_split(name) for name in scores}, "tasks_limit": tasks.limit}


def dense_task_reference(source: str | None, tasks: TasksConfig, dtype: str, progress: bool = True) -> dict[str, Any] | None:
    """`task_metrics` of the dense model a pruning run started from, item scores included, cached
    on disk (keyed by the model's files, the tasks, the limit and the harness version); None when
    that model is gone."""
    import lm_eval

    origin = find_origin(source)
    if origin is None:
        return None
    try:
        dense = load_model(dense_spec(origin), dtype)
    except TyrjaxError as e:
        print(f"no dense task reference ({e})", file=sys.stderr)
        return None
    if dense.directory is None:
        return task_metrics(dense, tasks, progress)
    key = model_identity(dense)
    key.update(json.dumps([tasks.tasks, tasks.limit, lm_eval.__version__, "items"]).encode())
    path = cache_dir() / "dense_tasks" / f"{key.hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = task_metrics(dense, tasks, progress)
    write_json(path, result)
    return result
