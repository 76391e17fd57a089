"""Files: the cache where tyrjax keeps what it fetches or derives once (converted models,
corpora, token windows), and atomic writes, so an interrupted run leaves no torn file."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tyrjax.parallel.distributed import is_writer


def cache_dir() -> Path:
    """The cache root: `$TYRJAX_CACHE` if set, else `~/.cache/tyrjax`; created on demand."""
    root = os.environ.get("TYRJAX_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "tyrjax"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write to a temp file beside `path`, fsync, then rename onto it; the file gets the mode a
    new file gets (the temp file's is private).

    In a multi-process run only process 0 writes; the others return the path untouched.
    """
    return write_atomic_with(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def write_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """`numpy.save` of `array` to `path` as `write_atomic` writes, straight to the file: no
    in-memory copy of the serialised array."""
    return write_atomic_with(path, lambda f: np.save(f, array))


def write_atomic_with(path: str | Path, fill: Callable[[BinaryIO], Any]) -> Path:
    """`write_atomic` with the content written by `fill(file)`."""
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
