"""Score store speed against raw pyarrow / raw DuckDB on the same data, in one process.

    python -m benchmarks.bench_store            # 10^7 rows write/read, 10^8 rows for queries
    python -m benchmarks.bench_store --quick    # 10^6 / 10^7

Ratios are throughput(store) / throughput(baseline) for writes and reads (>= 0.8 is the target)
and seconds(baseline) / seconds(store) for queries (~1 expected: the store's views are DuckDB
``read_parquet`` with hive partitioning). Each timing is the median of interleaved repeats, so
load from other processes hits store and baseline alike. Results go to
``benchmarks/results/bench_store.json``; the 10^8-row store (~0.8 GB) lives in a temporary
directory that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._timing import interleaved_times
from winnow.store import ScoreStore

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_store.json"


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, round-robin (no warm-up: first writes count too)."""
    times = interleaved_times(fns, repeats, warmup=False)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_write_read(tmp: Path, n: int, repeats: int) -> list[dict]:
    """Write and dense-read n scores, ids in random order (worst case for the scatter) and in
    order (a scoring job's shard of consecutive ids), against raw pyarrow on the same arrays."""
    rng = np.random.default_rng(0)
    values = rng.random(n, dtype=np.float32)
    store = ScoreStore(tmp / "store")
    raw_path = str(tmp / "raw.parquet")
    rows = []
    for order, ids in (("random", rng.permutation(n)), ("sorted", np.arange(n, dtype=np.int64))):
        metric = f"loss_{order}"

        def raw_default(ids: np.ndarray = ids) -> None:
            pq.write_table(pa.table({"example_id": ids, "value": values}), raw_path)

        def raw_same_settings(ids: np.ndarray = ids) -> None:
            table = pa.table({"example_id": ids, "value": values})
            pq.write_table(table, raw_path, compression="zstd", use_dictionary=False)

        write = _interleaved(
            {
                "store": lambda ids=ids, metric=metric: store.write("bench", metric, ids, values),
                "raw_default": raw_default,
                "raw_zstd_nodict": raw_same_settings,
            },
            repeats,
        )
        shard = f"{store.root}/scores/run=bench/metric={metric}/shard-00000.parquet"

        def raw_read(shard: str = shard) -> None:
            table = pq.read_table(shard)
            table["example_id"].to_numpy(), table["value"].to_numpy()

        def store_read(ids: np.ndarray = ids, metric: str = metric) -> None:
            dense, present = store.read("bench", metric)
            assert present.all() and dense[ids[0]] == values[0]

        read = _interleaved({"store": store_read, "raw": raw_read}, repeats)
        what = f"{n:.0e} scores, {order} ids"
        rows += [
            _row(f"write {what}", write["store"], write["raw_default"], "raw write_table default"),
            _row(f"write {what}", write["store"], write["raw_zstd_nodict"], "raw zstd, no dict"),
            _row(f"read {what}", read["store"], read["raw"], "raw read_table+to_numpy"),
        ]
    return rows


def bench_queries(tmp: Path, n: int, shard_rows: int, repeats: int) -> list[dict]:
    store = ScoreStore(tmp / "big")
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for shard, first in enumerate(range(0, n, shard_rows)):
        ids = np.arange(first, min(first + shard_rows, n), dtype=np.int64)
        store.write(
            "big", "loss", ids, rng.gamma(2.0, size=ids.size).astype(np.float32), shard=shard
        )
    write_seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (tmp / "big").rglob("*.parquet"))
    glob = f"{store.root}/scores/run=big/metric=loss/shard-*.parquet"
    raw = duckdb.connect(":memory:")
    where = "WHERE run = 'big' AND metric = 'loss'"
    queries = {
        "top-1000": (
            f"SELECT example_id, value FROM scores {where} ORDER BY value DESC LIMIT 1000",
            f"SELECT example_id, value FROM read_parquet('{glob}') ORDER BY value DESC LIMIT 1000",
        ),
        "quantiles": (
            f"SELECT quantile_cont(value, [0.01, 0.5, 0.99]) AS q FROM scores {where}",
            f"SELECT quantile_cont(value, [0.01, 0.5, 0.99]) AS q FROM read_parquet('{glob}')",
        ),
    }
    rows = [
        {
            "benchmark": f"winnow.store.write {n:.0e} rows in {n // shard_rows} shards",
            "seconds": write_seconds,
            "rows_per_second": n / write_seconds,
            "bytes_on_disk": size,
        }
    ]
    for name, (ours, theirs) in queries.items():
        got = store.sql(ours)
        assert got.equals(raw.sql(theirs).to_arrow_table()), name
        timing = _interleaved(
            {
                "store": lambda q=ours: store.sql(q),
                "raw": lambda q=theirs: raw.sql(q).to_arrow_table(),
            },
            repeats,
        )
        rows.append(_row(f"{name} over {n:.0e}", timing["store"], timing["raw"], "raw DuckDB"))
    files = sorted(str(p) for p in (tmp / "big").rglob("shard-*.parquet"))

    def raw_read_all() -> None:
        table = pq.read_table(files)
        table["example_id"].to_numpy(), table["value"].to_numpy()

    read = _interleaved({"store": lambda: store.read("big", "loss"), "raw": raw_read_all}, 1)
    rows.append(_row(f"read {n:.0e} as dense", read["store"], read["raw"], "raw read_table"))
    return rows


def _row(name: str, seconds: float, baseline: float, baseline_name: str) -> dict:
    return {
        "benchmark": name,
        "seconds": seconds,
        "baseline": baseline_name,
        "baseline_seconds": baseline,
        "ratio": baseline / seconds,  # >1: the store is faster
    }


def _print(rows: list[dict]) -> None:
    print(f"{'benchmark':<40} {'store s':>8} {'baseline':<24} {'base s':>8} {'ratio':>6}")
    for r in rows:
        if "ratio" in r:
            print(
                f"{r['benchmark']:<40} {r['seconds']:8.3f} {r['baseline']:<24} "
                f"{r['baseline_seconds']:8.3f} {r['ratio']:6.2f}"
            )
        else:
            print(
                f"{r['benchmark']:<40} {r['seconds']:8.3f} "
                f"({r['rows_per_second']:.3g} rows/s, {r['bytes_on_disk'] / 1e9:.2f} GB)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^6 / 10^7 rows instead")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (median)")
    parser.add_argument("--dir", default=None, help="parent of the temporary directory")
    args = parser.parse_args(argv)
    n_small, n_big = (10**6, 10**7) if args.quick else (10**7, 10**8)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.dir))
    try:
        rows = bench_write_read(tmp, n_small, args.repeats)
        shutil.rmtree(tmp / "store")
        rows += bench_queries(
            tmp, n_big, shard_rows=n_big // 100, repeats=max(3, args.repeats // 2)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": "bench_store",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"pyarrow": pa.__version__, "duckdb": duckdb.__version__},
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
