"""Run directories: where a command writes, the command line it was given, its tables and timers."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tyrjax.files import write_json




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
