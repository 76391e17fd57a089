"""Zero-shot accuracy through lm-evaluation-harness, with an offline multiple-choice suite.

The harness's standard task data (ARC, HellaSwag, PIQA, ...) lives on the Hugging Face hub,
out of reach on many machines; BIG-bench's task files ship in the sdist
`bigbench-1.0.0.tar.gz`, fetched through the configured package index (or put into the cache's
downloads folder by hand) and checked against its pinned sha256. The offline suite converts a
few of its multiple-choice tasks into local harness tasks (a YAML config beside a JSONL data
file), once, into the tyrjax cache, and scores them with the same harness code path as any
online task.

Format: BIG-bench's zero-shot prompt (task prefix, "Q: " input, "A:") in the harness's cloze
form, each choice scored as the continuation " choice" without the choices listed in the
prompt (as the harness's ARC and PIQA tasks). Items whose best score is shared by several
choices are dropped; the rest are shuffled with a fixed seed so that a capped run is a
random sample.

Selection. 25 BIG-bench multiple-choice tasks with short prompts were screened with the dense
default model (SmolLM2-135M-Instruct, float32) on their first 100 shuffled items. A task is
kept when acc or acc_norm lies at least three binomial standard errors above its guess rate,
the better of uniform guessing and always giving the most frequent right answer (several
yes/no tasks score exactly that rate: the model always answers the same way). Screening
results, acc / acc_norm vs guess rate (n):

    kept  movie_recommendation      0.67 / 0.58 vs 0.25 (100)
    kept  similarities_abstraction  0.62 / 0.71 vs 0.24 (76, all items)
    kept  phrase_relatedness        0.47 / 0.62 vs 0.25 (100, all items)
    kept  general_knowledge         0.45 / 0.33 vs 0.14 (69, all items)
    kept  ruin_names                0.43 / 0.43 vs 0.25 (100)
    kept  emoji_movie               0.35 / 0.27 vs 0.20 (100, all items)
    cost  discourse_marker_prediction 0.54 / 0.52 vs 0.10 (100): ten long choices cost as
          much as the six kept tasks together, beyond the 10-minute CPU budget (and
          date_understanding, six choices, was left out unscreened for the same cost)
    near guess (z < 3): social_iqa 0.39/0.40 vs 0.33, disambiguation_qa 0.37/0.43 vs 0.33,
          odd_one_out, riddle_sense, human_organs_senses (42 items), strategyqa,
          known_unknowns, hindu_knowledge, common_morpheme, physical_intuition, crass_ai;
          at the constant-answer rate: entailed_polarity, sports_understanding, anachronisms,
          implicatures, winowhy, sentence_ambiguity, irony_identification

With `DEFAULT_LIMIT` (200 items per task; 745 items, 3,334 scored continuations in all) the
dense default model scores movie_recommendation 0.62 / 0.60 and ruin_names 0.475 / 0.455 on
200 items, the other tasks as above on all their items; `tyrjax eval --tasks offline` took
5.4 CPU-minutes on two cores (user + system time, model loading included), well within ten
minutes of wall time on an idle machine.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tyrjax.files import cache_dir
from tyrjax.errors import TyrjaxError
from tyrjax.files import write_atomic
from tyrjax.package_index import PinnedFile, fetch_pinned, verify_file

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SDIST = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
BIGBENCH_SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_SDIST_BYTES = 358_249_635
TASKS_IN_SDIST = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks"

OFFLINE = "offline"
TASK_PREFIX = "bb_"
FORMAT_VERSION = 1
STORED_ITEMS = 1000
DEFAULT_LIMIT = 200
SHUFFLE_SEED = 0

SUITE: tuple[str, ...] = (
    "emoji_movie",
    "general_knowledge",
    "movie_recommendation",
    "phrase_relatedness",
    "ruin_names",
    "similarities_abstraction",
)


def harness_name(task: str) -> str:
    """The harness task name of a BIG-bench task in the offline suite."""
    return TASK_PREFIX + task


def _progress(message: str) -> None:
    print(f"tyrjax: {message}", file=sys.stderr, flush=True)


# --- BIG-bench task files ------------------------------------------------------------------
def bigbench_dir() -> Path:
    """Where the raw task.json files of the tasks used are kept, one per task."""
    return cache_dir() / "zeroshot" / f"bigbench-{BIGBENCH_VERSION}"


def _sdist_path(tmp: Path) -> Path:
    """A local bigbench sdist, checked against its pinned sha256: one put in the cache's downloads
    folder by hand, else a fresh download from the package index into `tmp` (removed with it)."""
    pinned = PinnedFile("bigbench", BIGBENCH_SDIST, BIGBENCH_SDIST_SHA256)
    by_hand = cache_dir() / "downloads" / BIGBENCH_SDIST
    if by_hand.is_file():
        return verify_file(by_hand, pinned.sha256)
    _progress(f"fetching {BIGBENCH_SDIST} ({BIGBENCH_SDIST_BYTES // 10**6} MB) through the package index")
    try:
        return fetch_pinned(pinned, tmp / BIGBENCH_SDIST)
    except TyrjaxError as exc:
        raise TyrjaxError(f"{exc}; or put {BIGBENCH_SDIST} into {by_hand.parent} by hand") from exc


def fetch_bigbench_tasks(tasks: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """The raw task.json of each BIG-bench task, extracted once from the bigbench sdist."""
    root = bigbench_dir()
    paths = {t: root / t / "task.json" for t in tasks}
    missing = {f"{TASKS_IN_SDIST}/{t}/task.json": t for t, p in paths.items() if not p.is_file()}
    if not missing:
        return paths
    (cache_dir() / "downloads").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir() / "downloads", prefix=".bigbench-") as tmp:
        archive = _sdist_path(Path(tmp))
        _progress(f"extracting {len(missing)} task files from {archive.name}")
        try:
            with tarfile.open(archive, "r|gz") as tar:
                for member in tar:
                    task = missing.get(member.name)
                    if task is not None and member.isfile():
                        write_atomic(paths[task], tar.extractfile(member).read())
        except (tarfile.TarError, OSError) as exc:
            raise TyrjaxError(f"{archive} is not a readable tar.gz ({exc}); delete it and retry") from exc
    absent = sorted(t for t, p in paths.items() if not p.is_file())
    if absent:
        raise TyrjaxError(f"bigbench=={BIGBENCH_VERSION} has no task file for {', '.join(absent)}; check the task names")
    return paths


# --- conversion to harness tasks -----------------------------------------------------------
def read_task_json(path: Path) -> dict[str, Any]:
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TyrjaxError(f"{path}: not a readable BIG-bench task.json ({exc}); delete it to fetch it again") from None
    if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
        raise TyrjaxError(f"{path}: a BIG-bench task.json needs an 'examples' list; delete it to fetch it again")
    return task


def prompt_text(task: dict[str, Any], example: dict[str, Any]) -> str:
    """BIG-bench's zero-shot prompt for one example, ending where the answer begins."""
    input_prefix = task.get("example_input_prefix", "\nQ: ")
    output_prefix = task.get("example_output_prefix", "\nA: ")
    text = str(task.get("task_prefix", "")) + input_prefix + example["input"] + output_prefix
    return text.strip()


