"""Run manifests: one small JSON document per run, ``runs/<run>.json``, rewritten atomically.

A manifest records what a run is (kind, model identity, dataset size, free-form config), what it
produced (metrics, row counts per metric, trace rows, vector rows) and its status. It is written
with status ``running`` when a run begins and rewritten last, after every data file, when it ends.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa

__all__ = [
    "RUN_KINDS",
    "RUN_STATUSES",
    "dumps",
    "loads",
    "manifests_table",
    "new_manifest",
    "now_iso",
]

RUN_KINDS = ("scores", "trace", "embeddings", "training")
RUN_STATUSES = ("running", "complete", "failed", "cancelled")
_FORMAT_VERSION = 1


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds, e.g. ``2026-11-23T13:40:00+00:00``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_manifest(
    name: str,
    *,
    kind: str,
    config: dict[str, Any] | None,
    model: Any,
    num_examples: int | None,
    metrics: tuple[str, ...],
) -> dict[str, Any]:
    """A manifest with status ``running`` and no rows yet."""
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind must be one of {RUN_KINDS}, got {kind!r}")
    if num_examples is not None:
        if isinstance(num_examples, bool) or int(num_examples) != num_examples:
            raise TypeError(f"num_examples must be an int or None, got {num_examples!r}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        num_examples = int(num_examples)
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    created = now_iso()
    manifest = {
        "format_version": _FORMAT_VERSION,
        "name": name,
        "kind": kind,
        "status": "running",
        "created": created,
        "updated": created,
        "finished": None,
        "model": model,
        "num_examples": num_examples,
        "metrics": list(metrics),
        "row_counts": {},
        "trace_rows": 0,
        "vector_rows": {},
        "config": config or {},
        "extra": {},
    }
    dumps(manifest)  # fail now, not at finish_run, if config/model are not JSON-serialisable
    return manifest


def dumps(manifest: dict[str, Any]) -> bytes:
    try:
        return json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run manifest must be JSON-serialisable (no NaN): {exc}") from None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The fields the ``runs`` view and ``winnow runs`` read, and what each must hold.
_FIELD_CHECKS = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "status": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "created": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "finished": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "num_examples": (lambda v: v is None or _is_count(v), "a non-negative integer or null"),
    "metrics": (
        lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
        "a list of strings",
    ),
    "row_counts": (
        lambda v: isinstance(v, dict) and all(map(_is_count, v.values())),
        "an object of non-negative integers",
    ),
    "trace_rows": (_is_count, "a non-negative integer"),
}


def loads(data: bytes, path: str) -> dict[str, Any]:
    """Parse and check a manifest; a ValueError naming ``path`` and the bad field otherwise."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"run manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or "name" not in manifest:
        raise ValueError(f"run manifest {path} is not a winnow manifest (no 'name' key)")
    for key, (valid, expected) in _FIELD_CHECKS.items():
        if key in manifest and not valid(manifest[key]):
            raise ValueError(
                f"run manifest {path}: {key!r} must be {expected}, got {manifest[key]!r}"
            )
    return manifest


def manifests_table(rows: list[dict[str, Any]]) -> pa.Table:
    """One row per manifest: the ``runs`` SQL view. Nested fields (model, config, extra) are JSON
    text; ``row_counts`` is a map metric -> rows and ``rows`` their sum."""

    def as_json(key: str) -> list[str | None]:
        return [None if r.get(key) is None else json.dumps(r[key], sort_keys=True) for r in rows]

    row_counts = [r.get("row_counts", {}) for r in rows]
    return pa.table(
        {
            "run": pa.array([r["name"] for r in rows], pa.string()),
            "kind": pa.array([r.get("kind") for r in rows], pa.string()),
            "status": pa.array([r.get("status") for r in rows], pa.string()),
            "created": pa.array([r.get("created") for r in rows], pa.string()),
            "finished": pa.array([r.get("finished") for r in rows], pa.string()),
            "num_examples": pa.array([r.get("num_examples") for r in rows], pa.int64()),
            "metrics": pa.array([r.get("metrics", []) for r in rows], pa.list_(pa.string())),
            "rows": pa.array([sum(c.values()) for c in row_counts], pa.int64()),
            "row_counts": pa.array(
                [list(c.items()) for c in row_counts], pa.map_(pa.string(), pa.int64())
            ),
            "trace_rows": pa.array([r.get("trace_rows", 0) for r in rows], pa.int64()),
            "model": pa.array(as_json("model"), pa.string()),
            "config": pa.array(as_json("config"), pa.string()),
            "extra": pa.array(as_json("extra"), pa.string()),
        }
    )
