"""A source's fingerprint: cheap (footers and file metadata only) and it names what changed."""

import os

import numpy as np

from tests.pipelines.scoring_fixtures import make_arrays, write_parquet
from winnow.pipelines.fingerprint import fingerprint_changes
from winnow.pipelines.sources import ParquetSource


def test_parquet_fingerprint_names_added_removed_and_changed_files(tmp_path):
    x, y = make_arrays(100)
    data = write_parquet(tmp_path / "d", x, y, files=2)
    source = ParquetSource(data, ("x",))
    before = source.plan().fingerprint
    assert [f["name"] for f in before["files"]] == ["part-000.parquet", "part-001.parquet"]
    assert before["rows"] == 100 and before["ids"] == "example_id"
    assert fingerprint_changes(before, source.plan().fingerprint) == []

    part = data / "part-000.parquet"
    os.utime(part, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (changed,) = fingerprint_changes(before, source.plan().fingerprint)
    assert changed.startswith("part-000.parquet: modified ")
    assert changed.endswith(" -> 2020-09-13T12:26:40+00:00")  # only the time: nothing else

    write_parquet(tmp_path / "d", x[:10], y[:10], np.arange(100, 110), files=3)  # 3 files now
    changes = fingerprint_changes(before, source.plan().fingerprint)
    assert changes[0] == "rows 100 -> 10"
    assert changes[1].startswith("part-000.parquet: size ") and "rows 50 -> 4" in changes[1]
    assert "Parquet footer changed" in changes[1]
    assert changes[-1] == "part-002.parquet was added"


def test_many_changed_files_are_counted_not_listed():
    old = {"files": [{"name": f"f{i}", "bytes": 1} for i in range(10)]}
    new = {"files": [{"name": f"f{i}", "bytes": 2} for i in range(10)]}
    changes = fingerprint_changes(old, new)
    assert len(changes) == 4 and changes[-1] == "and 7 more files changed"
