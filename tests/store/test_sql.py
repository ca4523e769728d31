"""SQL over the store: views, empty views, read-only enforcement, non-local filesystems."""

import os
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from winnow.store import ReadOnlyQueryError, ScoreStore, StoreWarning


def _fill(store):
    store.begin_run("2024", num_examples=6, metrics=["loss"])  # numeric-looking run name
    store.write("2024", "loss", [0, 1, 2], [0.3, 0.9, 0.1], shard=0)
    store.write("2024", "loss", [3, 4, 5], [0.7, 0.2, 0.8], shard=1)
    store.write("other", "loss", [0], [5.0])
    store.finish_run("2024")


def test_empty_store_has_typed_empty_views(store):
    for view, columns in {
        "scores": ["run", "metric", "example_id", "value"],
        # the epoch samplers' columns first, as before the per-step trace joined them
        "trace": ["run", "epoch", "example_id", "loss", "kept", "weight", "step", "score"],
        "vectors": ["run", "name", "example_id", "vector"],
        "mixture": ["run", "step", "domain", "pi", "drawn"],
        "noise_scale": [
            "run",
            "step",
            "b_simple",
            "grad_sq",
            "trace_cov",
            "batch_size",
            "estimator",
        ],
    }.items():
        table = store.sql(f"SELECT * FROM {view}")
        assert table.num_rows == 0 and table.column_names == columns
    assert store.sql("SELECT * FROM scores").schema.field("example_id").type == pa.int64()
    assert store.sql("SELECT count(*) AS n FROM runs")["n"][0].as_py() == 0


def test_top_k_and_hive_types(store):
    _fill(store)
    top = store.sql(
        "SELECT run, example_id, value FROM scores WHERE run = '2024' ORDER BY value DESC LIMIT 2"
    )
    assert top.schema.field("run").type == pa.string()
    assert top["example_id"].to_pylist() == [1, 5]
    np.testing.assert_allclose(top["value"].to_numpy(), [0.9, 0.8], rtol=1e-6)


def test_runs_view_joins_with_scores(store):
    _fill(store)
    joined = store.sql(
        "SELECT r.run, r.status, r.row_counts['loss'] AS counted, count(*) AS n "
        "FROM runs r JOIN scores s USING (run) GROUP BY ALL ORDER BY r.run"
    )
    assert joined.to_pylist() == [
        {"run": "2024", "status": "complete", "counted": 6, "n": 6},
        {"run": "other", "status": "unknown", "counted": None, "n": 1},
    ]


def test_files_written_after_first_query_are_visible(store):
    assert store.sql("SELECT count(*) AS n FROM trace")["n"][0].as_py() == 0
    writer = store.trace_writer("train", shard=1)
    for epoch in range(4):
        writer.write(epoch, np.arange(10), np.arange(10) % (epoch + 1) == 0)
    pruned = store.sql(
        "SELECT example_id FROM trace WHERE run = 'train' AND epoch = 3 AND NOT kept "
        "ORDER BY example_id"
    )
    assert pruned["example_id"].to_pylist() == [1, 2, 3, 5, 6, 7, 9]
    store.write("r", "loss", [0], [1.0])
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 1


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO '{root}/scores/run=x/metric=y/shard-00000.parquet'",
        "CREATE TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW scores AS SELECT 1",
        "DROP VIEW scores",
        "INSERT INTO runs VALUES (1)",
        "DELETE FROM scores",
        "ATTACH '{root}/db.duckdb' AS db",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA database_list",
        "EXPORT DATABASE '{root}/export'",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/x.csv'",
        "CALL pragma_version()",
        "SELECT 1; COPY (SELECT 1) TO '{root}/x.csv'",
    ],
)
def test_statements_that_could_write_are_refused(store, statement):
    _fill(store)
    before = sorted(os.walk(store.root))
    with pytest.raises(ReadOnlyQueryError, match="refused"):
        store.sql(statement.format(root=store.root))
    assert sorted(os.walk(store.root)) == before
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 7


def test_queries_cannot_touch_files_outside_the_store(store, tmp_path):
    _fill(store)
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(duckdb.Error, match="disabled|not allowed|Permission"):
        store.sql(f"SELECT * FROM read_csv('{outside}')")


