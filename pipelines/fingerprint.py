"""A cheap fingerprint of a scoring source, and what changed between two of them.

A resumed run scores only the shards that are not committed yet, and a shard is a range of row
positions. If the data changed in between, the committed shards belong to other rows, and the
run would end "complete" with rows missing or counted twice. So the run manifest records the
source's fingerprint when the run begins, and ``--resume`` is refused when it differs.

The fingerprint never reads the data itself (a content hash of 100 GB would cost as much as
scoring it): per file it holds the name, size in bytes, modification time and row count, and for
Parquet a SHA-256 of the footer (the schema plus every row group's offsets, sizes and column
statistics), about 150 bytes per file in the manifest. A Hugging Face dataset adds its own
``_fingerprint``; a ``module:factory`` Dataset only its length. See docs/scoring-job.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["file_entry", "fingerprint_changes", "parquet_footer_sha256"]

_SHOWN = 3  # changed files named in a message; the rest are counted


def file_entry(info: Any, name: str, rows: int, **extra: Any) -> dict[str, Any]:
    """One file's entry from its pyarrow ``FileInfo``: name, bytes, mtime_ns, rows (+ extra)."""
    return {"name": name, "bytes": info.size, "mtime_ns": info.mtime_ns, "rows": rows, **extra}


def parquet_footer_sha256(handle: Any, size: int) -> str:
    """SHA-256 of a Parquet file's footer (its metadata), read from an open file ``handle``.

    The layout ends with ``<footer><4-byte little-endian footer length>PAR1``; one read of a
    few kilobytes whatever the file's size.
    """
    if size < 12:
        raise ValueError(f"not a Parquet file: {size} bytes")
    handle.seek(size - 8)
    tail = handle.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length > size - 12:
        raise ValueError("not a Parquet file: no footer")
    handle.seek(size - 8 - length)
    return hashlib.sha256(handle.read(length)).hexdigest()


def _when(mtime_ns: Any) -> str:
    if not isinstance(mtime_ns, int):
        return "unknown"
    stamp = dt.datetime.fromtimestamp(mtime_ns / 1e9, tz=dt.UTC)
    return stamp.isoformat(timespec="seconds")


def _file_changes(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    parts = []
    if old.get("bytes") != new.get("bytes"):
        parts.append(f"size {old.get('bytes')} -> {new.get('bytes')} bytes")
    if old.get("rows") != new.get("rows"):
        parts.append(f"rows {old.get('rows')} -> {new.get('rows')}")
    if old.get("footer_sha256") != new.get("footer_sha256"):
        parts.append("Parquet footer changed")
    if old.get("mtime_ns") != new.get("mtime_ns"):
        parts.append(f"modified {_when(old.get('mtime_ns'))} -> {_when(new.get('mtime_ns'))}")
    return f"{name}: {', '.join(parts)}" if parts else None


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, as short phrases (empty: nothing).

    Compares the whole-source keys (kind, ids, rows, a dataset's own fingerprint) and then the
    files by name: removed, added, or changed (size, rows, footer, modification time).
    """
    changes = []
    for key in sorted(set(old) | set(new)):
        if key != "files" and old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_files = {f["name"]: f for f in old.get("files") or ()}
    new_files = {f["name"]: f for f in new.get("files") or ()}
    files = []
    for name in sorted(set(old_files) | set(new_files)):
        if name not in new_files:
            files.append(f"{name} was removed")
        elif name not in old_files:
            files.append(f"{name} was added")
        else:
            change = _file_changes(name, old_files[name], new_files[name])
            if change:
                files.append(change)
    if len(files) > _SHOWN:
        files = [*files[:_SHOWN], f"and {len(files) - _SHOWN} more files changed"]
    return changes + files