def multiple_choice_docs(
    task: dict[str, Any], name: str, max_items: int = STORED_ITEMS, seed: int = SHUFFLE_SEED
) -> list[dict[str, Any]]:
    """Harness documents {query, choices, gold} of a BIG-bench task's multiple-choice
    examples: those with at least two choices and one best-scored choice, shuffled with
    `seed`, at most `max_items`."""
    docs = []
    for example in task["examples"]:
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2 or not isinstance(example.get("input"), str):
            continue
        choices = [str(c).strip() for c in scores]
        values = [float(v) for v in scores.values()]
        best = max(values)
        if values.count(best) != 1 or len(set(choices)) != len(choices):
            continue
        docs.append({"query": prompt_text(task, example), "choices": choices, "gold": values.index(best)})
    if not docs:
        raise TyrjaxError(
            f"BIG-bench task {name}: no multiple-choice examples (target_scores with one best choice); pick another task"
        )
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order[:max_items]]


def chance_rate(docs: list[dict[str, Any]]) -> float:
    """Expected accuracy of guessing uniformly among each item's choices."""
    return float(np.mean([1.0 / len(d["choices"]) for d in docs]))


def constant_answer_rate(docs: list[dict[str, Any]]) -> float:
    """Accuracy of always giving the most often right answer text (e.g. always "Yes"): the
    bar a model must pass on tasks whose choices repeat and whose answers are unbalanced."""
    right: dict[str, int] = {}
    for d in docs:
        answer = d["choices"][d["gold"]]
        right[answer] = right.get(answer, 0) + 1
    return max(right.values()) / len(docs)


def guess_rate(docs: list[dict[str, Any]]) -> float:
    """The better of uniform guessing and a constant answer: what no understanding achieves."""
    return max(chance_rate(docs), constant_answer_rate(docs))


def task_config(name: str, data_file: Path) -> dict[str, Any]:
    """The harness YAML config of one converted task (multiple choice, acc and acc_norm)."""
    return {
        "task": harness_name(name),
        "tag": ["tyrjax_offline"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{gold}}",
        "doc_to_choice": "{{choices}}",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": FORMAT_VERSION, "source": f"bigbench=={BIGBENCH_VERSION}/{name}"},
    }


