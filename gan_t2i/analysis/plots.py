"""Small matplotlib helpers: a metric or training statistic against kimg, one line per run.

Figures are built with the object API on the Agg canvas (no pyplot state, no display needed); a
notebook shows them with `display(fig)` or as a cell's last expression.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gan_t2i.analysis.runs import Run
from gan_t2i.analysis.tables import best_row, metric_direction

PANEL = (5.0, 3.4)  # inches per subplot


def _figure(panels: int, ncols: int = 3) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, panels))
    nrows = -(-max(panels, 1) // ncols)
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:max(panels, 1)]


def _colors(runs: Sequence[Run]) -> dict[str, str]:
    return {r.name: f"C{i % 10}" for i, r in enumerate(runs)}


def plot_metric(runs: Sequence[Run], metric: str, split: str | None = None, *, mark_best: bool = True
                ) -> Figure:
    """`metric` against kimg, one line per run (CI band where recorded), a panel per split.

    Args:
        split: one split, or None for a panel per split found.
        mark_best: mark each run's best evaluation (min for fid/kid, max otherwise) with a star.
    """
    frames = {r.name: r.metrics[r.metrics["metric"] == metric] for r in runs}
    splits = [split] if split else sorted({s for df in frames.values() for s in df["split"]})
    fig, axes = _figure(len(splits))
    colors, direction = _colors(runs), metric_direction(metric)
    for ax, sp in zip(axes, splits):
        for name, df in frames.items():
            df = df[df["split"] == sp].sort_values("kimg")
            if df.empty:
                continue
            ax.plot(df["kimg"], df["value"], "o-", ms=3, color=colors[name], label=name)
            ci = df.dropna(subset=["ci_low", "ci_high"])
            if len(ci):
                ax.fill_between(ci["kimg"].astype(float), ci["ci_low"].astype(float),
                                ci["ci_high"].astype(float), color=colors[name], alpha=0.15, lw=0)
            if mark_best:
                best = best_row(df, direction)
                ax.plot([best["kimg"]], [best["value"]], "*", ms=14, color=colors[name], mec="black",
                        zorder=5)
        ax.set(xlabel="kimg", ylabel=metric, title=f"{metric} [{sp}] ({direction} is best)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def plot_stats(runs: Sequence[Run], keys: Sequence[str] = ("loss_D", "loss_G", "img_per_s"), *,
               smooth: int = 1) -> Figure:
    """Training statistics from stats.jsonl against kimg: a panel per key, one line per run.

    Args:
        smooth: rolling-mean window in ticks (1: raw).
    """
    fig, axes = _figure(len(keys))
    colors = _colors(runs)
    for ax, key in zip(axes, keys):
        for run in runs:
            if key not in run.stats or "kimg" not in run.stats:
                continue
            y = pd.to_numeric(run.stats[key], errors="coerce").rolling(smooth, min_periods=1).mean()
            ax.plot(run.stats["kimg"], y, color=colors[run.name], label=run.name)
        ax.set(xlabel="kimg", ylabel=key, title=key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig
