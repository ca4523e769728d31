"""DuckDB queries behind ``winnow report``: aggregates in, small Python values out.

Every query runs through ``ScoreStore.sql`` over the ``scores(run, metric, example_id, value)``,
``trace(run, epoch, example_id, loss, kept, weight, step, score)``, ``mixture`` and
``noise_scale`` views and returns at most a few thousand rows whatever the store's size:
histograms are bucketed in SQL, the scatter sample is capped and deterministic (ordered by a hash
of the id), extremes use ``ORDER BY ... LIMIT``, per-step series are averaged into at most
``STEP_BUCKETS`` buckets of steps. Epoch-sampler rows are those with ``step IS NULL``. Run and
metric names are user input and are always passed as quoted literals.
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
    "step_summary",
    "step_buckets",
    "pick_count_histogram",
    "most_picked",
    "mixture_buckets",
    "noise_series",
]

BINS = 40
SCATTER_POINTS = 4000
STEP_BUCKETS = 60
NOISE_POINTS = 400
MAX_DOMAINS = 12


def _lit(text: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


def _rows(store: Any, query: str) -> list[dict]:
    return store.sql(query).to_pylist()


_KINDS = {
    "scores": "scores",
    "trace": "trace WHERE step IS NULL",  # epoch samplers
    "steps": "trace WHERE step IS NOT NULL",  # in-step selectors and batch samplers
    "mixture": "mixture",
    "noise": "noise_scale",
}


def available_runs(store: Any) -> dict[str, dict[str, bool]]:
    """``{run: {"scores", "trace", "steps", "mixture", "noise": bool}}`` for every run with
    rows in any view (``trace``: per-epoch rows, ``steps``: per-step rows).

    The store keeps every view defined (empty, with their columns, until files exist)."""
    found: dict[str, dict[str, bool]] = {}
    for kind, source in _KINDS.items():
        for r in _rows(store, f"SELECT DISTINCT run FROM {source} ORDER BY run"):
            found.setdefault(r["run"], dict.fromkeys(_KINDS, False))[kind] = True
    return dict(sorted(found.items()))


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
    query = (
        f"SELECT count(DISTINCT example_id) AS n FROM trace WHERE run = {_lit(run)} "
        "AND step IS NULL"
    )
    return int(_rows(store, query)[0]["n"])


def trace_per_epoch(store: Any, run: str) -> list[dict]:
    """Per epoch: rows, kept rows, mean loss and mean weight of the kept rows."""
    return _rows(
        store,
        f"""SELECT epoch, count(*) AS rows, count(*) FILTER (WHERE kept) AS kept,
                   avg(loss) FILTER (WHERE kept AND isfinite(loss)) AS mean_loss,
                   avg(weight) FILTER (WHERE kept) AS mean_weight
            FROM trace WHERE run = {_lit(run)} AND step IS NULL GROUP BY epoch ORDER BY epoch""",
    )


def keep_count_histogram(store: Any, run: str) -> list[dict]:
    """``[{times_kept, n}]``: how many examples were kept in exactly ``times_kept`` epochs."""
    return _rows(
        store,
        f"""SELECT times_kept, count(*) AS n FROM (
                SELECT example_id, count(*) FILTER (WHERE kept) AS times_kept
                FROM trace WHERE run = {_lit(run)} AND step IS NULL GROUP BY example_id)
            GROUP BY times_kept ORDER BY times_kept""",
    )


# ------------------------------------------------------------------------ per-step traces
def _steps_of(run: str) -> str:
    return f"trace WHERE run = {_lit(run)} AND step IS NOT NULL"


def step_summary(store: Any, run: str) -> dict:
    """Steps traced (and their range), candidate rows, kept rows, distinct examples."""
    return _rows(
        store,
        f"""SELECT count(DISTINCT step) AS steps, min(step) AS first, max(step) AS last,
                   count(*) AS rows, count(*) FILTER (WHERE kept) AS kept,
                   count(DISTINCT example_id) AS examples,
                   count(DISTINCT example_id) FILTER (WHERE kept) AS picked,
                   count(*) FILTER (WHERE isfinite(score)) AS scored
            FROM {_steps_of(run)}""",
    )[0]


def step_buckets(store: Any, run: str, first: int, last: int) -> list[dict]:
    """Per bucket of steps (at most ``STEP_BUCKETS``): the share of candidates kept and the
    10/50/90 % quantiles of the finite scores of kept and of dropped candidates."""
    width = max(1, -(-(last - first + 1) // STEP_BUCKETS))
    return _rows(
        store,
        f"""SELECT (step - {int(first)}) // {width} AS bucket, avg(step) AS step,
                   avg(kept::DOUBLE) AS share_kept,
                   approx_quantile(score, [0.1, 0.5, 0.9])
                       FILTER (WHERE kept AND isfinite(score)) AS kept_q,
                   approx_quantile(score, [0.1, 0.5, 0.9])
                       FILTER (WHERE NOT kept AND isfinite(score)) AS dropped_q
            FROM {_steps_of(run)} GROUP BY bucket ORDER BY bucket""",
    )


def pick_count_histogram(store: Any, run: str) -> list[dict]:
    """``[{times_picked, n}]``: how many examples were kept in exactly that many steps
    (examples that were candidates but never kept count as 0)."""
    return _rows(
        store,
        f"""SELECT times_picked, count(*) AS n FROM (
                SELECT example_id, count(*) FILTER (WHERE kept) AS times_picked
                FROM {_steps_of(run)} GROUP BY example_id)
            GROUP BY times_picked ORDER BY times_picked""",
    )


def most_picked(store: Any, run: str, k: int) -> list[dict]:
    """The ``k`` examples kept in the most steps, with how often they were candidates."""
    return _rows(
        store,
        f"""SELECT example_id, count(*) FILTER (WHERE kept) AS picked, count(*) AS candidate,
                   avg(score) FILTER (WHERE isfinite(score)) AS mean_score
            FROM {_steps_of(run)} GROUP BY example_id
            ORDER BY picked DESC, example_id LIMIT {int(k)}""",
    )


def mixture_buckets(store: Any, run: str):
    """``(steps float [S], pi float [S, K'], domain labels [K'])``: the mean mixture per bucket
    of steps; beyond ``MAX_DOMAINS`` domains the rest is summed into one "other" column."""
    span = _rows(
        store,
        f"""SELECT min(step) AS lo, max(step) AS hi, count(DISTINCT domain) AS k
            FROM mixture WHERE run = {_lit(run)}""",
    )[0]
    width = max(1, -(-(span["hi"] - span["lo"] + 1) // STEP_BUCKETS))
    top = [
        r["domain"]
        for r in _rows(
            store,
            f"""SELECT domain FROM mixture WHERE run = {_lit(run)} GROUP BY domain
                ORDER BY avg(pi) DESC, domain LIMIT {MAX_DOMAINS}""",
        )
    ]
    rows = _rows(
        store,
        f"""SELECT (step - {int(span["lo"])}) // {width} AS bucket, avg(step) AS step,
                   domain, avg(pi) AS pi
            FROM mixture WHERE run = {_lit(run)} GROUP BY bucket, domain ORDER BY bucket""",
    )
    buckets = sorted({r["bucket"] for r in rows})
    index = {b: i for i, b in enumerate(buckets)}
    column = {d: j for j, d in enumerate(sorted(top))}
    other = len(column) < span["k"]
    pi = np.zeros((len(buckets), len(column) + other))
    steps = np.zeros(len(buckets))
    for r in rows:
        i = index[r["bucket"]]
        steps[i] = r["step"]
        pi[i, column.get(r["domain"], len(column))] += r["pi"]
    labels = [f"domain {d}" for d in sorted(top)] + (["other"] if other else [])
    return steps, pi, labels


def noise_series(store: Any, run: str) -> tuple[list[dict], dict]:
    """The logged noise scale averaged into at most ``NOISE_POINTS`` buckets of steps
    (finite values only), and the last row logged, with ``usual``: the most frequent batch
    size (an epoch's last batch may be smaller)."""
    span = _rows(
        store,
        f"SELECT min(step) AS lo, max(step) AS hi FROM noise_scale WHERE run = {_lit(run)}",
    )[0]
    width = max(1, -(-(span["hi"] - span["lo"] + 1) // NOISE_POINTS))
    series = _rows(
        store,
        f"""SELECT (step - {int(span["lo"])}) // {width} AS bucket, avg(step) AS step,
                   avg(b_simple) FILTER (WHERE isfinite(b_simple)) AS b_simple,
                   avg(batch_size) AS batch_size
            FROM noise_scale WHERE run = {_lit(run)} GROUP BY bucket ORDER BY bucket""",
    )
    last = _rows(
        store,
        f"""SELECT step, b_simple, grad_sq, trace_cov, batch_size, estimator,
                   (SELECT mode(batch_size) FROM noise_scale WHERE run = {_lit(run)}) AS usual
            FROM noise_scale WHERE run = {_lit(run)} ORDER BY step DESC LIMIT 1""",
    )[0]
    return series, last
