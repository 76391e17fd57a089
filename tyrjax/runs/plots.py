"""PNG plots of runs: per-layer sparsity, search convergence, perplexity, accuracy and speed
against the dense model, perplexity against sparsity across runs (written atomically)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tyrjax.files import write_atomic  # noqa: E402


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
    return _save(search_convergence_figure(histories), path)


def search_convergence_figure(histories: list[list[dict]]):
    """The figure of `search_convergence`: generations counted across iterations, whole-number ticks."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    offset = 0
    for i, hist in enumerate(histories):
        gens = [offset + h["generation"] for h in hist]
        ax.plot(gens, [h["fitness"] for h in hist], marker=".", label=f"iteration {i + 1}")
        offset += len(hist)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense ‖ parent)")
    ax.set_title("Týr search: parent's KL on each generation's final-stage tokens", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def _short(value: float) -> str:
    """A bar's value in a few characters: 6,486 / 39.4 / 0.000221."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    """Bars of each series side by side within each group, value written on top."""
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width=width, label=name)
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.legend(fontsize=8)


def perplexity_vs_dense(path: Path, ppl: dict[str, float], dense_ppl: dict[str, float] | None, label: str) -> Path:
    """Perplexity per corpus of this model beside the dense model's (when known)."""
    corpora = list(ppl)
    series = {} if dense_ppl is None else {"dense": [dense_ppl.get(c, float("nan")) for c in corpora]}
    series[label] = [ppl[c] for c in corpora]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(corpora) + 2), 3.2))
    _grouped_bars(ax, corpora, series)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Perplexity against the dense model" if dense_ppl is not None else "Perplexity", fontsize=9)
    return _save(fig, path)


def accuracy_vs_dense(path: Path, tasks: dict[str, dict], dense_tasks: dict[str, dict] | None, label: str) -> Path:
    """Zero-shot accuracy per task of this model beside the dense model's (when known)."""
    names = list(tasks)
    series = {} if dense_tasks is None else {"dense": [dense_tasks.get(t, {}).get("acc", float("nan")) for t in names]}
    series[label] = [tasks[t]["acc"] for t in names]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names) + 2), 3.2))
    _grouped_bars(ax, names, series)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Zero-shot accuracy against the dense model" if dense_tasks is not None else "Zero-shot accuracy", fontsize=9)
    return _save(fig, path)


def speed_comparison(path: Path, rows: list[dict]) -> Path:
    """Time to first token and decode tokens/s per (batch, prompt) shape, one bar per model."""
    shapes = list(dict.fromkeys((r["batch"], r["prompt"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["batch"], r["prompt"]): r for r in rows}
    groups = [f"b{b} p{p}" for b, p in shapes]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(shapes) * 2 + 3), 3.4))
    for ax, key, ylabel in ((axes[0], "ttft_s", "time to first token (s)"), (axes[1], "decode_tok_s", "decode tokens/s")):
        series = {m: [by[(m, b, p)][key] if (m, b, p) in by else float("nan") for b, p in shapes] for m in models}
        _grouped_bars(ax, groups, series)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("batch size, prompt length")
    fig.suptitle("Prefill latency (lower is better) and decode throughput (higher is better)", fontsize=9)
    return _save(fig, path)


def log_limits(values: list[float], margin: float = 1.25) -> tuple[float, float]:
    """Limits of a log axis that hold every positive value with room for its marker:
    `margin` times beyond the lowest and the highest."""
    shown = [v for v in values if v > 0 and math.isfinite(v)]
    if not shown:
        return 1.0, 10.0
    return min(shown) / margin, max(shown) * margin


def linear_limits(values: list[float], margin: float = 0.05) -> tuple[float, float]:
    """Limits of a linear axis that hold every value with `margin` of the span (or of 1) on each side."""
    lo, hi = min(values), max(values)
    pad = margin * ((hi - lo) or 1.0)
    return lo - pad, hi + pad


def perplexity_vs_sparsity(path: Path, corpora: list[str], points: dict[str, list[tuple[float, dict[str, float]]]],
                           dense: list[dict[str, float]]) -> Path:
    """`perplexity_vs_sparsity_figure` as a PNG."""
    return _save(perplexity_vs_sparsity_figure(corpora, points, dense), path)


def perplexity_vs_sparsity_figure(corpora: list[str], points: dict[str, list[tuple[float, dict[str, float]]]],
                                  dense: list[dict[str, float]]):
    """One panel per corpus: each method's perplexity against its achieved sparsity, the dense
    model(s) as horizontal reference lines. `points`: method -> [(sparsity, {corpus: ppl})].
    The axes hold every point and line with a margin; the legend sits below the panels, where
    it covers none of them."""
    fig, axes = plt.subplots(1, len(corpora), figsize=(4.6 * len(corpora), 3.6), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        ys: list[float] = []
        xs: list[float] = [0.0]
        for i, ref in enumerate(dense):
            if corpus in ref:
                ax.axhline(ref[corpus], color="black", linestyle="--", linewidth=1, label="dense" if i == 0 else None)
                ys.append(ref[corpus])
        for method, pts in points.items():
            xy = sorted((s, ppl[corpus]) for s, ppl in pts if corpus in ppl)
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=method)
                xs += [x for x, _ in xy]
                ys += [y for _, y in xy]
        ax.set_yscale("log")
        ax.set_ylim(*log_limits(ys))
        ax.set_xlim(*linear_limits(xs))
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        # minor labels only where the axis spans less than a decade (else they crowd the major ones)
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="y", which="both", labelsize=8)
        ax.set_xlabel("achieved sparsity (attention+MLP)")
        ax.set_ylabel(f"perplexity, {corpus}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.subplots_adjust(bottom=0.26)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle("Perplexity against sparsity (log scale; lower is better)", fontsize=9)
    return fig


def loss_curve(path: Path, losses, title: str) -> Path:
    """The training loss of each fine-tuning step."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(losses) + 1), losses, marker="." if len(losses) <= 50 else None)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
