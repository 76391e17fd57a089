"""How far a block-by-block run has come, so a killed run resumes after its last finished block.

One JSON file names the run's key (what identifies its inputs and settings), the blocks
completed and the wall seconds they took across resumes. A block's files count only once the
file lists it, and a run with another key starts over: a stale or half-written block is
rewritten, never read. The streams a run carries from block to block (the calibration inputs of
the next block) are written one file per block, so a kill between writing the next block's
stream and recording the block leaves the stream of the last recorded block in place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tyrjax.files import write_json
from tyrjax.parallel.distributed import is_writer


class BlockProgress:
    def __init__(self, path: Path, key: str):
        self.path = Path(path)
        self.key = key
        self.earlier_s = 0.0  # wall seconds earlier runs spent on the blocks found completed
        self._since = time.perf_counter()

    def _read(self) -> dict:
        try:
            meta = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return meta if isinstance(meta, dict) and meta.get("key") == self.key else {}

    def completed(self) -> int:
        """Number of consecutive blocks already finished for this key (0 when stale or absent)."""
        return int(self._read().get("completed", 0))

    def seconds(self) -> float:
        """Wall seconds the run has taken up to its last finished block, across resumes."""
        try:
            return float(self._read().get("seconds", 0.0))
        except (TypeError, ValueError):
            return 0.0

    def start_clock(self) -> None:
        """Count time from now, on top of what the completed blocks took."""
        self.earlier_s = self.seconds() if self.completed() else 0.0
        self._since = time.perf_counter()

    def stream_path(self, name: str, completed: int) -> Path:
        """The file of stream `name` that enters block `completed` (the first not yet finished)."""
        return self.path.parent / f"{name}_{completed:04d}.npy"

    def mark(self, completed: int, streams: tuple[str, ...] = ()) -> None:
        """Record `completed` blocks as finished (their files and the `streams` entering the
        next block must be written first), then delete those streams' previous files."""
        seconds = round(self.earlier_s + time.perf_counter() - self._since, 3)
        write_json(self.path, {"key": self.key, "completed": completed, "seconds": seconds})
        if is_writer():
            for name in streams:
                self.stream_path(name, completed - 1).unlink(missing_ok=True)
