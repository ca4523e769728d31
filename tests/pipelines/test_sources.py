"""Data sources of the scoring job: Parquet row ranges and map-style datasets (no Ray)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipelines.scoring_fixtures import make_arrays, write_parquet
from winnow.pipelines.sources import DatasetSource, ParquetSource, make_source


def _collect(reader, start, stop, batch_size):
    batches = list(reader.iter_batches(start, stop, batch_size))
    ids = np.concatenate([b.ids for b in batches])
    x = np.concatenate([b.x.numpy() for b in batches])
    y = np.concatenate([b.y.numpy() for b in batches])
    return batches, ids, x, y


def test_parquet_row_ranges_cross_files_and_row_groups(tmp_path):
    x, y = make_arrays(250)
    ids = np.arange(250, dtype=np.int64) * 3 + 7  # sparse ids: never positions
    write_parquet(tmp_path / "d", x, y, ids, files=3, row_group_size=17)
    source = ParquetSource(tmp_path / "d", ("x",))
    plan = source.plan()
    assert (plan.num_rows, plan.num_examples, plan.has_labels) == (250, 249 * 3 + 8, True)
    reader = source.open()
    for start, stop, bs in [(0, 250, 64), (30, 190, 50), (83, 84, 8), (240, 250, 3)]:
        batches, got_ids, got_x, got_y = _collect(reader, start, stop, bs)
        assert all(len(b.ids) <= bs for b in batches)
        np.testing.assert_array_equal(got_ids, ids[start:stop])
        np.testing.assert_array_equal(got_x, x[start:stop])
        np.testing.assert_array_equal(got_y, y[start:stop])
        assert batches[0].x.dtype.is_floating_point and batches[0].y.dtype.is_signed


def test_parquet_scalar_feature_columns_are_stacked_in_order(tmp_path):
    table = pa.table({"id": [2, 0, 1], "a": [1.0, 2.0, 3.0], "b": [10, 20, 30], "cls": [0, 1, 0]})
    pq.write_table(table, tmp_path / "t.parquet")
    source = make_source(
        str(tmp_path / "t.parquet"), id_column="id", feature_columns="b,a", label_column="cls"
    )
    (batch,) = source.open().iter_batches(0, 3, 10)
    np.testing.assert_array_equal(batch.ids, [2, 0, 1])
    np.testing.assert_array_equal(batch.x.numpy(), [[10, 1], [20, 2], [30, 3]])
    assert batch.x.numpy().flags.writeable


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ([0, 1, 1], ValueError, "not unique: id 1"),
        ([0, -1, 2], ValueError, ">= 0"),
        ([0.0, 1.0, 2.0], TypeError, "must be integer"),
    ],
)
def test_parquet_plan_rejects_bad_ids(tmp_path, ids, error, match):
    pq.write_table(pa.table({"example_id": ids, "f": [1.0, 2.0, 3.0]}), tmp_path / "t.parquet")
    with pytest.raises(error, match=match):
        ParquetSource(tmp_path, ("f",), label_column=None).plan()


def test_parquet_plan_names_missing_columns(tmp_path):
    pq.write_table(pa.table({"example_id": [0], "f": [1.0]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        ParquetSource(tmp_path, ("f",)).plan()
    with pytest.raises(FileNotFoundError):
        ParquetSource(tmp_path / "nope", ("f",))
    with pytest.raises(ValueError, match="needs feature columns"):
        make_source(str(tmp_path))


def test_dataset_source_uses_indices_as_ids():
    source = make_source("tests.pipelines.scoring_fixtures:tensor_dataset", kwargs={"n": 50})
    assert isinstance(source, DatasetSource)
    plan = source.plan()
    assert (plan.num_rows, plan.num_examples, plan.has_labels) == (50, 50, True)
    x, y = make_arrays(50)
    batches = list(source.open().iter_batches(10, 45, 16))
    assert [len(b.ids) for b in batches] == [16, 16, 3]
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), np.arange(10, 45))
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x[10:45])
    np.testing.assert_array_equal(np.concatenate([b.y for b in batches]), y[10:45])


def test_dataset_source_rejects_non_datasets():
    with pytest.raises(TypeError, match="map-style Dataset"):
        DatasetSource("tests.pipelines.scoring_fixtures:mlp").plan()
    with pytest.raises(ValueError, match="cannot import module"):
        DatasetSource("no_such_module_xyz:f").plan()


def test_parquet_without_id_column_uses_row_positions(tmp_path):
    """Row positions in sorted file order, then row order: the same on every read (resume)."""
    x, y = make_arrays(130)
    write_parquet(tmp_path / "d", x, y, files=3, row_group_size=17, with_ids=False)
    source = make_source(str(tmp_path / "d"), feature_columns="x")
    plan = source.plan()
    assert (plan.num_rows, plan.num_examples, plan.has_labels) == (130, 130, True)
    reader = source.open()
    for start, stop, bs in [(0, 130, 64), (40, 110, 32), (129, 130, 8)]:
        _, got_ids, got_x, got_y = _collect(reader, start, stop, bs)
        np.testing.assert_array_equal(got_ids, np.arange(start, stop))
        np.testing.assert_array_equal(got_x, x[start:stop])
        np.testing.assert_array_equal(got_y, y[start:stop])
    # A named id column must exist.
    with pytest.raises(ValueError, match=r"no id column 'example_id'"):
        make_source(str(tmp_path / "d"), feature_columns="x", id_column="example_id").plan()


@pytest.mark.parametrize(
    ("columns", "options", "error", "match"),
    [
        ({"f": ["a", "b"]}, {}, TypeError, r"feature column 'f' .* has type string; expected"),
        ({"f": [1.0, 2.0], "label": ["cat", "dog"]}, {}, TypeError,
         r"label column 'label' .* has type string; expected integer, bool or float"),
        ({"f": [[1.0], [2.0]], "g": [1.0, 2.0]}, {"feature_columns": "f,g"}, TypeError,
         r"feature column 'f' .* is a list column .* must be the only feature column"),
        ({"f": [1.0, 2.0], "my_id": [0.5, 1.5]}, {"id_column": "my_id"}, TypeError,
         r"id column 'my_id' .* must be integer, got double"),
    ],
)  # fmt: skip
def test_parquet_plan_refuses_columns_it_cannot_score(tmp_path, columns, options, error, match):
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    options = {"feature_columns": "f", "label_column": "label" if "label" in columns else None,
               **options}  # fmt: skip
    with pytest.raises(error, match=match):
        make_source(str(tmp_path / "t.parquet"), **options).plan()
