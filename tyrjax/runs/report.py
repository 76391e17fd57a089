"""Reports: RUN_DIR/report.md for one run (its metrics.json, command.json and plots), and
`tyrjax report RUN_DIR...`: several runs in one table and one perplexity-against-sparsity plot."""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path
from typing import Any

from tyrjax.runs import plots
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.paired import format_accuracy, format_ratio, paired_accuracy, paired_ratio, shared_item_tasks
from tyrjax.runs.rundir import claim_run_dir
from tyrjax.files import write_atomic

# The plots a run directory may hold, in report order: (file, caption).
RUN_PLOTS = (
    ("per_layer_sparsity.png", "Per-layer sparsity"),
    ("search_convergence.png", "Search convergence"),
    ("perplexity_vs_dense.png", "Perplexity against the dense model"),
    ("accuracy_vs_dense.png", "Zero-shot accuracy against the dense model"),
    ("speed.png", "Speed against the dense model"),
)
ATTENTION_LINEARS = ("wq", "wk", "wv", "wo")
MLP_LINEARS = ("w_gate", "w_up", "w_down")


# --- reading a run directory -------------------------------------------------------------------
def read_metrics(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/metrics.json as a dict; one TyrjaxError naming the directory otherwise."""
    path = Path(run_dir) / "metrics.json"
    if not Path(run_dir).is_dir():
        raise TyrjaxError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise TyrjaxError(f"{run_dir}: no metrics.json; pass a directory written by tyrjax eval, prune, sds or bench")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TyrjaxError(f"{path}: unreadable ({e}); rerun the command that wrote {run_dir}") from None
    if not isinstance(metrics, dict):
        raise TyrjaxError(f"{path}: holds a {type(metrics).__name__}, not the metrics object tyrjax writes; "
                          f"rerun the command that wrote {run_dir}")
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_map(metrics: dict[str, Any], key: str, run_dir: Path) -> dict[str, float] | None:
    """metrics[key] checked to be {name: number}; None when absent."""
    value = metrics.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(_is_number(v) for v in value.values()):
        raise TyrjaxError(f"{Path(run_dir) / 'metrics.json'}: '{key}' is not a {{name: number}} map; "
                          f"rerun the command that wrote {run_dir}")
    return {str(k): float(v) for k, v in value.items()}


def _task_map(metrics: dict[str, Any], key: str, run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """metrics[key] checked to be {task: {"acc": number, ...}}; None when absent or empty."""
    value = metrics.get(key)
    if not value:
        return None
    if not isinstance(value, dict) or not all(isinstance(r, dict) and _is_number(r.get("acc")) for r in value.values()):
        raise TyrjaxError(f"{Path(run_dir) / 'metrics.json'}: '{key}' is not a {{task: {{acc, acc_norm, n}}}} map; "
                          f"rerun the command that wrote {run_dir}")
    return value


def read_argv(run_dir: Path) -> list[str] | None:
    """The recorded command line, with the program shown as `tyrjax`; None when not recorded."""
    try:
        argv = json.loads((Path(run_dir) / "command.json").read_text())["argv"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return None
    return (["tyrjax"] + argv[1:]) if Path(argv[0]).name == "tyrjax" else argv


def run_kind(metrics: dict[str, Any]) -> str:
    if "speed" in metrics:
        return "bench"
    if "method" in metrics:
        return "sds" if str(metrics["method"]).startswith("sds-") else "prune"
    return "eval"


def method_name(metrics: dict[str, Any]) -> str:
    """The method that made the model (`tyr`, `sparsegpt`); for eval runs that of the run that
    pruned the evaluated model, else `model`."""
    if "method" in metrics:
        return str(metrics["method"])
    pruned_by = metrics.get("pruned_by")
    if isinstance(pruned_by, dict) and "method" in pruned_by:
        return str(pruned_by["method"])
    return "model"


def method_label(metrics: dict[str, Any]) -> str:
    """The method with its pattern when it has one: `tyr`, `sparsegpt 2:4`, `sds-wanda 0.5`."""
    pattern = metrics.get("pattern")
    return f"{method_name(metrics)} {pattern}" if pattern else method_name(metrics)


def series_name(metrics: dict[str, Any]) -> str:
    """The line a run belongs to in the perplexity-against-sparsity plot: the method, apart for
    each N:M pattern (whose sparsity is fixed by the pattern)."""
    pattern = str(metrics.get("pattern") or "")
    return f"{method_name(metrics)} {pattern}" if ":" in pattern else method_name(metrics)


def achieved_sparsity(metrics: dict[str, Any]) -> float | None:
    """The run's achieved attention+MLP sparsity (an eval run: the one of the run that pruned
    the model it evaluated); None when unknown."""
    sparsity = metrics.get("sparsity")
    if not isinstance(sparsity, dict):
        sparsity = metrics.get("pruned_by")
    value = sparsity.get("achieved", sparsity.get("sparsity")) if isinstance(sparsity, dict) else None
    return float(value) if _is_number(value) else None


# --- markdown ------------------------------------------------------------------------------------
def markdown_table(rows: list[tuple[str, ...]]) -> str:
    """A GitHub markdown table; the first row is the header."""
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0])] + [line(r) for r in rows[1:]])


def _change(value: float, dense: float | None) -> str:
    return f"{100 * (value / dense - 1):+.1f}%" if dense and math.isfinite(dense) else ""


def _param_rows(params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """`params` as written by the commands: {total, attn_mlp}, or one such map per role."""
    if not isinstance(params, dict):
        return []
    if "attn_mlp" in params:
        rows = [(f"{prefix}attention+MLP parameters", f"{params['attn_mlp']:,}"),
                (f"{prefix}total parameters", f"{params.get('total', 0):,}")]
        if "attn_mlp_nonzero" in params:
            rows.insert(1, (f"{prefix}attention+MLP parameters, nonzero", f"{params['attn_mlp_nonzero']:,}"))
        return rows
    return [row for role, counts in params.items() for row in _param_rows(counts, f"{role} ")]


def _settings_table(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("model", str(metrics.get("model", "")))]
    if metrics.get("dense_model"):
        rows.append(("dense model", str(metrics["dense_model"])))
    pruned_by = metrics.get("pruned_by")
    if isinstance(pruned_by, dict):
        rows.append(("pruned by", f"{pruned_by.get('method')} in {pruned_by.get('run')}"))
    for key in ("method", "pattern", "preset"):
        if metrics.get(key) is not None:
            rows.append((key, str(metrics[key])))
    sparsity = metrics.get("sparsity")
    if isinstance(sparsity, dict):
        rows += [(f"sparsity {k}", f"{sparsity[k]:.4f}") for k in ("target", "achieved") if _is_number(sparsity.get(k))]
    rows += _param_rows(metrics.get("params"))
    rows += _param_rows(metrics.get("dense_params"), "dense ")
    for key in ("dtype", "device", "data", "calib_windows", "eval_windows", "seed", "new_tokens", "repeats"):
        if metrics.get(key) is not None:
            value = metrics[key]
            rows.append((key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    for key in ("hyperparameters", "chosen"):
        if isinstance(metrics.get(key), dict) and metrics[key]:
            rows.append((key, ", ".join(f"{k}={v}" for k, v in metrics[key].items())))
    return rows


def _ppl_section(ppl: dict[str, float], dense: dict[str, float] | None, label: str,
                 losses: dict[str, list[float]] | None = None, dense_losses: dict[str, list[float]] | None = None) -> str:
    if dense is None:
        rows = [("corpus", "perplexity")] + [(c, f"{v:.3f}") for c, v in ppl.items()]
        return "## Perplexity\n\n" + markdown_table(rows)
    paired = {c: paired_ratio(dense_losses[c], losses[c]) for c in ppl
              if losses and dense_losses and c in losses and c in dense_losses and len(losses[c]) == len(dense_losses[c]) > 1}
    rows = [("corpus", "dense", label, "change") + (("change, 95 % CI over windows",) if paired else ())]
    rows += [(c, f"{dense[c]:.3f}" if c in dense else "", f"{v:.3f}", _change(v, dense.get(c)))
             + ((format_ratio(paired[c]) if c in paired else "",) if paired else ()) for c, v in ppl.items()]
    return "## Perplexity\n\n" + markdown_table(rows)


def _accuracy(r: dict[str, Any], key: str = "acc") -> str:
    if not _is_number(r.get(key)):
        return ""
    stderr = f" ± {r['stderr']:.3f}" if key == "acc" and _is_number(r.get("stderr")) else ""
    return f"{r[key]:.4f}{stderr}"


def _retained(value: float | None, dense: float | None) -> str:
    return f"{100 * value / dense:.1f} %" if _is_number(value) and _is_number(dense) and dense else ""


def task_rows(metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    """The zero-shot table of one run: per task the split, items, acc ± its standard error and
    acc_norm; with the dense model's accuracy, the share of it retained; then the mean acc."""
    tasks, dense = metrics["tasks"], metrics.get("dense_tasks") or None
    splits = metrics.get("tasks_split") or {}
    header = ("task", "split", "n", "acc ± stderr", "acc_norm") + (("dense acc", "retained") if dense else ())
    rows = [header]
    for name, r in tasks.items():
        row = (name, str(splits.get(name) or ""), str(r.get("n", "")), _accuracy(r), _accuracy(r, "acc_norm"))
        if dense:
            d = dense.get(name, {})
            row += (_accuracy(d), _retained(r.get("acc"), d.get("acc")))
        rows.append(row)
    mean = metrics.get("tasks_mean")
    if _is_number(mean):
        row = ("mean acc", "", "", f"{mean:.4f}", "")
        if dense:
            dense_mean = metrics.get("dense_tasks_mean")
            row += (f"{dense_mean:.4f}" if _is_number(dense_mean) else "", _retained(mean, dense_mean))
        rows.append(row)
    return rows


