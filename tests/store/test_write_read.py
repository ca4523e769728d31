"""Round trips through real Parquet files, and rejection of bad input."""

import os
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.store import ScoreStore
from winnow.store.validation import check_ids


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    num_shards=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_read_is_dense_alignment_of_any_sharded_write(tmp_path_factory, n, num_shards, seed):
    rng = np.random.default_rng(seed)
    store = ScoreStore(tmp_path_factory.mktemp("s"))
    ids = rng.choice(2 * n, size=n, replace=False)
    values = rng.normal(size=n).astype(np.float32)
    for shard, part in enumerate(np.array_split(np.arange(n), num_shards)):
        assert store.write("r", "loss", ids[part], values[part], shard=shard) == part.size
    dense, present = store.read("r", "loss")
    assert dense.dtype == np.float32 and present.dtype == np.bool_
    assert dense.shape == (ids.max() + 1,)
    np.testing.assert_array_equal(dense[ids], values)
    assert present.sum() == n and present[ids].all()
    assert np.isnan(dense[~present]).all()
    assert store.completed_shards("r", "loss") == set(range(num_shards))


def test_rewriting_a_shard_replaces_it(store):
    store.write("r", "loss", [0, 1, 2], [1.0, 2.0, 3.0], shard=3)
    store.write("r", "loss", [5, 6], [7.0, 8.0], shard=3)
    values, present = store.read("r", "loss")
    np.testing.assert_array_equal(np.flatnonzero(present), [5, 6])
    np.testing.assert_array_equal(values[[5, 6]], [7.0, 8.0])
    assert store.read_table("r", "loss").num_rows == 2


def test_num_examples_from_argument_then_manifest(store):
    store.begin_run("r", num_examples=10, metrics=["loss"])
    store.write("r", "loss", [2], [0.5])
    assert store.read("r", "loss")[0].shape == (10,)
    assert store.read("r", "loss", num_examples=4)[0].shape == (4,)
    with pytest.raises(ValueError, match=r"example_ids in \[2, 2\], outside \[0, num_examples=2\)"):
        store.read("r", "loss", num_examples=2)


def test_declared_metric_without_files_reads_as_all_missing(store):
    store.begin_run("r", num_examples=5, metrics=["loss"])
    values, present = store.read("r", "loss")
    assert values.shape == (5,) and np.isnan(values).all() and not present.any()


def test_write_table_writes_one_file_per_metric(store):
    table = pa.table(
        {
            "example_id": pa.array([4, 0, 2], pa.int64()),
            "loss": pa.array([1.0, 2.0, 3.0], pa.float64()),
            "margin": pa.array([0.1, 0.2, 0.3], pa.float32()),
        }
    )
    assert store.write_table("r", table, shard=7) == {"loss": 3, "margin": 3}
    assert store.completed_shards("r", "loss") == {7} == store.completed_shards("r", "margin")
    margin, _ = store.read("r", "margin")
    np.testing.assert_allclose(margin[[4, 0, 2]], [0.1, 0.2, 0.3], rtol=1e-6)
    long = store.read_table("r")
    assert long.column_names == ["metric", "example_id", "value"]
    assert sorted(set(long["metric"].to_pylist())) == ["loss", "margin"]


def test_write_table_validates_every_column_before_writing(store):
    with pytest.raises(ValueError, match="margin"):
        store.write_table("r", {"example_id": [0, 1], "loss": [1.0, 2.0], "margin": [1.0, np.nan]})
    assert store.completed_shards("r", "loss") == set()
    with pytest.raises(ValueError, match="'example_id' column"):
        store.write_table("r", {"id": [0], "loss": [1.0]})
    with pytest.raises(ValueError, match="at least one metric"):
        store.write_table("r", {"example_id": [0]})


