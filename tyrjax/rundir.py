"""Run directories: every file written atomically, so an interrupted run leaves no torn file."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tyrjax.distributed import is_writer


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write to a temp file beside `path`, fsync, then rename onto it.

    In a multi-process run only process 0 writes; the others return the path untouched.
    """
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def record_command(out: Path) -> None:
    """Keep the exact command line beside the results it produced."""
    write_json(out / "command.json", {"argv": sys.argv, "cwd": os.getcwd(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


class Timer:
    """Collects wall-clock seconds per named phase for metrics.json."""

    def __init__(self) -> None:
        self.wall_s: dict[str, float] = {}

    def phase(self, name: str):
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.wall_s[self.name] = round(self.timer.wall_s.get(self.name, 0.0) + time.perf_counter() - self.start, 3)
