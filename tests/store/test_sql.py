"""SQL over the store: views, empty views, read-only enforcement, non-local filesystems."""

import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from winnow.store import ReadOnlyQueryError, ScoreStore


def _fill(store):
    store.begin_run("2024", num_examples=6, metrics=["loss"])  # numeric-looking run name
    store.write("2024", "loss", [0, 1, 2], [0.3, 0.9, 0.1], shard=0)
    store.write("2024", "loss", [3, 4, 5], [0.7, 0.2, 0.8], shard=1)
    store.write("other", "loss", [0], [5.0])
    store.finish_run("2024")


def test_empty_store_has_typed_empty_views(store):
    for view, columns in {
        "scores": ["run", "metric", "example_id", "value"],
        "trace": ["run", "epoch", "example_id", "loss", "kept", "weight"],
        "vectors": ["run", "name", "example_id", "vector"],
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


def test_corrupt_file_error_from_sql_names_the_file(store):
    _fill(store)
    path = f"{store.root}/scores/run=other/metric=loss/shard-00000.parquet"
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(duckdb.Error, match="run=other/metric=loss/shard-00000.parquet"):
        store.sql("SELECT count(*) FROM scores")
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
    for place in [*places, "/tmp", f"{store.root}/.."]:
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            store.sql(reader.format(path=place))
    assert store.sql("SELECT current_setting('allowed_directories') AS a")["a"].to_pylist() == [
        [f"{store.root}/"]
    ]