def _tasks_section(metrics: dict[str, Any]) -> str:
    note = ("Accuracy through lm-evaluation-harness (± its standard error over items); `retained` is this model's "
            "accuracy as a share of the dense model's on the same items; the mean is over tasks, as the papers average.")
    dense = metrics.get("dense_tasks")
    if shared_item_tasks(dense, metrics["tasks"]):
        change = paired_accuracy(dense, metrics["tasks"])
        note += (f" Item by item on the {change.n_items} items of {', '.join(change.tasks)}, the mean accuracy changed by "
                 f"{format_accuracy(change)} against the dense model (95 % paired-bootstrap interval over items); "
                 f"{change.b_only} items only this model answers right, {change.a_only} only the dense model.")
    return "## Zero-shot accuracy\n\n" + markdown_table(task_rows(metrics)) + "\n\n" + note


def _speed_section(metrics: dict[str, Any]) -> str:
    from tyrjax.evaluation.speed import speed_table

    note = (f"Medians of {metrics.get('repeats')} runs after an untimed warm-up; {metrics.get('new_tokens')} greedy "
            "decode steps per run. Speedups: dense time to first token / this model's, this model's decode tokens/s / dense.")
    return "## Speed\n\n" + markdown_table(speed_table(metrics["speed"])) + "\n\n" + note