def test_torch_tensors_and_lists_are_accepted(store):
    store.write("r", "loss", torch.tensor([2, 0]), torch.tensor([0.5, 1.5]))
    store.write("r", "grad", [1, 0], [3, 4])
    np.testing.assert_array_equal(store.read("r", "loss")[0], [1.5, np.nan, 0.5])
    np.testing.assert_array_equal(store.read("r", "grad")[0], [4.0, 3.0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_are_stored_exactly_as_float32(store, dtype):
    values = torch.tensor([0.1, -3.5, 1e4, 2.0**-14], dtype=dtype)
    exact = values.float().numpy()
    assert store.write("r", "loss", torch.tensor([0, 1, 2, 3]), values) == 4
    np.testing.assert_array_equal(store.read("r", "loss")[0], exact)
    store.write_table("r", {"example_id": torch.arange(4), "margin": values}, shard=1)
    np.testing.assert_array_equal(store.read_table("r", "margin")["value"].to_numpy(), exact)
    store.trace_writer("r").write(0, torch.arange(4), torch.ones(4, dtype=torch.bool), loss=values)
    np.testing.assert_array_equal(store.read_trace("r")["loss"].to_numpy(), exact)
    store.write_vectors("r", "emb", [0, 1], values.reshape(2, 2))
    np.testing.assert_array_equal(store.read_vectors("r", "emb")[1], exact.reshape(2, 2))
    with pytest.raises(TypeError, match="dtype float(16|32)"):
        store.write("r", "loss", torch.tensor([0, 1], dtype=dtype), [1.0, 2.0])


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ([0.5, 1.0], TypeError, "dtype float64"),
        (["a", "b"], TypeError, "int64"),
        ([True, False], TypeError, "dtype bool"),
        ([0, -3], ValueError, r"non-negative, got \[-3\]"),
        ([7, 3, 7], ValueError, r"duplicated id\(s\) within one write, e.g. \[7\]"),
        (np.array([2**63 + 1, 0], dtype=np.uint64), ValueError, "does not fit in int64"),
        ([[0, 1]], ValueError, "1-dimensional"),
        # Non-integers that a plain cast to int64 would silently truncate:
        ([Decimal("1.5"), Decimal("2")], TypeError, r"got Decimal\('1.5'\) \(Decimal\)"),
        (np.array([1.5, 2.0], dtype=object), TypeError, r"got 1.5 \(float\)"),
        (np.array([2, np.float32(7.25)], dtype=object), TypeError, r"\(7.25\) \(float32\)"),
        (np.array(["1", "2"], dtype=object), TypeError, r"got '1' \(str\)"),
        (np.array([3, True], dtype=object), TypeError, r"got True \(bool\)"),
        ([4, 2.5], TypeError, "dtype float64"),
        (pa.array([Decimal("3.7")]), TypeError, "Decimal"),
        (torch.tensor([1.0, 2.0]), TypeError, "dtype float32"),
        (np.array([1.0, 2.0]), TypeError, "dtype float64"),
        ([2**63, 1], ValueError, "9223372036854775808 does not fit in int64"),
        (np.array([2**70, 1], dtype=object), ValueError, "does not fit in int64"),
        (pa.array([1, None]), ValueError, "1 null"),
    ],
)
def test_bad_ids_are_rejected_with_the_offending_value(store, ids, error, match):
    with pytest.raises(error, match=match):
        store.write("r", "loss", ids, np.zeros(np.shape(ids)[-1]))
    assert store.runs() == []


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=2**62), max_size=50)
    | st.lists(st.integers(min_value=0, max_value=60), max_size=50),
    sort=st.booleans(),
)
def test_check_ids_rejects_exactly_the_lists_with_repeats(ids, sort):
    ids = sorted(ids) if sort else ids
    if len(set(ids)) == len(ids):
        np.testing.assert_array_equal(check_ids(ids), ids)
    else:
        with pytest.raises(ValueError, match="duplicated"):
            check_ids(ids)


