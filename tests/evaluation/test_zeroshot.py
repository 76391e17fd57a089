"""The offline zero-shot suite: BIG-bench task files to harness tasks, fetched and cached once."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from tiny_lm import tiny_lm_dir, words

from tyrjax import api
from tyrjax.evaluation import zeroshot
from tyrjax.cli import main
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.harness import TyrjaxLM
from tyrjax.checkpoints.loading import load_model

TASK = {
    "name": "toy",
    "task_prefix": "Answer the question.\n",
    "examples": [
        {"input": "Is fire hot?", "target_scores": {"Yes": 1, "No": 0}},
        {"input": "Is ice hot?", "target_scores": {" Yes ": 0, "No": 1}},
        {"input": "Two best answers", "target_scores": {"a": 1, "b": 1, "c": 0}},
        {"input": "Only one choice", "target_scores": {"a": 1}},
        {"input": "Generative", "target": "free text"},
    ],
}


def test_conversion_follows_bigbench_zero_shot_prompt():
    docs = zeroshot.multiple_choice_docs(TASK, "toy", seed=0)
    assert sorted((d["query"], tuple(d["choices"]), d["gold"]) for d in docs) == [
        ("Answer the question.\n\nQ: Is fire hot?\nA:", ("Yes", "No"), 0),
        ("Answer the question.\n\nQ: Is ice hot?\nA:", ("Yes", "No"), 1),
    ]
    custom = {"example_input_prefix": "\nSentence: ", "example_output_prefix": "\nRelation: ", "examples": TASK["examples"][:1]}
    assert zeroshot.multiple_choice_docs(custom, "custom")[0]["query"] == "Sentence: Is fire hot?\nRelation:"
    assert zeroshot.chance_rate(docs) == 0.5 and zeroshot.constant_answer_rate(docs) == 0.5


def test_conversion_shuffles_reproducibly_and_caps():
    task = {"examples": [{"input": f"q{i}", "target_scores": {"x": int(i % 3 == 0), "y": int(i % 3 != 0)}} for i in range(30)]}
    first = zeroshot.multiple_choice_docs(task, "t", max_items=10, seed=0)
    assert first == zeroshot.multiple_choice_docs(task, "t", max_items=10, seed=0)
    assert len(first) == 10 and first != zeroshot.multiple_choice_docs(task, "t", max_items=10, seed=1)
    assert [d["query"] for d in first] != [f"Q: q{i}\nA:" for i in range(10)]
    everything = zeroshot.multiple_choice_docs(task, "t", max_items=100)
    assert sorted(d["query"] for d in everything) == sorted(f"Q: q{i}\nA:" for i in range(30))
    assert zeroshot.constant_answer_rate(everything) == pytest.approx(20 / 30)
    assert zeroshot.guess_rate(everything) == pytest.approx(20 / 30)


def test_conversion_rejects_a_task_without_multiple_choice_items():
    with pytest.raises(TyrjaxError, match="generative.*no multiple-choice"):
        zeroshot.multiple_choice_docs({"examples": TASK["examples"][2:]}, "generative")


def mc_task(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        choices = [words(rng, k) for k in (1, 2, 3)]
        gold = int(rng.integers(0, 3))
        examples.append({"input": words(rng, 4), "target_scores": {c: int(i == gold) for i, c in enumerate(choices)}})
    return {"name": "mc", "example_input_prefix": " ", "example_output_prefix": " ", "examples": examples}


def fake_sdist(cache: Path, tasks: dict[str, dict], monkeypatch) -> Path:
    """A tar.gz laid out as the bigbench sdist, in the place a hand-downloaded copy goes."""
    archive = cache / "downloads" / zeroshot.BIGBENCH_SDIST
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, task in {**tasks, "other": mc_task(9, 2)}.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(f"{zeroshot.TASKS_IN_SDIST}/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(zeroshot, "BIGBENCH_SDIST_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    return archive


def test_fetch_extracts_the_requested_task_files_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path))
    archive = fake_sdist(tmp_path, {"alpha": mc_task(0, 3), "beta": mc_task(1, 4)}, monkeypatch)
    paths = zeroshot.fetch_bigbench_tasks(["alpha"])
    assert json.loads(paths["alpha"].read_text()) == mc_task(0, 3)
    assert sorted(p.name for p in zeroshot.bigbench_dir().iterdir()) == ["alpha"]
    archive.unlink()
    assert zeroshot.fetch_bigbench_tasks(["alpha"]) == paths  # cached: no archive needed
    fake_sdist(tmp_path, {"alpha": mc_task(0, 3)}, monkeypatch)
    with pytest.raises(TyrjaxError, match="no task file for gamma"):
        zeroshot.fetch_bigbench_tasks(["alpha", "gamma"])
    archive.write_bytes(b"damaged")
    with pytest.raises(TyrjaxError, match="sha256"):
        zeroshot.fetch_bigbench_tasks(["beta"])
    assert not list((tmp_path / "downloads").glob(".bigbench-*"))  # temp folders removed


@pytest.fixture
def offline_suite(tmp_path, monkeypatch):
    """A two-task offline suite from a fake sdist, and a tiny model that can read its words."""
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    fake_sdist(tmp_path / "cache", {"alpha": mc_task(0, 7), "beta": mc_task(1, 4)}, monkeypatch)
    monkeypatch.setattr(zeroshot, "SUITE", ("alpha", "beta"))
    tiny_lm_dir(tmp_path / "model", max_position_embeddings=2048)
    return tmp_path


def test_zero_shot_api_scores_the_offline_suite_like_the_adapter(offline_suite):
    model = load_model(str(offline_suite / "model"))
    result = api.zero_shot(model, "offline", limit=5, batch_size=4, progress=False)
    assert set(result) == {"bb_alpha", "bb_beta"}
    assert result["bb_alpha"]["n"] == 5 and result["bb_beta"]["n"] == 4
    lm = TyrjaxLM(model, batch_size=4, progress=False)
    for name in ("alpha", "beta"):
        lines = (zeroshot.offline_tasks_dir() / f"{name}.jsonl").read_text().splitlines()
        docs = [json.loads(line) for line in lines][:5]
        hits, hits_norm = [], []
        for d in docs:
            reqs = [Instance("loglikelihood", d, (d["query"], " " + c), i) for i, c in enumerate(d["choices"])]
            lls = np.array([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
            hits.append(np.argmax(lls) == d["gold"])
            hits_norm.append(np.argmax(lls / [len(c) for c in d["choices"]]) == d["gold"])
        assert result[f"bb_{name}"]["acc"] == pytest.approx(np.mean(hits))
        assert result[f"bb_{name}"]["acc_norm"] == pytest.approx(np.mean(hits_norm))


def test_prepare_tasks_builds_the_offline_suite_only_when_asked(offline_suite):
    names, include = zeroshot.prepare_tasks("offline, arc_easy")
    assert names == ["bb_alpha", "bb_beta", "arc_easy"]
    assert include == [zeroshot.offline_tasks_dir()]
    assert sorted(p.name for p in include[0].glob("*.yaml")) == ["alpha.yaml", "beta.yaml"]
    assert zeroshot.prepare_tasks(["arc_easy"]) == (["arc_easy"], [])


def test_prepare_tasks_fails_early_when_no_index_has_the_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    with pytest.raises(TyrjaxError, match=r"bigbench-1\.0\.0\.tar\.gz.*none of the configured package indexes.*by hand"):
        zeroshot.prepare_tasks("offline")
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_an_empty_task_list_gets_one_clear_error(offline_suite):
    with pytest.raises(TyrjaxError, match="no zero-shot tasks"):
        api.zero_shot(load_model(str(offline_suite / "model")), " , ", progress=False)


def test_eval_command_adds_tasks_to_metrics(offline_suite, capsys):
    text = offline_suite / "text.txt"
    text.write_text(words(np.random.default_rng(0), 1100))
    out = offline_suite / "run"
    argv = ["eval", "--model", str(offline_suite / "model"), "--eval-data", str(text), "--eval-windows", "1",
            "--tasks", "offline", "--limit", "3", "--tasks-batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"bb_alpha", "bb_beta"}
    assert all(v["n"] == 3 and set(v) == {"acc", "acc_norm", "n"} for v in metrics["tasks"].values())
    assert "bb_alpha" in capsys.readouterr().out


def test_eval_command_without_the_harness_says_how_to_install(offline_suite, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    argv = ["eval", "--model", str(offline_suite / "model"), "--tasks", "offline", "--out", str(offline_suite / "run")]
    assert main(argv) == 2
    assert "pip install 'tyrjax[eval]'" in capsys.readouterr().err
    assert not (offline_suite / "run").exists()


def test_eval_command_stops_before_any_work_when_the_suite_cannot_be_fetched(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", tmp_path.as_uri())  # an empty index: BIG-bench is not there
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    tiny_lm_dir(tmp_path / "model", max_position_embeddings=2048)
    argv = ["eval", "--model", str(tmp_path / "model"), "--tasks", "offline", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bigbench-1.0.0.tar.gz" in err and "downloads" in err
    assert not (tmp_path / "run").exists()  # no perplexity was computed, nothing was written
