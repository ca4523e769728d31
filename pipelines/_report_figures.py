"""Figures for ``winnow report``: small aggregated arrays in, a base64 PNG data URI out.

Every function takes already-aggregated data (histogram counts, a capped sample of points,
per-epoch rows, per-bucket-of-steps rows), never a full score column, so the figures cost the
same at 10^3 or 10^8 examples. Figures are built with ``matplotlib.figure.Figure`` and the Agg
canvas directly, so nothing touches pyplot's global state or the user's backend choice.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

__all__ = [
    "histogram_grid",
    "scatter",
    "cluster_sizes",
    "trace_epochs",
    "keep_counts",
    "step_trace",
    "mixture",
    "noise_scale",
]

_DPI = 72
_BLUE = "#3b6ea8"
_ORANGE = "#d9822b"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _to_data_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_grid(hists: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """One panel per metric.

    ``hists`` maps metric name to ``(edges float64 [K+1], counts int64 [K])``.
    """
    if not hists:
        raise ValueError("histogram_grid needs at least one metric")
    ncols = min(3, len(hists))
    nrows = math.ceil(len(hists) / ncols)
    fig = _figure(3.6 * ncols, 2.5 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, (edges, counts)) in zip(axes.flat, hists.items(), strict=False):
        widths = np.diff(edges)
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=_BLUE, edgecolor="white")
        if counts.max() > 0.5 * counts.sum():
            # one bin holds most rows (e.g. the losses of a trained model): show the rest too
            ax.set_yscale("log")
            name += " (log y)"
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("examples", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(hists) :]:
        ax.set_visible(False)
    return _to_data_uri(fig)


def scatter(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str) -> str:
    """A scatter of paired scores (``x``, ``y``: float [M], a capped sample); the axes span the
    0.5-99.5 % range of the sample, so a few outliers do not hide the bulk."""
    fig = _figure(4.6, 3.6)
    ax = fig.subplots()
    ax.scatter(x, y, s=4, alpha=0.35, color=_BLUE, linewidths=0)
    if len(x) > 1:
        for values, set_lim in ((x, ax.set_xlim), (y, ax.set_ylim)):
            lo, hi = np.quantile(values, [0.005, 0.995])
            pad = 0.05 * (hi - lo) or 0.5
            set_lim(lo - pad, hi + pad)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _to_data_uri(fig)


def cluster_sizes(sizes: np.ndarray, *, title: str) -> str:
    """Cluster sizes sorted descending (``sizes``: int [C], at most a few hundred bars)."""
    fig = _figure(5.5, 2.8)
    ax = fig.subplots()
    order = np.sort(np.asarray(sizes))[::-1]
    ax.bar(np.arange(len(order)), order, width=1.0, color=_BLUE)
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    return _to_data_uri(fig)


def trace_epochs(epochs: np.ndarray, pruned: np.ndarray, mean_loss: np.ndarray) -> str:
    """Fraction pruned per epoch (bars) and mean loss of the kept rows (line), ``[E]`` each."""
    fig = _figure(5.5, 3.0)
    ax = fig.subplots()
    from matplotlib.ticker import MaxNLocator

    ax.bar(epochs, pruned, color=_BLUE, label="fraction pruned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction pruned", color=_BLUE)
    if np.isfinite(mean_loss).any():
        ax2 = ax.twinx()
        ax2.plot(epochs, mean_loss, color=_ORANGE, marker="o", markersize=3)
        ax2.set_ylabel("mean loss (kept)", color=_ORANGE)
    ax.set_title("pruned per epoch", fontsize=10)
    return _to_data_uri(fig)


def keep_counts(
    times_kept: np.ndarray, num_examples: np.ndarray, num_epochs: int, *, unit: str = "epochs"
) -> str:
    """How many examples were kept k times (``times_kept``, ``num_examples``: int [K]); more
    than 60 distinct counts are binned."""
    fig = _figure(5.5, 2.8)
    ax = fig.subplots()
    from matplotlib.ticker import MaxNLocator

    times_kept, num_examples = np.asarray(times_kept), np.asarray(num_examples)
    if len(times_kept) > 60:
        edges = np.linspace(times_kept.min(), times_kept.max() + 1, 41)
        counts, _ = np.histogram(times_kept, bins=edges, weights=num_examples)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=_BLUE)
    else:
        ax.bar(times_kept, num_examples, width=0.8, color=_BLUE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{unit} kept (of {num_epochs})")
    ax.set_ylabel("examples")
    ax.set_title("how often each example was kept", fontsize=10)
    return _to_data_uri(fig)


def step_trace(
    steps: np.ndarray, share_kept: np.ndarray, kept_q: np.ndarray, dropped_q: np.ndarray
) -> str:
    """Per bucket of steps ``[S]``: the share of candidates kept (top), and the 10/50/90 %
    score quantiles ``[S, 3]`` of kept and of dropped candidates (bottom; NaN = none)."""
    fig = _figure(5.8, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    top.plot(steps, share_kept, color=_BLUE, marker="o", markersize=2)
    top.set_ylim(0.0, min(1.05, max(0.1, float(np.nanmax(share_kept)) * 1.2)))
    top.set_ylabel("share kept")
    top.set_title("candidates kept, and their scores over training", fontsize=10)
    for q, color, label in ((kept_q, _BLUE, "kept"), (dropped_q, _ORANGE, "dropped")):
        if np.isfinite(q).any():
            bottom.fill_between(steps, q[:, 0], q[:, 2], color=color, alpha=0.2, linewidth=0)
            bottom.plot(steps, q[:, 1], color=color, label=f"{label} (median, 10-90 %)")
    bottom.set_xlabel("step")
    bottom.set_ylabel("score")
    if bottom.lines:
        bottom.legend(fontsize=8)
    return _to_data_uri(fig)


def mixture(steps: np.ndarray, pi: np.ndarray, labels: list[str]) -> str:
    """The domain mixture over steps: ``pi`` ``[S, K]`` stacked, one band per label."""
    fig = _figure(5.8, 3.0)
    ax = fig.subplots()
    ax.stackplot(steps, pi.T, labels=labels, alpha=0.85)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("mixture weight")
    ax.set_title("domain mixture over training", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _to_data_uri(fig)


def noise_scale(steps: np.ndarray, b_simple: np.ndarray, batch_size: np.ndarray) -> str:
    """``B_simple`` over steps (log scale) against the batch size trained with, ``[S]`` each."""
    fig = _figure(5.8, 3.0)
    ax = fig.subplots()
    shown = np.isfinite(b_simple) & (b_simple > 0)
    ax.plot(steps[shown], b_simple[shown], color=_BLUE, label="B_simple ≈ critical batch")
    ax.plot(steps, batch_size, color=_ORANGE, linestyle="--", label="batch size used")
    if shown.any():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("examples")
    ax.set_title("gradient noise scale", fontsize=10)
    ax.legend(fontsize=8)
    return _to_data_uri(fig)
