"""PNG plots of a run: per-layer sparsity and search convergence (written atomically)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tyrjax.rundir import write_atomic  # noqa: E402


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def per_layer_sparsity(path: Path, attention: list[float], mlp: list[float], title: str) -> Path:
    """Bars of each block's attention and MLP sparsity."""
    fig, ax = plt.subplots(figsize=(max(6, len(attention) * 0.3), 3.2))
    x = range(len(attention))
    ax.bar([i - 0.2 for i in x], attention, width=0.4, label="attention (heads)")
    ax.bar([i + 0.2 for i in x], mlp, width=0.4, label="MLP (neurons)")
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def search_convergence(path: Path, histories: list[list[dict]]) -> Path:
    """The parent's fitness per generation, one line per iteration. Each generation scores on
    fresh token batches (as the method prescribes), so the curve carries batch-to-batch noise."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    offset = 0
    for i, hist in enumerate(histories):
        gens = [offset + h["generation"] for h in hist]
        ax.plot(gens, [h["fitness"] for h in hist], marker=".", label=f"iteration {i + 1}")
        offset += len(hist)
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense ‖ parent)")
    ax.set_title("Týr search: parent's KL on each generation's final-stage tokens", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
