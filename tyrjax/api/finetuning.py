"""`tyrjax.finetune`: recovery fine-tuning of a pruned model (LoRA or full, distilled from the dense
teacher), with perplexity before and after, sparsity kept exactly, and the merged model exported."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tyrjax.api.budgets import evaluation_vocab_chunk
from tyrjax.api.configs import DataConfig, TasksConfig, data_settings, out_path
from tyrjax.api.evaluating import task_metrics
from tyrjax.api.scoring import dense_reference, evaluation_sets, perplexity_metrics
from tyrjax.api.sources import ModelSource, check_local, open_model, source_paths, source_settings
from tyrjax.checkpoints.export import export_pruned, export_sparse
from tyrjax.checkpoints.loading import DEFAULT_SOURCE, Model, require_tokenizer
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.paired import paired_accuracy
from tyrjax.files import write_json
from tyrjax.model.blocks import ModelBlocks
from tyrjax.model.decoder import forward_jit, is_stacked
from tyrjax.parallel.distributed import is_writer
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.parallel.sharding import resolve_mesh
from tyrjax.recovery.data import check_disjoint, training_windows
from tyrjax.recovery.losses import uses_teacher
from tyrjax.recovery.modules import check_rank, weight_masks, zero_count
from tyrjax.recovery.train import CHECKPOINT_DIR, FinetuneConfig, train
from tyrjax.runs.lineage import dense_spec, find_origin
from tyrjax.runs.rundir import claim_run_dir
from tyrjax.tyr.fitness import teacher_topk

NO_TEACHER = "none"
DEFAULT_FINETUNE_DATA = DataConfig(eval_corpora=("shakespeare", "pydoc", "sotu"))


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned (merged) model and what the run measured (metrics.json)."""

    model: Model
    metrics: dict[str, Any]
    run_dir: Path | None = None

    @property
    def ppl(self) -> dict[str, float]:
        return self.metrics["ppl"]


def teacher_source(student: ModelSource, teacher: ModelSource | str) -> str | None | Model:
    """The teacher to load: `teacher` as given, or (when it is None) the dense model the pruning run
    that wrote `student` started from; NO_TEACHER when there is none."""
    if teacher is not None:
        return teacher
    spec = student.directory if isinstance(student, Model) else getattr(student, "path", student)
    origin = find_origin(None if spec is None else str(spec))
    if origin is None:
        return NO_TEACHER
    return dense_spec(origin)


def _is_none(teacher: Any) -> bool:
    return isinstance(teacher, str) and teacher == NO_TEACHER