def test_descriptive_queries_allowed(store):
    _fill(store)
    assert "example_id" in store.sql("DESCRIBE scores")["column_name"].to_pylist()
    assert store.sql("WITH t AS (SELECT 1 AS a) FROM t")["a"].to_pylist() == [1]
    quantile = store.sql("SELECT quantile_cont(value, 0.5) AS q FROM scores WHERE run = '2024'")
    assert quantile["q"][0].as_py() == pytest.approx(0.5, rel=1e-6)


def test_bad_sql_input(store):
    with pytest.raises(TypeError, match="query must be a str"):
        store.sql(b"SELECT 1")
    with pytest.raises(ValueError, match="empty SQL"):
        store.sql("  ")
    with pytest.raises(duckdb.ParserException):
        store.sql("SELEC 1")


def test_corrupt_file_in_sql_is_skipped_with_a_warning_naming_it(store):
    _fill(store)
    path = f"{store.root}/scores/run=other/metric=loss/shard-00000.parquet"
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.warns(StoreWarning, match="run=other/metric=loss/shard-00000.parquet"):
        assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 6
    assert store.read("2024", "loss")[1].all()


def test_uri_root_and_non_local_filesystem(tmp_path):
    uri_store = ScoreStore(f"file://{tmp_path}/a")
    uri_store.write("r", "loss", [1, 0], [2.0, 1.0])
    assert uri_store.read("r", "loss")[0].tolist() == [1.0, 2.0]
    # A SubTreeFileSystem is not a LocalFileSystem: the Arrow-dataset path of the SQL engine.
    (tmp_path / "b").mkdir()
    sub = ScoreStore((pafs.SubTreeFileSystem(str(tmp_path / "b"), pafs.LocalFileSystem()), "s"))
    _fill(sub)
    sub.trace_writer("t").write(0, [3, 4], [True, False], loss=[0.5, 0.25])
    assert sub.read("2024", "loss")[0][1] == pytest.approx(0.9)
    result = sub.sql("SELECT run, count(*) AS n FROM scores GROUP BY run ORDER BY run")
    assert result.to_pylist() == [{"run": "2024", "n": 6}, {"run": "other", "n": 1}]
    assert sub.sql("SELECT sum(loss) AS s FROM trace")["s"][0].as_py() == pytest.approx(0.75)
    with pytest.raises(ReadOnlyQueryError):
        sub.sql("COPY (SELECT 1) TO 'x.csv'")


def test_close_and_reopen_connection(tmp_path):
    with ScoreStore(tmp_path / "s") as store:
        store.write("r", "loss", [0, 1], [1.0, 2.0])
        assert store.sql("SELECT sum(value) AS s FROM scores")["s"][0].as_py() == 3.0
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 2


_READERS = (
    "SELECT * FROM read_text('{path}/x.txt')",
    "SELECT * FROM read_blob('{path}/x.txt')",
    "SELECT * FROM glob('{path}/*')",
    "SELECT * FROM read_csv('{path}/x.txt')",
    "SELECT * FROM read_parquet('{path}/x.parquet')",
)


@pytest.mark.parametrize("reader", _READERS)
def test_nothing_outside_the_store_is_readable_or_listable(tmp_path, monkeypatch, reader):
    # DuckDB adds its default temp directory (<cwd>/.tmp) to allowed_directories by itself.
    cwd, sibling = tmp_path / "cwd", tmp_path / "store-sibling"
    places = [cwd, cwd / ".tmp", sibling, tmp_path]
    for place in places:
        place.mkdir(exist_ok=True)
        (place / "x.txt").write_text("secret\n")
        pq.write_table(pa.table({"secret": [1]}), place / "x.parquet")
    monkeypatch.chdir(cwd)
    store = ScoreStore(tmp_path / "store")
    _fill(store)
    off_disk = _subtree_store(tmp_path / "fs")  # DuckDB reads no file itself there
    _fill(off_disk)
    for place in [*places, "/tmp", f"{store.root}/.."]:
        for queried in (store, off_disk):
            with pytest.raises(duckdb.Error, match="disabled by configuration"):
                queried.sql(reader.format(path=place))
    settings = store.sql(
        "SELECT current_setting('allowed_directories') AS a, "
        "current_setting('enable_progress_bar') AS bar"  # it would print into piped output
    )
    assert settings.to_pylist() == [{"a": [f"{store.root}/"], "bar": False}]


