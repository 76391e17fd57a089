"""The typed results of the Python API. `metrics` is what the run directory's metrics.json
holds; `run_dir` is None when the call was given no `out`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from tyrjax.checkpoints.loading import Model


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """A pruned model and how it was made.

    Structured methods give a physically smaller (compact) model, its keep masks
    (`head_mask` (blocks, heads), `ffn_mask` (blocks, neurons)) and `removed_groups`, the
    reusable distribution (heads, then neurons removed, per block); Týr also gives the search
    `history` of each iteration. Unstructured methods and SDS give the model with zeros in
    dense shapes and `layers`, each linear layer's achieved sparsity and reconstruction losses."""

    model: Model
    metrics: dict[str, Any]
    run_dir: Path | None = None
    head_mask: np.ndarray | None = None
    ffn_mask: np.ndarray | None = None
    removed_groups: np.ndarray | None = None
    history: list | None = None
    layers: dict[str, dict[str, Any]] | None = None

    @property
    def ppl(self) -> dict[str, float]:
        return self.metrics["ppl"]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Perplexity per corpus (and zero-shot accuracy with tasks) of one model."""

    metrics: dict[str, Any]
    run_dir: Path | None = None

    @property
    def ppl(self) -> dict[str, float]:
        return self.metrics["ppl"]


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Speed rows (one per model and shape; the model's rows carry speedups against the dense
    one) and which dense model was measured, with why (`dense_note`)."""

    metrics: dict[str, Any]
    dense_note: str | None = None
    run_dir: Path | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.metrics["speed"]