def block_sparsity(per_linear: dict[str, float | None], n_blocks: int) -> tuple[list[float], list[float]]:
    """Mean sparsity of each block's attention and MLP linear layers from "BLOCK.NAME" entries
    (None: a layer whose every head or neuron was removed, counted as fully sparse)."""
    def mean(block: int, names: tuple[str, ...]) -> float:
        values = [per_linear.get(f"{block}.{n}") for n in names if f"{block}.{n}" in per_linear]
        values = [1.0 if v is None else float(v) for v in values]
        return sum(values) / len(values) if values else 0.0

    return [mean(i, ATTENTION_LINEARS) for i in range(n_blocks)], [mean(i, MLP_LINEARS) for i in range(n_blocks)]


def _draw_plots(run_dir: Path, metrics: dict[str, Any], label: str) -> None:
    """The plots a run's metrics imply and its command did not draw itself."""
    ppl = _number_map(metrics, "ppl", run_dir)
    if ppl:
        plots.perplexity_vs_dense(run_dir / "perplexity_vs_dense.png", ppl, _number_map(metrics, "dense_ppl", run_dir), label)
    tasks = _task_map(metrics, "tasks", run_dir)
    if tasks:
        plots.accuracy_vs_dense(run_dir / "accuracy_vs_dense.png", tasks, _task_map(metrics, "dense_tasks", run_dir), label)
    if metrics.get("speed"):
        plots.speed_comparison(run_dir / "speed.png", metrics["speed"])
    per_linear = metrics.get("sparsity", {}).get("per_layer") if isinstance(metrics.get("sparsity"), dict) else None
    blocks = [int(k.split(".")[0]) for k in per_linear if k.split(".")[0].isdigit()] if isinstance(per_linear, dict) else []
    if blocks and not (run_dir / "per_layer_sparsity.png").exists():
        attention, mlp = block_sparsity(per_linear, 1 + max(blocks))
        plots.per_layer_sparsity(run_dir / "per_layer_sparsity.png", attention, mlp,
                                 f"{label}: mean sparsity of each block's linear layers")