def _subtree_store(path):
    """A store on a non-local pyarrow filesystem (a stand-in for S3): the Arrow-dataset views."""
    path.mkdir(exist_ok=True)
    return ScoreStore((pafs.SubTreeFileSystem(str(path), pafs.LocalFileSystem()), "s"))


def test_float16_vectors_on_a_non_local_filesystem(tmp_path):
    store = _subtree_store(tmp_path / "fs")
    _fill(store)
    store.write_vectors("2024", "emb", [0, 1], np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]]))
    store.write_vectors("2024", "wide", [4], np.arange(5).reshape(1, 5))  # another width
    assert store.sql("SELECT 1 AS one")["one"].to_pylist() == [1]
    got = store.sql("SELECT name, example_id, vector FROM vectors ORDER BY name, example_id")
    assert got.schema.field("vector").type == pa.list_(pa.float32())
    assert got.to_pylist() == [
        {"name": "emb", "example_id": 0, "vector": [0.5, -1.0, 2.0]},
        {"name": "emb", "example_id": 1, "vector": [1.0, 0.0, 0.25]},
        {"name": "wide", "example_id": 4, "vector": [0.0, 1.0, 2.0, 3.0, 4.0]},
    ]
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 7


def _fill_every_view(store, run, n=3):
    store.begin_run(run, num_examples=n)
    store.write(run, "loss", range(n), np.arange(n, dtype=np.float32), shard=0)
    store.write(run, "loss", [n], [10.0], shard=1)
    store.trace_writer(run).write(0, range(n), [True] * n)
    store.write_vectors(run, "emb", range(n), np.ones((n, 2)))
    store.finish_run(run)


@pytest.mark.parametrize(
    ("name", "sibling"),
    [
        ("a[1]", "a1"),  # [1] is a glob class matching "a1"
        ("s*x", "sYx"),
        ("q?", "qZ"),
        ("b\\c", "b/c"),  # DuckDB's glob reads a backslash as a path separator
        ("run=zzz/store", None),  # a hive key in the root would rename every run
        ("it's", None),
    ],
)
def test_roots_with_glob_or_hive_characters_read_only_their_own_files(tmp_path, name, sibling):
    store = ScoreStore(tmp_path / name)
    _fill_every_view(store, "mine")
    if sibling is not None:
        _fill_every_view(ScoreStore(tmp_path / sibling), "sibling", n=5)
    for view in ("scores", "trace", "vectors", "runs"):
        got = store.sql(f"SELECT run, count(*) AS n FROM {view} GROUP BY run").to_pylist()
        assert [row["run"] for row in got] == ["mine"], view
    assert store.sql("SELECT sum(value) AS s FROM scores")["s"][0].as_py() == 13.0
    if sibling is not None:
        try:
            listed = store.sql(f"SELECT file FROM glob('{store.root}/*/*')")["file"].to_pylist()
        except duckdb.Error:
            listed = []
        assert not [f for f in listed if sibling in f]


_OTHER_PROCESS = """
import sys, numpy as np, pyarrow.fs as pafs
from winnow.store import ScoreStore
root = sys.argv[1]
if sys.argv[2] == "subtree":
    root = (pafs.SubTreeFileSystem(root, pafs.LocalFileSystem()), "s")
store = ScoreStore(root)
store.begin_run("late", num_examples=2)
store.write("late", "loss", [0, 1], [5.0, 6.0])
store.trace_writer("late").write(0, [0, 1], [True, False])
store.write_vectors("late", "emb", [0], np.ones((1, 3)))
store.finish_run("late")
"""


