"""Paired comparison of two models scored on the same evaluation windows or task items.

Perplexities of two pruned models often differ by less than the window-to-window spread of
either. Because both models see the same windows, the difference is measured per window and
its uncertainty comes from resampling windows (a paired bootstrap): the ratio of perplexities
B / A with a percentile confidence interval, and how many windows B scores better.

Task accuracies likewise: two models answer the same items, and most items they answer alike,
so the change of the mean accuracy is measured item by item and its interval comes from
resampling each task's items (`paired_accuracy`), far narrower than two independent means'.
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


@dataclasses.dataclass(frozen=True)
class PairedAccuracy:
    """Mean task accuracy of B minus A over the same items, its bootstrap interval, the items and
    tasks compared, and the items only B (only A) answers right."""

    change: float
    low: float
    high: float
    confidence: float
    n_items: int
    tasks: tuple[str, ...]
    b_only: int
    a_only: int

    @property
    def decided(self) -> bool:
        """The interval excludes 0: B is more (or less) accurate than A beyond item sampling noise."""
        return self.low > 0.0 or self.high < 0.0


def shared_item_tasks(tasks_a: dict | None, tasks_b: dict | None) -> tuple[str, ...]:
    """The tasks both `tasks` maps scored item by item on as many items (what `paired_accuracy` compares)."""
    a, b = tasks_a or {}, tasks_b or {}
    return tuple(n for n in a if n in b and len(a[n].get("items", ())) == len(b[n].get("items", ())) > 0)


def paired_accuracy(tasks_a: dict, tasks_b: dict, confidence: float = 0.95, n_resamples: int = 10_000,
                    seed: int = 0) -> PairedAccuracy:
    """Compare two models' `tasks` of metrics.json (`zero_shot`'s `{task: {"acc", "items", ...}}`)
    on the tasks both scored item by item on the same items. The statistic is the change of the
    mean over tasks of each task's accuracy (as `tasks_mean`); each resample draws every task's
    items with replacement, the same draw for both models."""
    if not 0.0 < confidence < 1.0:
        raise TyrjaxError(f"paired comparison: confidence {confidence} must lie strictly between 0 and 1")
    names = shared_item_tasks(tasks_a, tasks_b)
    if not names:
        raise TyrjaxError("paired comparison: the two runs share no task scored item by item on the same items; "
                          "score both with the same --tasks and --limit")
    diffs = [np.asarray(tasks_b[n]["items"], np.float64) - np.asarray(tasks_a[n]["items"], np.float64) for n in names]
    rng = np.random.default_rng(seed)
    resampled = np.mean([d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1) for d in diffs], axis=0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return PairedAccuracy(float(np.mean([d.mean() for d in diffs])), float(low), float(high), confidence,
                          int(sum(len(d) for d in diffs)), names, int(sum((d > 0).sum() for d in diffs)),
                          int(sum((d < 0).sum() for d in diffs)))


def format_accuracy(r: PairedAccuracy) -> str:
    """`+0.012 [-0.004, +0.027]`: B's mean accuracy change against A with its interval."""
    return f"{r.change:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