def test_duplicates_found_for_unsorted_sparse_ids(store):
    ids = np.array([10**12, 5, 10**12, 3])
    with pytest.raises(ValueError, match=r"e\.g\. \[1000000000000\]"):
        store.write("r", "loss", ids, np.zeros(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_values_rejected_unless_allowed(store, bad):
    with pytest.raises(ValueError, match=r"non-finite value\(s\).*positions \[1\]"):
        store.write("r", "loss", [0, 1], [1.0, bad])
    store.write("r", "loss", [0, 1], [1.0, bad], allow_nan=True)
    values, present = store.read("r", "loss")
    assert present.all() and not np.isfinite(values[1])


def test_mismatched_lengths_name_both(store):
    with pytest.raises(ValueError, match="ids has 3, values has 2"):
        store.write("r", "loss", [0, 1, 2], [1.0, 2.0])


@pytest.mark.parametrize("name", ["", "a/b", "../x", "run=1", ".hidden", "x" * 129, "a b"])
def test_bad_names_rejected(store, name):
    with pytest.raises(ValueError, match="invalid run name"):
        store.write(name, "loss", [0], [1.0])
    with pytest.raises(ValueError, match="invalid metric name"):
        store.write("r", name, [0], [1.0])


def test_bad_shard_and_value_types(store):
    with pytest.raises(ValueError, match="shard must be a non-negative int, got -1"):
        store.write("r", "loss", [0], [1.0], shard=-1)
    with pytest.raises(TypeError, match="shard must be"):
        store.write("r", "loss", [0], [1.0], shard=1.5)
    with pytest.raises(TypeError, match="real numbers"):
        store.write("r", "loss", [0], ["high"])
    with pytest.raises(TypeError, match="run name must be a str"):
        store.write(3, "loss", [0], [1.0])


def test_empty_write_marks_shard_complete(store):
    assert store.write("r", "loss", [], [], shard=2) == 0
    assert store.completed_shards("r", "loss") == {2}
    values, present = store.read("r", "loss")
    assert values.size == 0 and present.size == 0


def test_vectors_round_trip_sorted_by_id(store):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8)).astype(np.float32)
    ids = np.array([9, 1, 4, 0, 7, 3])
    store.write_vectors("r", "embedding", ids[:3], vectors[:3], shard=0)
    store.write_vectors("r", "embedding", ids[3:], vectors[3:], shard=1)
    got_ids, got = store.read_vectors("r", "embedding")
    order = np.argsort(ids)
    np.testing.assert_array_equal(got_ids, ids[order])
    assert got.dtype == np.float16 and got.shape == (6, 8)
    np.testing.assert_array_equal(got, vectors[order].astype(np.float16))
    with pytest.raises(ValueError, match=r"shape \[n, d\]"):
        store.write_vectors("r", "embedding", [0], np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        store.write_vectors("r", "embedding", [0], np.full((1, 2), 1e6))


def test_multi_row_group_shards_read_back_exactly(store):
    # > 1 Mi rows per file gives several Parquet row groups: the pipelined decode/scatter path.
    rng = np.random.default_rng(3)
    n = 2_500_000
    ids = rng.permutation(n)
    values = rng.random(n, dtype=np.float32)
    values[[5, 7]] = np.nan
    store.write("big", "loss", ids[:1_500_000], values[:1_500_000], shard=0, allow_nan=True)
    store.write("big", "loss", ids[1_500_000:], values[1_500_000:], shard=1, allow_nan=True)
    dense, present = store.read("big", "loss")
    assert present.all()
    np.testing.assert_array_equal(dense[ids], values)


def test_dense_read_of_huge_ids_is_refused_before_allocating(store):
    # Ids near 2**63 are valid to store; a dense array indexed by them is not.
    store.write("r", "loss", [3, 2**62], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"largest stored example_id 4611686018427387904") as info:
        store.read("r", "loss")
    message = str(info.value)
    assert "23058430092136939525 bytes" in message and "read_table" in message
    with pytest.raises(ValueError, match=r"num_examples=1152921504606846976.*read_table"):
        store.read("r", "loss", num_examples=2**60)
    assert store.read_table("r", "loss")["example_id"].to_pylist() == [3, 2**62]


def test_vector_width_must_match_the_other_shards_of_the_name(store):
    store.write_vectors("r", "emb", [0, 1], np.ones((2, 8)), shard=0)
    store.write_vectors("r", "emb", [2], np.ones((1, 8)), shard=3)
    with pytest.raises(ValueError, match=r"width 4.*'emb' of run 'r' has width 8.*shard-00000"):
        store.write_vectors("r", "emb", [5], np.ones((1, 4)), shard=1)
    assert sorted(os.listdir(f"{store.root}/vectors/run=r/name=emb")) == [
        "shard-00000.parquet",
        "shard-00003.parquet",
    ]
    store.write_vectors("r", "small", [0], np.ones((1, 4)))  # another name, its own width
    ids, vectors = store.read_vectors("r", "emb")
    assert ids.tolist() == [0, 1, 2] and vectors.shape == (3, 8)
    store.write_vectors("solo", "emb", [0], np.ones((1, 8)))
    store.write_vectors("solo", "emb", [0], np.ones((1, 2)))  # replaces its only shard
    assert store.read_vectors("solo", "emb")[1].shape == (1, 2)
