"""Run directories: which command owns one, the command line it was given, its tables and timers.

A run directory belongs to the command and settings that first wrote it, as RUN_DIR/command.json
records them. The same command with the same settings resumes there; anything else stops
before any work, unless forced.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tyrjax.errors import TyrjaxError
from tyrjax.files import write_json
from tyrjax.parallel.distributed import is_writer

RECORD = "command.json"
# The command line of this process as `tyrjax.cli.main` was given it; else sys.argv.
_command_line: list[str] | None = None


def set_command_line(argv: list[str] | None) -> None:
    """Record `argv` (program name first) as the command line the run directories of this
    process name; None: sys.argv."""
    global _command_line
    _command_line = None if argv is None else list(argv)


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` as JSON gives them back (tuples as lists, paths as strings), to compare with a record."""
    return json.loads(json.dumps(settings, default=str))


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _flat(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, dict):
        return {prefix: settings}
    out: dict[str, Any] = {}
    for k, v in settings.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_changed(old: Any, new: dict[str, Any]) -> list[str]:
    """The names (dotted) of the settings that differ between a record and this call."""
    a, b = _flat(old if isinstance(old, dict) else {}), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _shown_command(record: dict[str, Any]) -> str:
    argv = record.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return " ".join(["tyrjax", *argv[1:]] if Path(argv[0]).name == "tyrjax" else argv)
    return f"tyrjax {record.get('command') or '(command not recorded)'}"


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


@dataclasses.dataclass(frozen=True)
class RunClaim:
    """A run directory checked for `command` with `settings`: `resumes` when it holds a run of
    the same, `replaces` the files of another run (forced); `take` makes it this run's."""

    out: Path
    command: str
    settings: dict[str, Any]
    record: dict[str, Any] | None
    resumes: bool
    replaces: tuple[Path, ...]

    @property
    def resume_count(self) -> int:
        """How many times the run in this directory has been resumed, this call included."""
        return int(self.record.get("resumes", 0)) + 1 if self.resumes else 0

    def take(self) -> None:
        """Delete the replaced run's files and write (or, resuming, update) the record."""
        if not is_writer():
            return
        for p in self.replaces:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        if self.resumes:
            write_json(self.out / RECORD, {**self.record, "resumes": self.resume_count})
        else:
            write_json(self.out / RECORD, {"command": self.command, "settings": self.settings,
                                           "argv": _command_line or sys.argv, "cwd": os.getcwd(),
                                           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumes": 0})


def claim_run_dir(out: Path, command: str, settings: dict[str, Any], force: bool = False,
                  inputs: Sequence[str | Path | None] = ()) -> RunClaim:
    """Check, before any work, that `out` can be the run directory of `command` with `settings`;
    nothing is written until the claim's `take`.

    A new or empty directory (or one holding only a record) is free; one holding a run of the
    same command and settings resumes. One that holds a run of another command or other
    settings, or files tyrjax did not write, stops the call with a TyrjaxError naming what is
    there. `force` replaces a tyrjax run there (its files are deleted; never when one of
    `inputs` lies inside it) and writes beside the files of a directory tyrjax did not write.
    """
    out = Path(out)
    settings = _plain(settings)
    if out.exists() and not out.is_dir():
        raise TyrjaxError(f"--out {out}: is a file, not a directory; choose a new --out")
    record = _read_record(out) if out.is_dir() else None
    held = tuple(sorted(p for p in out.iterdir() if p.name != RECORD)) if out.is_dir() else ()
    same = record is not None and record.get("command") == command and record.get("settings") == settings
    if same and held:
        return RunClaim(out, command, settings, record, True, ())
    if held and not force:
        raise TyrjaxError(_refusal(out, command, settings, record))
    if held and record is not None:
        inside = [str(p) for p in inputs if p is not None and _inside(Path(p).expanduser(), out)]
        if inside:
            raise TyrjaxError(f"--force: {', '.join(inside)} lies inside --out {out}, whose run --force would delete; "
                              "choose a new --out")
        return RunClaim(out, command, settings, record, False, held)
    return RunClaim(out, command, settings, record, False, ())


def _refusal(out: Path, command: str, settings: dict[str, Any], record: dict[str, Any] | None) -> str:
    fix = "nothing in it was touched; choose a new --out, or pass --force to"
    if record is None:
        return (f"--out {out}: the directory is not empty and tyrjax did not write it; {fix} write this "
                f"{command} run's files beside the ones there")
    if record.get("command") is None:
        what = "holds a run of an earlier tyrjax, which did not record its settings"
    elif record.get("command") != command:
        what = f"holds a run of `tyrjax {record['command']}`, not of `tyrjax {command}`"
    else:
        changed = settings_changed(record.get("settings"), settings)
        what = f"holds a run of `tyrjax {command}` with other settings ({', '.join(changed)})"
    return f"--out {out}: {what}, written by `{_shown_command(record)}`; {fix} replace that run (its files are deleted)"


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
