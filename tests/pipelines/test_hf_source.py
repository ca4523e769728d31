"""Hugging Face datasets as scoring sources: a save_to_disk directory, or a Dataset object."""

import numpy as np
import pytest

from tests.pipelines.scoring_fixtures import make_arrays
from tests.pipelines.test_score_job import _expected_loss
from winnow import pipelines
from winnow.pipelines.cli import main
from winnow.pipelines.sources import HFDatasetSource, make_source
from winnow.store import ScoreStore

datasets = pytest.importorskip("datasets")
FIX = "tests.pipelines.scoring_fixtures"


def _dataset(n: int, seed: int = 0, **extra) -> "datasets.Dataset":
    x, y = make_arrays(n, seed)
    return datasets.Dataset.from_dict({"x": x.tolist(), "label": y.tolist(), **extra})


def _collect(reader, start, stop, batch_size):
    batches = list(reader.iter_batches(start, stop, batch_size))
    assert all(len(b.ids) <= batch_size for b in batches)
    return (np.concatenate([getattr(b, k).numpy() if k != "ids" else b.ids for b in batches])
            for k in ("ids", "x", "y"))  # fmt: skip


def test_saved_dataset_directory_reads_rows_in_the_dataset_order(tmp_path):
    x, y = make_arrays(90)
    view = _dataset(90).shuffle(seed=1).select(range(70))  # a view: an indices mapping
    order = np.asarray(view._indices.column(0)) if view._indices is not None else None
    view.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    source = make_source(str(tmp_path / "ds"), feature_columns="x")
    assert isinstance(source, HFDatasetSource) and source.path == str(tmp_path / "ds")
    plan = source.plan()
    assert (plan.num_rows, plan.num_examples, plan.has_labels) == (70, 70, True)
    assert [f["rows"] for f in plan.fingerprint["files"]] == [24, 23, 23]
    assert plan.fingerprint["ids"] == "row positions"
    ids, got_x, got_y = _collect(source.open(), 5, 66, 16)
    np.testing.assert_array_equal(ids, np.arange(5, 66))
    expected = np.asarray(view.with_format("numpy")["x"], dtype=np.float32)
    np.testing.assert_array_equal(got_x, expected[5:66])
    if order is not None:
        np.testing.assert_array_equal(got_x, x[order[5:66]])
        np.testing.assert_array_equal(got_y, y[order[5:66]])


def test_dataset_object_with_an_id_column_and_scalar_features():
    ds = datasets.Dataset.from_dict(
        {"a": [1.0, 2.0, 3.0, 4.0], "b": [10, 20, 30, 40], "uid": [7, 3, 9, 0], "cls": [0, 1, 1, 0]}
    ).select([3, 1, 0])
    source = make_source(ds, feature_columns="b,a", id_column="uid", label_column="cls")
    plan = source.plan()
    assert (plan.num_rows, plan.num_examples) == (3, 8)
    ids, got_x, got_y = _collect(source.open(), 0, 3, 2)
    np.testing.assert_array_equal(ids, [0, 3, 7])
    np.testing.assert_array_equal(got_x, [[40, 4], [20, 2], [10, 1]])
    np.testing.assert_array_equal(got_y, [0, 1, 0])


def test_dataset_dicts_and_text_columns_are_refused_clearly(tmp_path):
    ds = _dataset(10, text=["a"] * 10)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    split_dirs = r"pass one split's directory, e.g. .*dd/train.* \(splits: \['train', 'test'\]\)"
    with pytest.raises(ValueError, match=r"DatasetDict saved with save_to_disk; " + split_dirs):
        make_source(str(tmp_path / "dd"), feature_columns="x")
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train', 'test'\]; pass one"):
        make_source(datasets.DatasetDict({"train": ds, "test": ds}), feature_columns="x")
    with pytest.raises(TypeError, match=r"feature column 'text' .* has type string"):
        make_source(ds, feature_columns="text").plan()


def test_winnow_score_on_a_saved_dataset_directory(tmp_path, capsys):
    x, y = make_arrays(120, seed=2)
    _dataset(120, seed=2).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    argv = ["score", "--data", str(tmp_path / "ds"), "--feature-columns", "x",
            "--model", f"{FIX}:mlp", "--store", str(tmp_path / "s"), "--run", "hf",
            "--executor", "inline", "--shard-size", "50", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    values, present = ScoreStore(tmp_path / "s").read("hf", "loss")
    assert present.all() and len(values) == 120
    np.testing.assert_allclose(values, _expected_loss(x, y)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_dataset_object_is_scored_on_ray(ray_session, tmp_path):
    """The Dataset travels to the actors pickled; ids from its id column."""
    x, y = make_arrays(200, seed=3)
    ds = _dataset(200, seed=3, uid=list(range(1000, 1200)))
    manifest = pipelines.score(
        ds, f"{FIX}:mlp", feature_columns="x", id_column="uid", metrics="loss,margin",
        store=tmp_path / "s", run="hf", shard_size=64, actors=2, progress=False,
    )  # fmt: skip
    assert manifest["status"] == "complete" and manifest["num_examples"] == 1200
    assert manifest["config"]["source"]["kind"] == "hf_dataset"
    values, present = ScoreStore(tmp_path / "s").read("hf", "loss")
    assert present.sum() == 200 and present[1000:].all()
    np.testing.assert_allclose(values[1000:], _expected_loss(x, y)[0], rtol=1e-5, atol=1e-6)