def _resumes_note(resumes: Any) -> str:
    if not isinstance(resumes, int) or resumes <= 0:
        return ""
    times = "once" if resumes == 1 else f"{resumes} times"
    return (f"\n\nThe run was resumed {times}. The supernet, search and prune phases count the earlier runs' work "
            "up to their last saved block or generation; the other phases are the last run's.")


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.md: the command, the settings, the metrics tables and the plots (drawing
    the perplexity, accuracy, speed and unstructured per-layer plots the metrics imply)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    kind, label = run_kind(metrics), method_label(metrics)
    sections = [f"# tyrjax {kind}: {run_dir.resolve().name}"]
    argv = read_argv(run_dir)
    if argv:
        sections.append("```\n" + shlex.join(argv) + "\n```")
    sections.append(markdown_table([("setting", "value")] + _settings_table(metrics)))
    ppl = _number_map(metrics, "ppl", run_dir)
    if ppl:
        sections.append(_ppl_section(ppl, _number_map(metrics, "dense_ppl", run_dir), label,
                                     _window_losses(metrics, run_dir, "window_nll"),
                                     _window_losses(metrics, run_dir, "dense_window_nll")))
    if _task_map(metrics, "tasks", run_dir):
        _task_map(metrics, "dense_tasks", run_dir)
        sections.append(_tasks_section(metrics))
    if metrics.get("speed"):
        sections.append(_speed_section(metrics))
    wall = _number_map(metrics, "wall_s", run_dir)
    if wall:
        sections.append("## Wall time\n\n" + markdown_table([("phase", "seconds")] + [(k, f"{v:.1f}") for k, v in wall.items()])
                        + _resumes_note(metrics.get("resumes")))
    _draw_plots(run_dir, metrics, label)  # after the tables: malformed metrics fail before any file is written
    figures = [f"![{caption}]({name})" for name, caption in RUN_PLOTS if (run_dir / name).is_file()]
    if figures:
        sections.append("## Plots\n\n" + "\n\n".join(figures))
    return write_atomic(run_dir / "report.md", "\n\n".join(sections) + "\n")


# --- several runs ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What `tyrjax report` compares of one run."""

    run_dir: Path
    method: str
    series: str
    target: str
    sparsity: float | None
    ppl: dict[str, float]
    dense_ppl: dict[str, float] | None
    attn_mlp: int | None
    window_nll: dict[str, list[float]] | None = None
    window_digest: dict[str, str] | None = None
    tasks: dict[str, dict[str, Any]] | None = None
    dense_tasks: dict[str, dict[str, Any]] | None = None


def summarize_run(run_dir: Path) -> RunSummary:
    """A run's comparable numbers; one TyrjaxError naming the directory when it has none."""
    metrics = read_metrics(run_dir)
    ppl = _number_map(metrics, "ppl", run_dir)
    if not ppl:
        raise TyrjaxError(
            f"{run_dir}: metrics.json has no perplexities ('ppl'); tyrjax report compares runs of tyrjax eval, prune and sds"
        )
    sparsity = metrics.get("sparsity")
    if metrics.get("pattern"):
        target = str(metrics["pattern"])
    elif isinstance(sparsity, dict) and isinstance(sparsity.get("target"), (int, float)):
        target = f"{sparsity['target']:g}"
    else:
        target = ""
    attn_mlp = kept_params(metrics)
    return RunSummary(Path(run_dir), method_name(metrics), series_name(metrics), target, achieved_sparsity(metrics), ppl,
                      _number_map(metrics, "dense_ppl", run_dir), attn_mlp,
                      _window_losses(metrics, run_dir), _window_digests(metrics), _task_map(metrics, "tasks", run_dir),
                      _task_map(metrics, "dense_tasks", run_dir))


def kept_params(metrics: dict[str, Any]) -> int | None:
    """The attention+MLP parameters the run's model keeps: the compact model's count for a
    structured run, the nonzero weights (and biases) for an unstructured one, whose weights
    keep their dense shapes."""
    params = metrics.get("params")
    counts = params.get("pruned", params) if isinstance(params, dict) else None
    if not isinstance(counts, dict):
        return None
    if isinstance(counts.get("attn_mlp_nonzero"), int):
        return counts["attn_mlp_nonzero"]
    attn_mlp = counts.get("attn_mlp")
    if not isinstance(attn_mlp, int):
        return None
    sparsity = metrics.get("sparsity")
    if metrics.get("pattern") and isinstance(sparsity, dict) and _is_number(sparsity.get("achieved")):
        # runs written before metrics.json recorded the nonzero count: the achieved zero fraction
        # of the pruned weights, which leaves the few biases out of the count
        return round(attn_mlp * (1 - float(sparsity["achieved"])))
    return attn_mlp