def write_harness_tasks(docs_by_task: dict[str, list[dict[str, Any]]], out_dir: Path) -> Path:
    """Write `<task>.jsonl` and `<task>.yaml` for each task into `out_dir`, as one atomic directory."""
    import yaml

    from tyrjax.checkpoints.hf import atomic_dir

    out_dir = Path(out_dir).absolute()
    with atomic_dir(out_dir) as tmp:
        for name, docs in docs_by_task.items():
            lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            (tmp / f"{name}.jsonl").write_text(lines, encoding="utf-8")
            config = task_config(name, out_dir / f"{name}.jsonl")
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out_dir


def offline_tasks_dir(tasks: tuple[str, ...] | list[str] | None = None) -> Path:
    """The harness task directory of the offline suite (or of `tasks`), built once in the cache."""
    tasks = tuple(sorted(tasks or SUITE))
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, STORED_ITEMS, SHUFFLE_SEED, tasks]).encode()).hexdigest()[:12]
    out = cache_dir() / "zeroshot" / f"tasks-{key}"
    if all((out / f"{t}.yaml").is_file() for t in tasks):
        return out
    paths = fetch_bigbench_tasks(tasks)
    docs = {t: multiple_choice_docs(read_task_json(paths[t]), t) for t in tasks}
    return write_harness_tasks(docs, out)


# --- running -------------------------------------------------------------------------------
def expand_task_names(names: list[str]) -> list[str]:
    """`offline` stands for every task of the offline suite; other names pass through."""
    out: list[str] = []
    for name in names:
        for expanded in [harness_name(t) for t in SUITE] if name == OFFLINE else [name]:
            if expanded not in out:
                out.append(expanded)
    if not out:
        raise TyrjaxError("no zero-shot tasks given; pass task names like `offline` or `arc_easy,hellaswag`")
    return out


def task_metrics(results: dict[str, Any], task: str) -> dict[str, Any]:
    """{metric: value, ..., "n": items scored} of one task from the harness's results."""
    row = results["results"][task]
    names = results["higher_is_better"][task]
    metrics: dict[str, Any] = {}
    for key, value in row.items():
        metric, _, filter_name = key.partition(",")
        if metric in names and isinstance(value, (int, float)):
            metrics[metric if filter_name == "none" else key] = float(value)
    metrics["n"] = int(results["n-samples"][task]["effective"])
    return metrics


def run_tasks(
    lm: Any,
    names: list[str],
    limit: int | None = None,
    include_paths: list[Path] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run harness tasks on an `lm_eval` LM; {task: {"acc", "acc_norm", ..., "n"}}.

    Only the directories in `include_paths` are indexed unless a name is not found there,
    in which case the harness's own task registry (which downloads its data) is added."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if limit is not None and limit < 1:
        raise TyrjaxError(f"zero-shot limit {limit} must be a positive number of items per task")
    manager = TaskManager(include_path=[str(p) for p in include_paths or []] or None, include_defaults=False)
    if not set(names) <= set(manager.all_tasks):
        manager = TaskManager(include_path=[str(p) for p in include_paths or []] or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TyrjaxError(
            f"unknown zero-shot task(s) {', '.join(unknown)}; use `offline` for the offline suite "
            f"({', '.join(harness_name(t) for t in SUITE)}) or a task name of lm-evaluation-harness"
        )
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    results = simple_evaluate(
        model=lm, tasks=names, limit=limit, task_manager=manager, log_samples=False, bootstrap_iters=0,
        verbosity="WARNING",
    )
    return {name: task_metrics(results, name) for name in names if name in results["results"]}


def prepare_tasks(tasks: str | list[str]) -> tuple[list[str], list[Path]]:
    """The harness task names of `tasks` and the task directories to index, the offline suite's
    built (fetched) now: a caller that evaluates other things first fails early without it."""
    names = expand_task_names([t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks))
    suite_names = {harness_name(t) for t in SUITE}
    include = [offline_tasks_dir(tuple(SUITE))] if any(n in suite_names for n in names) else []
    return names, include


def zero_shot(
    model: Any,
    tasks: str | list[str] = OFFLINE,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 16,
    head_mask: Any = None,
    ffn_mask: Any = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy of a tyrjax `Model` on harness tasks: {task: {"acc", "acc_norm", "n"}}.

    `tasks` is a comma-separated string or a list; `offline` is the cached BIG-bench suite,
    other names are lm-evaluation-harness tasks (fetched by the harness). `limit` caps the
    items per task (None: all)."""
    from tyrjax.evaluation.harness import TyrjaxLM

    names, include = prepare_tasks(tasks)
    lm = TyrjaxLM(model, batch_size=batch_size, head_mask=head_mask, ffn_mask=ffn_mask, progress=progress)
    return run_tasks(lm, names, limit, include)

