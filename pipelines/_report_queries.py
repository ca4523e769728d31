"""DuckDB queries behind ``winnow report``: aggregates in, small Python values out.

Every query runs through ``ScoreStore.sql`` over the ``scores(run, metric, example_id, value)``
and ``trace(run, epoch, example_id, loss, kept, weight)`` views and returns at most a few
thousand rows whatever the store's size: histograms are bucketed in SQL, the scatter sample is
capped and deterministic (ordered by a hash of the id), extremes use ``ORDER BY ... LIMIT``.
Run and metric names are user input and are always passed as quoted literals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BINS",
    "SCATTER_POINTS",
    "available_runs",
    "metric_summary",
    "histogram",
    "extremes",
    "paired_sample",
    "cluster_sizes",
    "flagged_count",
    "traced_examples",
    "trace_per_epoch",
    "keep_count_histogram",
]

BINS = 40
SCATTER_POINTS = 4000


def _lit(text: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


def _rows(store: Any, query: str) -> list[dict]:
    return store.sql(query).to_pylist()


def available_runs(store: Any) -> dict[str, dict[str, bool]]:
    """``{run: {"scores": bool, "trace": bool}}`` for every run with rows in either view.

    The store keeps both views defined (empty, with their columns, until files exist)."""
    found: dict[str, dict[str, bool]] = {}
    for view in ("scores", "trace"):
        for r in _rows(store, f"SELECT DISTINCT run FROM {view} ORDER BY run"):
            found.setdefault(r["run"], {"scores": False, "trace": False})[view] = True
    return found


def metric_summary(store: Any, run: str) -> list[dict]:
    return _rows(
        store,
        f"""SELECT metric, count(*) AS n, count(*) FILTER (WHERE isnan(value)) AS missing,
                   min(value) FILTER (WHERE isfinite(value)) AS lo,
                   avg(value) FILTER (WHERE isfinite(value)) AS mean,
                   max(value) FILTER (WHERE isfinite(value)) AS hi,
                   approx_quantile(value, 0.005) FILTER (WHERE isfinite(value)) AS q_lo,
                   approx_quantile(value, 0.995) FILTER (WHERE isfinite(value)) AS q_hi,
                   bool_and(value = floor(value)) FILTER (WHERE isfinite(value)) AS integral
            FROM scores WHERE run = {_lit(run)} GROUP BY metric ORDER BY metric""",
    )


def histogram(store: Any, run: str, metric: str, lo: float, hi: float):
    """``(edges float64 [BINS+1], counts int64 [BINS])`` of the finite values."""
    width = (hi - lo) / BINS if hi > lo else 1.0
    rows = _rows(
        store,
        f"""SELECT least(greatest(floor((value - {lo!r}) / {width!r}), 0), {BINS - 1})::INTEGER
                   AS bin, count(*) AS n
            FROM scores WHERE run = {_lit(run)} AND metric = {_lit(metric)} AND isfinite(value)
            GROUP BY bin""",
    )
    counts = np.zeros(BINS, dtype=np.int64)
    for r in rows:
        counts[r["bin"]] = r["n"]
    return lo + width * np.arange(BINS + 1, dtype=np.float64), counts


def extremes(store: Any, run: str, metric: str, k: int, descending: bool) -> list[dict]:
    order = "DESC" if descending else "ASC"
    return _rows(
        store,
        f"""SELECT example_id, value FROM scores
            WHERE run = {_lit(run)} AND metric = {_lit(metric)} AND isfinite(value)
            ORDER BY value {order}, example_id LIMIT {int(k)}""",
    )


def paired_sample(store: Any, run: str, x_metric: str, y_metric: str):
    rows = store.sql(
        f"""SELECT x.value AS x, y.value AS y
            FROM scores x JOIN scores y ON x.run = y.run AND x.example_id = y.example_id
            WHERE x.run = {_lit(run)} AND x.metric = {_lit(x_metric)}
              AND y.metric = {_lit(y_metric)} AND isfinite(x.value) AND isfinite(y.value)
            ORDER BY hash(x.example_id) LIMIT {SCATTER_POINTS}"""
    )
    return rows.column("x").to_numpy(), rows.column("y").to_numpy()


def cluster_sizes(store: Any, run: str, metric: str) -> np.ndarray:
    rows = _rows(
        store,
        f"""SELECT count(*) AS n FROM scores
            WHERE run = {_lit(run)} AND metric = {_lit(metric)} AND isfinite(value)
            GROUP BY value ORDER BY n DESC""",
    )
    return np.array([r["n"] for r in rows], dtype=np.int64)


def flagged_count(store: Any, run: str, metric: str) -> tuple[int, int]:
    """``(rows with value != 0, rows)`` of a flag metric such as SemDeDup's duplicates."""
    row = _rows(
        store,
        f"""SELECT count(*) FILTER (WHERE value <> 0) AS flagged, count(*) AS n
            FROM scores WHERE run = {_lit(run)} AND metric = {_lit(metric)}""",
    )[0]
    return int(row["flagged"]), int(row["n"])


def traced_examples(store: Any, run: str) -> int:
    """Distinct example ids in the run's trace."""
    query = f"SELECT count(DISTINCT example_id) AS n FROM trace WHERE run = {_lit(run)}"
    return int(_rows(store, query)[0]["n"])


def trace_per_epoch(store: Any, run: str) -> list[dict]:
    """Per epoch: rows, kept rows, mean loss and mean weight of the kept rows."""
    return _rows(
        store,
        f"""SELECT epoch, count(*) AS rows, count(*) FILTER (WHERE kept) AS kept,
                   avg(loss) FILTER (WHERE kept AND isfinite(loss)) AS mean_loss,
                   avg(weight) FILTER (WHERE kept) AS mean_weight
            FROM trace WHERE run = {_lit(run)} GROUP BY epoch ORDER BY epoch""",
    )


def keep_count_histogram(store: Any, run: str) -> list[dict]:
    """``[{times_kept, n}]``: how many examples were kept in exactly ``times_kept`` epochs."""
    return _rows(
        store,
        f"""SELECT times_kept, count(*) AS n FROM (
                SELECT example_id, count(*) FILTER (WHERE kept) AS times_kept
                FROM trace WHERE run = {_lit(run)} GROUP BY example_id)
            GROUP BY times_kept ORDER BY times_kept""",
    )
