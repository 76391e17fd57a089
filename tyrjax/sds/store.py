"""A one-shot or SDS run's finished blocks on disk, so a killed run resumes at the first
missing block and gives the model the uninterrupted run gives (`pipeline.run_pipeline`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tyrjax.files import write_json, write_npy_atomic
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params
from tyrjax.parallel.sharding import host_array
from tyrjax.runs.progress import BlockProgress

PROGRESS = "progress.json"
STREAMS = ("stream", "dense_stream")  # the processed model's calibration inputs, and the dense model's (SDS)


def pipeline_key(cfg: ModelConfig, windows: np.ndarray, **settings: Any) -> str:
    """Identifies a run: a store with another key is started over, never mixed."""
    h = hashlib.sha256()
    h.update(json.dumps([cfg.to_hf(), settings], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(windows).tobytes())
    return h.hexdigest()[:20]


class PipelineStore:
    """Per finished block, its new weights (one `.npy` per parameter) and its layers' records
    (`block_NNNN.records.json`); and the streams entering the next block. `progress.json`
    lists the finished blocks."""

    def __init__(self, directory: Path, key: str):
        self.dir = Path(directory)
        self.progress = BlockProgress(self.dir / PROGRESS, key)

    def completed(self) -> int:
        return self.progress.completed()

    def _block_path(self, block: int, what: str) -> Path:
        return self.dir / f"block_{block:04d}.{what}"

    def save_block(self, block: int, params: Params, records: dict[str, Any], streams: tuple) -> None:
        """Block `block`'s weights and records, and `streams` (the processed model's and, or
        None, the dense model's) entering block `block + 1`. On a multi-process mesh every
        process calls this (the arrays are gathered); process 0 writes."""
        names = STREAMS[:sum(s is not None for s in streams)]
        for name, array in params.items():
            write_npy_atomic(self._block_path(block, f"{name}.npy"), host_array(array))
        write_json(self._block_path(block, "records.json"), records)
        for name, stream in zip(names, streams):
            write_npy_atomic(self.progress.stream_path(name, block + 1), host_array(stream))
        self.progress.mark(block + 1, streams=names)

    def load_block(self, block: int) -> tuple[Params, dict[str, Any]]:
        """Block `block`'s weights (host arrays) and records, as the run made them."""
        prefix = self._block_path(block, "")
        params = {path.name[len(prefix.name):-len(".npy")]: np.load(path)
                  for path in sorted(self.dir.glob(f"{prefix.name}*.npy"))}
        return params, json.loads(self._block_path(block, "records.json").read_text())

    def load_streams(self, dense_stream: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The streams entering the first block not yet finished."""
        n = self.completed()
        x_s = np.load(self.progress.stream_path(STREAMS[0], n))
        return x_s, (np.load(self.progress.stream_path(STREAMS[1], n)) if dense_stream else None)
