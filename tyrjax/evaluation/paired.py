"""Paired comparison of two models scored on the same evaluation windows.

Perplexities of two pruned models often differ by less than the window-to-window spread of
either. Because both models see the same windows, the difference is measured per window and
its uncertainty comes from resampling windows (a paired bootstrap): the ratio of perplexities
B / A with a percentile confidence interval, and how many windows B scores better.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tyrjax.errors import TyrjaxError


@dataclasses.dataclass(frozen=True)
class PairedRatio:
    """ppl(B) / ppl(A) over the same windows, its bootstrap interval, and B's window wins."""

    ratio: float
    low: float
    high: float
    confidence: float
    b_better: int
    n_windows: int

    @property
    def decided(self) -> bool:
        """The interval excludes 1: B is better (or worse) than A beyond window sampling noise."""
        return self.high < 1.0 or self.low > 1.0


def paired_ratio(nll_a, nll_b, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> PairedRatio:
    """Compare per-window mean next-token NLLs `nll_a`, `nll_b` (same windows, same order, every
    window the same length), as `tyrjax.evaluation.perplexity` records them in metrics.json."""
    a, b = np.asarray(nll_a, np.float64), np.asarray(nll_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise TyrjaxError(f"paired comparison: per-window losses of shapes {a.shape} and {b.shape}; "
                          "both models must be scored on the same two or more windows")
    if not 0.0 < confidence < 1.0:
        raise TyrjaxError(f"paired comparison: confidence {confidence} must lie strictly between 0 and 1")
    diff = b - a
    rng = np.random.default_rng(seed)
    resampled = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.exp(np.percentile(resampled, [tail, 100 - tail]))
    return PairedRatio(float(np.exp(diff.mean())), float(low), float(high), confidence, int((diff < 0).sum()), len(diff))


def format_ratio(r: PairedRatio) -> str:
    """`-0.42 % [-1.10, +0.31]`: B's perplexity change against A with its interval, in percent."""
    return f"{100 * (r.ratio - 1):+.2f} % [{100 * (r.low - 1):+.2f}, {100 * (r.high - 1):+.2f}]"
