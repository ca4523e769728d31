"""``winnow report``: one self-contained HTML page about the runs in a score store.

For each selected run the page shows what the store holds:

- scores: a histogram per metric, learnability against loss, the highest and lowest examples
  of each metric, cluster sizes and duplicate counts (embedding metrics);
- training traces: the fraction pruned per epoch with the kept rows' mean loss, and how often
  each example was kept (epoch samplers); for in-step selectors and batch samplers the share of
  candidates kept over the steps, the scores of kept and dropped candidates over time, how often
  each example was picked, and a domain mixture over the steps (ODM);
- the gradient noise scale over the steps next to the batch size used, read as the critical
  batch size (McCandlish et al. 2018; docs/noise-scale.md).

Everything is aggregated in DuckDB (``ScoreStore.sql``) before it reaches Python: histograms
are bucketed in SQL, scatters use a capped, deterministic sample (ordered by a hash of the id),
and top/bottom lists use ``ORDER BY ... LIMIT``. Figures are PNGs embedded as base64 data URIs,
so the page is one file that opens anywhere. A small script marks ``<body data-images="ok">``
once every image has decoded, which the browser test checks.
"""

from __future__ import annotations

import datetime as _dt
import errno
import html
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from winnow.pipelines import _report_figures as figures
from winnow.pipelines import _report_queries as q
from winnow.store import StoreWarning

__all__ = ["render_report", "write_report"]

_MAX_CLUSTER_BARS = 200
_LOSS_NAMES = ("loss", "learner_loss", "ce_loss")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if not np.isfinite(value) else f"{value + 0.0:.4g}"  # + 0.0: no "-0"
    if value is None:
        return "—"
    return html.escape(str(value))


