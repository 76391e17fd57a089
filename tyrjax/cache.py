"""Where tyrjax keeps what it fetches or derives once: converted models, corpora, token windows."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$TYRJAX_CACHE` if set, else `~/.cache/tyrjax`; created on demand."""
    root = os.environ.get("TYRJAX_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "tyrjax"
    path.mkdir(parents=True, exist_ok=True)
    return path
