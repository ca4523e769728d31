"""Removing a run: its manifest and every file go, other runs stay, and a reader never sees a
manifest whose files are gone or part of a kind of data."""

import numpy as np
import pyarrow.fs as pafs
import pytest

from winnow.store import ScoreStore, UnknownRunError


def _fill(store: ScoreStore, run: str, n: int = 50) -> None:
    store.begin_run(run, num_examples=n, metrics=["loss", "el2n"])
    for shard in range(2):
        ids = np.arange(shard, n, 2)
        store.write(run, "loss", ids, ids * 0.5, shard=shard)
        store.write(run, "el2n", ids, ids * 0.25, shard=shard)
        store.write_vectors(run, "embedding", ids, np.ones((len(ids), 4)), shard=shard)
    store.trace_writer(run).write(0, np.arange(n), np.ones(n, bool))
    store.finish_run(run)


def test_remove_run_deletes_everything_of_that_run_only(tmp_path):
    store = ScoreStore(tmp_path)
    _fill(store, "a")
    _fill(store, "a-b")  # a name that extends the other one
    removed = store.remove_run("a")
    assert removed == {"name": "a", "status": "complete", "rows": 100, "vector_rows": 50,
                       "trace_rows": 50}  # fmt: skip
    assert [r["name"] for r in store.runs()] == ["a-b"]
    assert store.read("a-b", "loss")[1].all()
    leftovers = [p.name for p in tmp_path.rglob("*") if "run=a" in str(p) and "a-b" not in str(p)]
    assert leftovers == [] and not (tmp_path / "runs/a.json").exists()
    assert store.sql("SELECT count(*) AS n FROM scores WHERE run = 'a'").column("n")[0].as_py() == 0
    with pytest.raises(UnknownRunError, match="unknown run 'a'"):
        store.remove_run("a")
    _fill(store, "a")  # the name is free again
    assert store.manifest("a")["status"] == "complete"


class _Recording(pafs.FSSpecHandler):
    """A local filesystem that calls ``hook`` after every move (the removal's renames)."""

    def __init__(self, hook):
        import fsspec

        super().__init__(fsspec.filesystem("file"))
        self.hook = hook

    def move(self, src, dest):
        super().move(src, dest)
        self.hook(src, dest)


def test_a_reader_never_sees_a_manifest_without_its_data_nor_part_of_a_kind(tmp_path):
    _fill(ScoreStore(tmp_path), "r")
    reader = ScoreStore(tmp_path)
    seen = []

    def check(src, dest):
        try:
            manifest = reader.manifest("r")
        except UnknownRunError:
            manifest = None
        try:
            values, present = reader.read("r", "loss")
            loss = int(present.sum())
        except (UnknownRunError, KeyError):
            loss = None
        seen.append((manifest is not None, loss))

    ScoreStore((pafs.PyFileSystem(_Recording(check)), str(tmp_path))).remove_run("r")
    assert seen[0] == (False, 50)  # the manifest goes first: the data is still whole
    assert all(loss in (50, None) for _, loss in seen)  # never a partial read
    assert all(not has_manifest for has_manifest, _ in seen)
    assert seen[-1] == (False, None) and not any(tmp_path.rglob("*.parquet"))


def test_an_interrupted_removal_is_finished_by_the_next_one(tmp_path, monkeypatch):
    store = ScoreStore(tmp_path)
    _fill(store, "r")
    import winnow.store.remove as remove

    def killed(sfs, path):
        raise KeyboardInterrupt  # as if killed after the renames, before deleting

    monkeypatch.setattr(remove, "_delete", killed)
    with pytest.raises(KeyboardInterrupt):
        store.remove_run("r")
    monkeypatch.undo()
    assert store.runs() == [] and any(tmp_path.rglob("*.parquet"))  # hidden, not yet deleted
    _fill(store, "r")  # a new run of that name is unaffected by the hidden leftovers
    store.remove_run("r")
    assert not any(tmp_path.rglob("*.parquet")) and not any(tmp_path.rglob("*.json"))