def _img(uri: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"></figure>'


def _scores_section(store: Any, run: str, top_k: int) -> str:
    summary = q.metric_summary(store, run)
    parts = ["<h3>Scores</h3>"]
    parts.append(
        _table(
            ["metric", "rows", "missing", "min", "mean", "max"],
            [[s["metric"], s["n"], s["missing"], s["lo"], s["mean"], s["hi"]] for s in summary],
        )
    )
    finite = [s for s in summary if s["lo"] is not None]
    clusters = [s for s in finite if "cluster" in s["metric"] and s["integral"]]
    dups = [s for s in finite if "dup" in s["metric"]]
    plain = [s for s in finite if s not in clusters and s not in dups]
    if plain:
        # 0.5-99.5 % range: heavy-tailed scores (losses) would otherwise fill a single bin
        hists = {
            s["metric"]: q.histogram(store, run, s["metric"], s["q_lo"], s["q_hi"]) for s in plain
        }
        parts.append(_img(figures.histogram_grid(hists), f"score histograms of {run}"))
        parts.append(
            "<p class='note'>Histograms span each metric's 0.5–99.5 % range; the tails are "
            "counted in the end bins.</p>"
        )
    names = {s["metric"] for s in finite}
    loss = next((n for n in _LOSS_NAMES if n in names), None)
    for learn in sorted(n for n in names if "learnability" in n):
        if loss is None:
            break
        x, y = q.paired_sample(store, run, loss, learn)
        if len(x):
            title = f"{learn} vs {loss} ({len(x)} examples sampled)"
            uri = figures.scatter(x, y, xlabel=loss, ylabel=learn, title=title)
            parts.append(_img(uri, title))
    if plain:
        parts.append(f"<h4>Highest and lowest {top_k} examples per metric</h4>")
        rows = []
        for s in plain:
            for label, desc in (("highest", True), ("lowest", False)):
                ext = q.extremes(store, run, s["metric"], top_k, desc)
                cells = [f"{r['example_id']} ({r['value'] + 0.0:.4g})" for r in ext]
                rows.append([s["metric"], label, ", ".join(cells)])
        parts.append(_table(["metric", "end", "example_id (value)"], rows))
    for s in clusters:
        sizes = q.cluster_sizes(store, run, s["metric"])
        title = (
            f"{s['metric']}: {len(sizes)} clusters, sizes {sizes.min()}–{sizes.max()}"
            f" (median {int(np.median(sizes))})"
        )
        parts.append(_img(figures.cluster_sizes(sizes[:_MAX_CLUSTER_BARS], title=title), title))
    if dups:
        rows = []
        for s in dups:
            flagged, scored = q.flagged_count(store, run, s["metric"])
            rows.append([s["metric"], flagged, scored])
        parts.append("<h4>Duplicates</h4>")
        parts.append(_table(["metric", "flagged (value ≠ 0)", "scored"], rows))
    return "\n".join(parts)


def _trace_section(store: Any, run: str, num_examples: int | None) -> str:
    """Pruned fractions use the manifest's ``num_examples``, else the distinct ids traced."""
    seen = q.traced_examples(store, run)
    n = int(num_examples or seen)
    per_epoch = q.trace_per_epoch(store, run)
    epochs = np.array([r["epoch"] for r in per_epoch], dtype=np.int64)
    kept = np.array([r["kept"] for r in per_epoch], dtype=np.float64)
    pruned = 1.0 - kept / max(n, 1)
    mean_loss = np.array(
        [np.nan if r["mean_loss"] is None else r["mean_loss"] for r in per_epoch], dtype=float
    )
    hist = q.keep_count_histogram(store, run)
    parts = [
        f"<h3>Training trace</h3><p>{seen} distinct examples traced over {len(epochs)}"
        f" epochs; fractions are of {n} examples.</p>"
    ]
    parts.append(_img(figures.trace_epochs(epochs, pruned, mean_loss), f"pruned per epoch {run}"))
    uri = figures.keep_counts(
        np.array([r["times_kept"] for r in hist]), np.array([r["n"] for r in hist]), len(epochs)
    )
    parts.append(_img(uri, f"keep counts {run}"))
    parts.append(
        _table(
            ["epoch", "rows", "kept", "fraction pruned", "mean loss (kept)", "mean weight (kept)"],
            [
                [r["epoch"], r["rows"], r["kept"], float(p), r["mean_loss"], r["mean_weight"]]
                for r, p in zip(per_epoch, pruned, strict=True)
            ],
        )
    )
    return "\n".join(parts)


def _steps_section(store: Any, run: str, top_k: int) -> str:
    """Per-step trace: what the selector kept over training, and whom it picked."""
    summary = q.step_summary(store, run)
    share = summary["kept"] / max(summary["rows"], 1)
    parts = [
        f"<h3>Selection trace</h3><p>{summary['steps']} steps traced "
        f"({summary['first']}–{summary['last']}): {summary['rows']} candidates, "
        f"{summary['kept']} kept ({share:.1%}); {summary['examples']} distinct examples were "
        f"candidates, {summary['picked']} were picked at least once.</p>"
    ]
    buckets = q.step_buckets(store, run, summary["first"], summary["last"])
    steps = np.array([b["step"] for b in buckets], dtype=float)
    kept_share = np.array([b["share_kept"] for b in buckets], dtype=float)

    def quantiles(key: str) -> np.ndarray:
        return np.array([b[key] or [np.nan] * 3 for b in buckets], dtype=float).reshape(-1, 3)

    uri = figures.step_trace(steps, kept_share, quantiles("kept_q"), quantiles("dropped_q"))
    parts.append(_img(uri, f"selection over steps {run}"))
    if not summary["scored"]:
        parts.append("<p class='note'>No scores were traced (the batch was trained whole).</p>")
    hist = q.pick_count_histogram(store, run)
    uri = figures.keep_counts(
        np.array([r["times_picked"] for r in hist]),
        np.array([r["n"] for r in hist]),
        summary["steps"],
        unit="steps",
    )
    parts.append(_img(uri, f"pick counts {run}"))
    rows = q.most_picked(store, run, top_k)
    parts.append(f"<h4>Most picked {top_k} examples</h4>")
    parts.append(
        _table(
            ["example_id", "steps kept", "steps as candidate", "mean score"],
            [[r["example_id"], r["picked"], r["candidate"], r["mean_score"]] for r in rows],
        )
    )
    return "\n".join(parts)


def _mixture_section(store: Any, run: str) -> str:
    steps, pi, labels = q.mixture_buckets(store, run)
    mean = pi.mean(axis=0)
    parts = ["<h3>Domain mixture</h3>"]
    parts.append(_img(figures.mixture(steps, pi, labels), f"domain mixture {run}"))
    parts.append(
        _table(
            ["domain", "mean weight", "first", "last"],
            [
                [label, float(m), float(pi[0, j]), float(pi[-1, j])]
                for j, (label, m) in enumerate(zip(labels, mean, strict=True))
            ],
        )
    )
    return "\n".join(parts)


def _noise_reading(b_simple: float, batch: int) -> str:
    """What the critical batch size says about the batch used (McCandlish et al. 2018, eq. 2.11:
    steps ``S = S_min (1 + B_noise / B)``, examples ``E = E_min (1 + B / B_noise)``)."""
    if not (np.isfinite(b_simple) and b_simple > 0):
        return (
            "The smoothed estimate is not positive and finite (noise dominates the measured "
            "gradient, or too few steps were measured): no reading."
        )
    steps, examples = 1.0 + b_simple / batch, 1.0 + batch / b_simple
    if batch < 0.5 * b_simple:
        regime = (
            "below the critical batch: training is step-limited, and a larger batch would cut "
            "the number of steps almost proportionally at little extra data"
        )
    elif batch > 2.0 * b_simple:
        regime = (
            "above the critical batch: more examples per step mostly buy repeated information; a "
            "smaller batch would reach the same loss with fewer examples"
        )
    else:
        regime = "near the critical batch: the usual balance between steps and examples"
    return (
        f"B<sub>crit</sub> ≈ B<sub>simple</sub> ≈ {b_simple:.4g} examples. The batch used, "
        f"{batch}, is {regime}. At this batch training takes about {steps:.3g}× the fewest "
        f"possible steps and {examples:.3g}× the fewest possible examples."
    )


def _noise_section(store: Any, run: str) -> str:
    series, last = q.noise_series(store, run)
    steps = np.array([r["step"] for r in series], dtype=float)
    b_simple = np.array([np.nan if r["b_simple"] is None else r["b_simple"] for r in series])
    batch = np.array([r["batch_size"] for r in series], dtype=float)
    parts = ["<h3>Gradient noise scale</h3>"]
    parts.append(_img(figures.noise_scale(steps, b_simple, batch), f"noise scale {run}"))
    parts.append(f"<p>{_noise_reading(last['b_simple'], int(last['usual']))}</p>")
    parts.append(
        _table(
            ["last step", "B_simple", "|G|² (smoothed)", "tr Σ (smoothed)", "batch", "estimator"],
            [
                [
                    last[k]
                    for k in ("step", "b_simple", "grad_sq", "trace_cov", "batch_size", "estimator")
                ]
            ],
        )
    )
    parts.append(
        "<p class='note'>B<sub>simple</sub> = tr(Σ) / |G|² with separately smoothed parts; it "
        "assumes plain SGD and is a guide under Adam (docs/noise-scale.md).</p>"
    )
    return "\n".join(parts)


_MANIFEST_KEYS = ("name", "kind", "status", "num_examples", "created", "finished")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{border-bottom:2px solid #3b6ea8;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef2f8} figure{margin:8px 0;display:inline-block} img{max-width:100%}
.note{color:#666;font-size:13px}
"""

# Marks the page once every image has decoded; the browser test reads the attributes.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
  document.body.setAttribute("data-images", ok === imgs.length ? "ok" : "broken");
});
"""


def render_report(
    store: Any, runs: Sequence[str] | None = None, *, top_k: int = 10, title: str | None = None
) -> str:
    """The report page as one HTML string.

    Args:
        store: a ``store.ScoreStore`` (only ``sql`` and ``runs`` are used).
        runs: run names to include; ``None`` means every run with scores, a trace, a mixture
            or a noise scale.
        top_k: how many highest/lowest examples to list per metric.
    Raises:
        ValueError: a requested run has neither scores nor a trace, or the store is empty.

    A manifest or data file the store skips (``StoreWarning``) is named at the top of the page
    and warned about as usual; the rest of the store is reported.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        body = _render(store, runs, top_k, title)
    skipped = []
    for w in caught:  # shown as usual, and named on the page: its figures lack their rows
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        if issubclass(w.category, StoreWarning):
            skipped.append(str(w.message))
    if skipped:
        note = "".join(f"<li>{html.escape(text)}</li>" for text in dict.fromkeys(skipped))
        body = body.replace(_SKIPPED_MARK, f"<p class='note'>Left out:</p><ul>{note}</ul>")
    return body.replace(_SKIPPED_MARK, "")


_SKIPPED_MARK = "<!-- skipped -->"


def _render(store: Any, runs: Sequence[str] | None, top_k: int, title: str | None) -> str:
    available = q.available_runs(store)
    if runs is None:
        selected = list(available)
        if not selected:
            raise ValueError("the store has no scores and no traces to report on")
    else:
        selected = list(dict.fromkeys(runs))
        missing = [r for r in selected if r not in available]
        if missing:
            raise ValueError(
                f"run(s) {missing} have no scores or trace in the store; "
                f"available runs: {sorted(available)}"
            )
    heading = title or "winnow report"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(heading)}</title>",
        f"<style>{_STYLE}</style></head><body data-images='pending'>",
        f"<h1>{html.escape(heading)}</h1><p class='note'>generated {now}</p>",
        _SKIPPED_MARK,
    ]
    manifests = {m.get("name"): m for m in store.runs()}
    rows = [[manifests[r].get(k) for k in _MANIFEST_KEYS] for r in selected if r in manifests]
    if rows:
        parts.append(_table(_MANIFEST_KEYS, rows))
    for run in selected:
        parts.append(f"<h2>Run {html.escape(run)}</h2>")
        if available[run]["scores"]:
            parts.append(_scores_section(store, run, top_k))
        if available[run]["trace"]:
            parts.append(_trace_section(store, run, manifests.get(run, {}).get("num_examples")))
        if available[run]["steps"]:
            parts.append(_steps_section(store, run, top_k))
        if available[run]["mixture"]:
            parts.append(_mixture_section(store, run))
        if available[run]["noise"]:
            parts.append(_noise_section(store, run))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(
    root: str | os.PathLike,
    out: str | os.PathLike,
    runs: Sequence[str] | None = None,
    *,
    top_k: int = 10,
) -> Path:
    """Render the report of the store at ``root`` and write it atomically to ``out``."""
    from winnow.store import ScoreStore

    page = render_report(ScoreStore(root), runs, top_k=top_k, title=f"winnow report: {root}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out))
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