@pytest.mark.parametrize("kind", ["local", "subtree"])
def test_a_long_lived_store_sees_what_other_processes_add_and_remove(tmp_path, kind):
    store = ScoreStore(tmp_path / "s") if kind == "local" else _subtree_store(tmp_path)
    _fill_every_view(store, "early")

    def seen(view):
        rows = f"SELECT count(*) FROM {view}"
        runs = f"SELECT string_agg(DISTINCT run, ',' ORDER BY run) FROM {view}"
        return tuple(store.sql(f"SELECT ({rows}) AS n, ({runs}) AS runs").to_pylist()[0].values())

    views = ("scores", "trace", "vectors", "runs")
    assert [seen(v) for v in views] == [(4, "early"), (3, "early"), (3, "early"), (1, "early")]
    root = tmp_path / "s" if kind == "local" else tmp_path
    subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(root), kind],
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    both = "early,late"
    assert [seen(v) for v in views] == [(6, both), (5, both), (4, both), (2, both)]
    late = store.sql("SELECT status FROM runs WHERE run = 'late'")
    assert late["status"].to_pylist() == ["complete"]
    # Another process removes every trace file: the view is empty, not an error.
    for path in list((tmp_path / "s" / "trace").rglob("shard-*.parquet")):
        path.unlink()
    assert seen("trace") == (0, None)
    assert seen("scores") == (6, both)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(10)


_CORRUPTIONS = {
    "truncated": _truncate,
    "not parquet": lambda path: path.write_bytes(b"hello, I am a CSV file\n1,2\n"),
    "foreign columns": lambda path: pq.write_table(pa.table({"id": [1], "score": [0.5]}), path),
    "text values": lambda path: pq.write_table(
        pa.table({"example_id": [9], "value": ["high"]}), path
    ),
}


@pytest.mark.parametrize(
    ("kind", "corruption"),
    [(kind, corruption) for kind in ("local", "subtree") for corruption in _CORRUPTIONS],
)
@pytest.mark.parametrize("shard", [0, 1])  # shard 0 of run "a" is the first file of the view
def test_sql_skips_an_unreadable_shard_with_a_warning(tmp_path, kind, corruption, shard):
    store = ScoreStore(tmp_path / "s") if kind == "local" else _subtree_store(tmp_path)
    _fill_every_view(store, "a")  # shard 0 holds ids 0-2 (sum 3), shard 1 id 3 (value 10)
    _fill_every_view(store, "b")
    path = tmp_path / "s" / "scores" / "run=a" / "metric=loss" / f"shard-{shard:05d}.parquet"
    _CORRUPTIONS[corruption](path)
    query = "SELECT run, count(*) AS n, sum(value) AS s FROM scores GROUP BY run ORDER BY run"
    named = str(path) if kind == "local" else f"s/scores/run=a/metric=loss/{path.name}"
    with pytest.warns(StoreWarning, match=f"skipping unreadable file {named}: "):
        got = store.sql(query).to_pylist()
    left = {"n": 1, "s": 10.0} if shard == 0 else {"n": 3, "s": 3.0}
    assert got == [{"run": "a", **left}, {"run": "b", "n": 4, "s": 13.0}]
    assert store.sql("SELECT count(*) AS n FROM trace")["n"][0].as_py() == 6
    store.write("a", "loss", [7], [1.0], shard=shard)  # a rewritten shard is read again
    got = store.sql("SELECT count(*) AS n FROM scores WHERE run = 'a'")["n"][0].as_py()
    assert got == left["n"] + 1


def test_sql_reader_streams_batches_and_then_frees_the_connection(store):
    _fill(store)
    with store.sql_reader("SELECT range AS i FROM range(100000)", batch_rows=1000) as reader:
        assert reader.read_next_batch().num_rows <= 1000
        with pytest.raises(RuntimeError, match="finish reading"):
            store.sql("SELECT 1")
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 7
    _truncate(f"{store.root}/scores/run=2024/metric=loss/shard-00000.parquet")
    with pytest.warns(StoreWarning, match="run=2024/metric=loss/shard-00000.parquet"):
        with store.sql_reader("SELECT example_id FROM scores ORDER BY run, example_id") as reader:
            assert reader.read_all()["example_id"].to_pylist() == [3, 4, 5, 0]
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        store.sql_reader("SELECT 1", batch_rows=0)
