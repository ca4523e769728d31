"""Removing a run from a store: its manifest, scores, vectors and trace.

A run is one manifest (``runs/R.json``) and up to three directories (``scores/run=R``,
``vectors/run=R``, ``trace/run=R``). Each is first renamed to a hidden trash name in its own
directory (``.trash-<32 hex>-R.json``, ``.trash-<32 hex>-run=R``), which no reader looks at,
and only then deleted. On a local store each rename is atomic, in this order:

1. the manifest: the run leaves ``runs()`` and the ``runs`` view (while its files are still
   there it reads as a run with data but no manifest, status ``unknown``);
2. each kind of data, whole: a reader sees all of a kind or none of it, never some shards;
3. the hidden copies are deleted.

So a reader never finds a manifest whose files are gone, nor part of a run's scores. A removal
that is killed part-way leaves hidden trash, which the next ``remove_run`` of that name deletes.
On object stores (S3, ...), where a directory cannot be renamed, each directory is deleted in
place instead. Do not remove a run while a job is writing it. See docs/store.md.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pyarrow.fs as pafs

from winnow.store import manifest as mf
from winnow.store.errors import UnknownRunError
from winnow.store.files import count_rows
from winnow.store.layout import StoreFS, check_name

__all__ = ["remove_run"]

_KINDS = ("scores", "vectors", "trace")
_TRASH = re.compile(r"^\.trash-[0-9a-f]{32}-(?P<name>.+)$")


def _trash_name(name: str) -> str:
    return f".trash-{uuid.uuid4().hex}-{name}"


def _leftovers(sfs: StoreFS, directory: str, name: str) -> list[str]:
    """Hidden trash of ``name`` in ``directory`` left by an interrupted removal."""
    out = []
    for info in sfs.list_dir(directory):
        match = _TRASH.fullmatch(info.base_name)
        if match and match.group("name") == name:
            out.append(info.path)
    return out


def _delete(sfs: StoreFS, path: str) -> None:
    info = sfs.fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        sfs.fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        sfs.fs.delete_file(path)


def _hide(sfs: StoreFS, path: str) -> str:
    """Rename ``path`` to a hidden trash name beside it; returns the new path."""
    directory, _, name = path.rpartition("/")
    trash = f"{directory}/{_trash_name(name)}"
    try:
        sfs.fs.move(path, trash)
    except (OSError, NotImplementedError):
        if sfs.is_local:
            raise
        return path  # object stores cannot rename a directory: delete it where it is
    return trash


def _counts(sfs: StoreFS, directory: str) -> int:
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
    return sum(
        count_rows(sfs, info.path)
        for info in sfs.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.base_name.startswith("shard-")
        and info.base_name.endswith(".parquet")
    )


def remove_run(sfs: StoreFS, run: str) -> dict[str, Any]:
    """Remove run ``run`` (see the module docstring) and return what it held:
    ``{"name", "status", "rows", "vector_rows", "trace_rows"}`` (status None if it had no
    manifest). Raises ``UnknownRunError`` if the store holds nothing of that name."""
    check_name(run, "run")
    manifest_path = sfs.path("runs", f"{run}.json")
    data = [sfs.path(kind, f"run={run}") for kind in _KINDS]
    present = [p for p in [manifest_path, *data] if sfs.exists(p)]
    leftovers = _leftovers(sfs, sfs.path("runs"), f"{run}.json")
    for kind in _KINDS:
        leftovers += _leftovers(sfs, sfs.path(kind), f"run={run}")
    if not present and not leftovers:
        raise UnknownRunError(f"unknown run {run!r} in store {sfs.root}: nothing to remove")
    status = None
    if sfs.exists(manifest_path):
        status = mf.loads(sfs.read_bytes(manifest_path), manifest_path).get("status")
    rows = {kind: _counts(sfs, path) for kind, path in zip(_KINDS, data, strict=True)}
    hidden = [_hide(sfs, path) for path in present]
    for path in [*hidden, *leftovers]:
        _delete(sfs, path)
    return {
        "name": run,
        "status": status,
        "rows": rows["scores"],
        "vector_rows": rows["vectors"],
        "trace_rows": rows["trace"],
    }