def finetune(
    model: ModelSource,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    teacher: ModelSource | str = None,
    data: DataConfig = DEFAULT_FINETUNE_DATA,
    tasks: TasksConfig | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the pruned `model` (compact, or sparse in dense shapes) as `config` says and
    measure perplexity on `data`'s evaluation corpora (and `tasks`) before and after.

    `teacher` is the dense model the KD loss distils from: a model source, None for the dense model
    the pruning run that wrote `model` started from, or "none". Training windows come from the
    calibration split of `config.data`, which must share no document with an evaluation corpus's
    held-out split. A sparse model's zeros stay zeros (its keep-masks are its nonzeros). With `out`:
    checkpoints every `config.checkpoint_every` steps in OUT/checkpoints (a rerun with the same
    settings resumes there; other settings stop naming them), the merged model in OUT/model (compact
    safetensors, plus OUT/hf_llama when every layer has the same widths; orbax plus OUT/hf for a
    sparse model), OUT/metrics.json and OUT/loss_curve.png."""
    config.check()
    check_local(model)
    if not _is_none(teacher):
        check_local(teacher, "--teacher")
    out = out_path(out)
    budget = device_memory_bytes(config.device_memory_gb)
    teacher_spec = teacher_source(model, teacher)
    if uses_teacher(config.loss) and _is_none(teacher_spec):
        raise TyrjaxError(f"--loss {config.loss} distils from the dense model, and none is known for this model; "
                          "pass --teacher DENSE_MODEL, or --loss lm")
    check_disjoint(config.data, data.eval_corpora)
    if out is not None:
        settings = {**config.settings(), "model": source_settings(model),
                    "teacher": None if _is_none(teacher_spec) else source_settings(teacher_spec),
                    "eval": data_settings(data, calibrates=False),
                    "tasks": None if tasks is None else dataclasses.asdict(tasks)}
        claim = claim_run_dir(out, "finetune", settings, force, inputs=source_paths(model))
    if tasks is not None:
        from tyrjax.evaluation.harness import require_lm_eval
        from tyrjax.evaluation.zeroshot import prepare_tasks

        require_lm_eval()
        prepare_tasks(tasks.tasks)
    start = time.perf_counter()
    student = open_model(model)
    if isinstance(student.params, ModelBlocks):
        raise TyrjaxError("--stream: fine-tuning holds the model in memory; drop --stream")
    dense = None if _is_none(teacher_spec) else open_model(teacher_spec)
    check_student(student, dense, config)
    tokenizer = require_tokenizer(student)
    sets = evaluation_sets(student, data.eval_windows, data.eval_corpora)
    evaluation_vocab_chunk(student, sets, data.batch_size, budget)
    windows = training_windows(tokenizer, config.data, config.windows, config.seq_len, config.seed)
    if out is not None:
        claim.take()
    mesh = resolve_mesh(None)
    masks = weight_masks(student.params)
    zeros_before = zero_count(student.params)

    before = _cached(out, "before.json", lambda: _evaluation(student, sets, data, tasks, budget, progress))
    teacher_fn = dense_topk(dense, config.topk, mesh, budget) if dense is not None and uses_teacher(config.loss) else None
    result = train(student.params, student.cfg, windows, config, masks=masks, teacher=teacher_fn,
                   checkpoint_dir=None if out is None else out / CHECKPOINT_DIR, mesh=mesh, budget_bytes=budget,
                   progress=progress)
    tuned = Model(result.params, student.cfg, student.tokenizer, f"{student.source} fine-tuned ({config.method})",
                  None if out is None else out / "model")
    after = _evaluation(tuned, sets, data, tasks, budget, progress)
    forward_tps = forward_tokens_per_s(tuned, windows[:config.batch_size], mesh)
    metrics = {
        "model": dense.source if dense is not None else _dense_source(student),
        "method": f"finetune-{config.method}",
        "student": student.source,
        "finetune": dataclasses.asdict(config),
        "ppl_before": before["ppl"],
        "ppl": after["ppl"],
        "window_nll": after["window_nll"],
        "window_digest": after["window_digest"],
        "params": after["params"],
        "sparsity": {"zeros_before": zeros_before, "zeros_after": zero_count(result.params),
                     "masked_weights": int(sum(len(m) for m in masks)), "compact": student.cfg.is_compact},
        "train": {"tokens": result.tokens, "steps": result.steps, "wall_s": result.wall_s,
                  "final_loss": float(result.losses[-1]), "loss": [float(x) for x in result.losses],
                  "step_s": result.step_s, "tokens_per_s": round(result.tokens / max(result.wall_s, 1e-9), 1),
                  "step_tokens_per_s": round(result.tokens / max(result.step_s, 1e-9), 1),
                  "warm_step_tokens_per_s": _warm_rate(result, config),
                  "forward_tokens_per_s": forward_tps, "resumed_at_step": result.resumed_at},
        "eval_windows": {k: list(v.shape) for k, v in sets.items()},
    }
    if dense is not None:
        metrics["dense_ppl"] = dense_reference(dense, sets, data.batch_size, progress, budget)["ppl"]
    if tasks is not None:
        metrics.update(tasks_before=before["tasks"], tasks_mean_before=before["tasks_mean"], tasks=after["tasks"],
                       tasks_mean=after["tasks_mean"], tasks_limit=tasks.limit,
                       tasks_mean_change=dataclasses.asdict(paired_accuracy(before["tasks"], after["tasks"])))
    metrics["wall_s"] = {"total": round(time.perf_counter() - start, 2)}
    if out is not None and is_writer():
        tok_dir = student.directory if student.directory and (student.directory / "tokenizer.json").exists() else None
        metrics["outputs"] = save_model(tuned, out, tok_dir or (dense.directory if dense else None))
        from tyrjax.runs.plots import loss_curve

        loss_curve(out / "loss_curve.png", result.losses, f"finetune {config.method}, loss {config.loss}")
        write_json(out / "metrics.json", metrics)
    return FinetuneResult(tuned, metrics, out)


def check_student(student: Model, dense: Model | None, config: FinetuneConfig) -> None:
    """Before any work: a teacher with the student's vocabulary, and a LoRA rank every adapted layer holds."""
    if dense is not None and dense.cfg.vocab_size != student.cfg.vocab_size:
        raise TyrjaxError(f"--teacher {dense.source}: its vocabulary has {dense.cfg.vocab_size} tokens but the model's "
                          f"has {student.cfg.vocab_size}; distil from the dense model this one was pruned from")
    lora = config.lora()
    if lora is not None:
        check_rank(student.params, student.cfg, lora)


def dense_topk(dense: Model, k: int, mesh, budget: int):
    """The teacher of a batch of windows: the dense model's top-k, computed as each batch comes."""
    k = min(k, dense.cfg.vocab_size)

    def top(batch: np.ndarray):
        return teacher_topk(dense.params, dense.cfg, batch, k, mesh=mesh, budget_bytes=budget)

    return top


def _dense_source(student: Model) -> str:
    """The dense model the pruning run that wrote `student` started from, by name (itself when none is known)."""
    spec = teacher_source(student, None)
    if _is_none(spec):
        return student.source
    return DEFAULT_SOURCE if spec is None else spec


def _evaluation(model: Model, sets: dict[str, np.ndarray], data: DataConfig, tasks: TasksConfig | None, budget: int,
                progress: bool) -> dict[str, Any]:
    result = perplexity_metrics(model, sets, data.batch_size, progress, budget)
    if tasks is not None:
        result.update(task_metrics(model, tasks, progress))
    return result


def _cached(out: Path | None, name: str, compute) -> dict[str, Any]:
    """`compute()`, kept in OUT/name so a resumed run does not measure it again."""
    path = None if out is None else out / name
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    value = compute()
    if path is not None and is_writer():
        write_json(path, value)
    return value


def _warm_rate(result, config: FinetuneConfig) -> float | None:
    """Training tokens per second of the compiled steps after the first (None: fewer than two ran)."""
    if result.warm_steps == 0:
        return None
    return round(result.warm_steps * config.batch_size * config.seq_len / max(result.warm_step_s, 1e-9), 1)


def forward_tokens_per_s(model: Model, windows: np.ndarray, mesh=None, repeats: int = 3) -> float:
    """Tokens per second of the compiled forward on one training batch (median of `repeats`)."""
    jax.block_until_ready(forward_jit(model.params, model.cfg, windows, mesh))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(forward_jit(model.params, model.cfg, windows, mesh))
        times.append(time.perf_counter() - t0)
    return round(windows.size / float(np.median(times)), 1)


def save_model(model: Model, out: Path, tokenizer_dir: Path | None) -> dict[str, str]:
    """A compact model as `tyrjax prune` exports it; a sparse one (dense shapes) as orbax in OUT/model
    and safetensors with its zeros in OUT/hf."""
    export = export_sparse if is_stacked(model.params) else export_pruned
    return export(model.params, model.cfg, out, tokenizer_dir)