def _window_digests(metrics: dict[str, Any]) -> dict[str, str] | None:
    value = metrics.get("window_digest")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _window_losses(metrics: dict[str, Any], run_dir: Path, key: str = "window_nll") -> dict[str, list[float]] | None:
    """metrics[key] checked to be {corpus: [number, ...]}; None when absent (runs written
    before tyrjax recorded per-window losses)."""
    value = metrics.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in value.values()):
        raise TyrjaxError(f"{Path(run_dir) / 'metrics.json'}: '{key}' is not a {{corpus: [number, ...]}} map; "
                          f"rerun the command that wrote {run_dir}")
    return {str(k): [float(x) for x in v] for k, v in value.items()}


def dense_references(runs: list[RunSummary]) -> list[tuple[RunSummary, dict[str, float]]]:
    """Each distinct dense perplexity map, with the first run that recorded it."""
    seen: dict[tuple, tuple[RunSummary, dict[str, float]]] = {}
    for r in runs:
        if r.dense_ppl:
            seen.setdefault(tuple(sorted(r.dense_ppl.items())), (r, r.dense_ppl))
    return list(seen.values())


def comparison_table(runs: list[RunSummary]) -> list[tuple[str, ...]]:
    """Header, the dense reference(s), then one line per run: perplexity and its change against
    that run's own dense model, per corpus."""
    corpora = list(dict.fromkeys(c for r in runs for c in r.ppl))
    per_corpus = tuple(x for c in corpora for x in (f"ppl {c}", "change"))
    header = ("run", "method", "target", "sparsity") + per_corpus + ("attn+MLP params kept",)
    rows = [header]
    for r, dense in dense_references(runs):
        rows.append((f"dense (of {r.run_dir})", "dense", "", "0")
                    + tuple(x for c in corpora for x in ((f"{dense[c]:.3f}", "") if c in dense else ("", ""))) + ("",))
    for r in runs:
        cells = tuple(x for c in corpora for x in ((f"{r.ppl[c]:.3f}", _change(r.ppl[c], (r.dense_ppl or {}).get(c)))
                                                    if c in r.ppl else ("", "")))
        rows.append((str(r.run_dir), r.method, r.target, "–" if r.sparsity is None else f"{r.sparsity:.4f}")
                    + cells + ("" if r.attn_mlp is None else f"{r.attn_mlp:,}",))
    return rows


def paired_table(runs: list[RunSummary]) -> list[tuple[str, ...]] | None:
    """Each run after the first against the first, on the windows both were scored on: the
    perplexity change with its 95 % paired-bootstrap interval and the windows where the run is
    better (`tyrjax.evaluation.paired`). None when no pair has per-window losses for a common corpus."""
    base = runs[0]
    corpora = list(dict.fromkeys(c for r in runs for c in (r.window_nll or {})))
    rows = [("run",) + tuple(x for c in corpora for x in (f"{c}: change [95 % CI]", "windows better"))]
    for r in runs[1:]:
        cells: tuple[str, ...] = ()
        for c in corpora:
            a, b = (base.window_nll or {}).get(c), (r.window_nll or {}).get(c)
            digest_a, digest_b = (base.window_digest or {}).get(c), (r.window_digest or {}).get(c)
            same_windows = digest_a is not None and digest_a == digest_b
            if a is None or b is None or len(a) != len(b) or len(a) < 2 or not same_windows:
                cells += ("–", "–")
                continue
            ratio = paired_ratio(a, b)
            cells += (format_ratio(ratio), f"{ratio.b_better}/{ratio.n_windows}")
        rows.append((str(r.run_dir),) + cells)
    return rows if any(cell != "–" for row in rows[1:] for cell in row[1:]) else None


def _mean_acc(tasks: dict[str, dict[str, Any]], names: list[str]) -> float | None:
    accs = [tasks[n]["acc"] for n in names if n in tasks]
    return sum(accs) / len(accs) if accs and len(accs) == len(names) else None


def tasks_table(runs: list[RunSummary]) -> list[tuple[str, ...]] | None:
    """Per run, each task's acc, their mean and the share of the dense mean retained (against the
    run's own dense model where its metrics have one, else against the first run when that one is
    a dense model's evaluation). None when no run has task scores."""
    names = list(dict.fromkeys(t for r in runs for t in (r.tasks or {})))
    if not names:
        return None
    first = runs[0]
    baseline = first.tasks if first.tasks and first.dense_ppl is None and first.method == "model" else None
    rows = [("run",) + tuple(names) + ("mean acc", "retained")]
    for r in runs:
        tasks = r.tasks or {}
        mean = _mean_acc(tasks, names)
        dense = r.dense_tasks or baseline
        dense_mean = _mean_acc(dense, names) if dense else None
        rows.append((str(r.run_dir),) + tuple(f"{tasks[n]['acc']:.4f}" if n in tasks else "–" for n in names)
                    + ("–" if mean is None else f"{mean:.4f}", _retained(mean, dense_mean) or "–"))
    return rows


def paired_tasks_table(runs: list[RunSummary]) -> list[tuple[str, ...]] | None:
    """Each run after the first against the first, item by item on the tasks both scored on the
    same items: the mean accuracy change with its 95 % paired-bootstrap interval, and the items
    only one of the two answers right (`tyrjax.evaluation.paired`). None when no pair shares items."""
    base = runs[0].tasks or {}
    rows = [("run", "tasks", "items", "mean acc change [95 % CI]", "right only here", "right only in the first")]
    for r in runs[1:]:
        if not shared_item_tasks(base, r.tasks):
            continue
        change = paired_accuracy(base, r.tasks)
        rows.append((str(r.run_dir), ",".join(change.tasks), str(change.n_items), format_accuracy(change),
                     str(change.b_only), str(change.a_only)))
    return rows if len(rows) > 1 else None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Several runs compared: the table (header first), the window-by-window comparison with the
    first run (None when no pair shares windows), and the files written."""

    table: list[tuple[str, ...]]
    paired: list[tuple[str, ...]] | None
    markdown: Path
    plot: Path
    run_dir: Path


def compare_runs(run_dirs: list[Path], out: Path, force: bool = False) -> Comparison:
    """OUT/comparison.md (the table) and OUT/ppl_vs_sparsity.png; every run is read and checked
    before anything is written. OUT is a report's run directory (`claim_run_dir`)."""
    runs = [summarize_run(Path(d)) for d in run_dirs]
    claim = claim_run_dir(out, "report", {"run_dirs": [str(Path(d).resolve()) for d in run_dirs]}, force,
                          inputs=run_dirs)
    table = comparison_table(runs)
    points: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for r in runs:
        if r.sparsity is not None:
            points.setdefault(r.series, []).append((r.sparsity, r.ppl))
    claim.take()
    corpora = list(dict.fromkeys(c for r in runs for c in r.ppl))
    figure = plots.perplexity_vs_sparsity(out / "ppl_vs_sparsity.png", corpora, points, [d for _, d in dense_references(runs)])
    unplotted = [str(r.run_dir) for r in runs if r.sparsity is None]
    text = ["# tyrjax report", markdown_table(table)]
    if unplotted:
        text.append("Not plotted (achieved sparsity unknown): " + ", ".join(unplotted))
    paired = paired_table(runs)
    if paired:
        text.append(f"## Against {runs[0].run_dir}, window by window\n\n" + markdown_table(paired) + "\n\n"
                    + "Perplexity change of each run against the first on the same evaluation windows, with a 95 % "
                      "paired-bootstrap interval over windows: an interval that contains 0 is within window sampling noise.")
    accuracy = tasks_table(runs)
    if accuracy:
        text.append("## Zero-shot accuracy\n\n" + markdown_table(accuracy) + "\n\n"
                    + "acc per task through lm-evaluation-harness; the mean is over tasks; `retained` is the mean as a share of "
                      "the dense model's on the same tasks and items.")
    paired_tasks = paired_tasks_table(runs)
    if paired_tasks:
        text.append(f"## Against {runs[0].run_dir}, item by item\n\n" + markdown_table(paired_tasks) + "\n\n"
                    + "Change of the mean accuracy over the listed tasks against the first run on the same items, with a "
                      "95 % paired-bootstrap interval over each task's items: an interval that contains 0 is within item "
                      "sampling noise.")
    text.append(f"![Perplexity against sparsity]({figure.name})")
    markdown = write_atomic(out / "comparison.md", "\n\n".join(text) + "\n")
    return Comparison(table, paired, markdown, figure, out)
