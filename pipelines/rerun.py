"""A run name that already exists: continue the run, replace it, or refuse and say which option
applies.

| the stored run                        | plain rerun   | ``--resume``      | ``--overwrite`` |
|---------------------------------------|---------------|-------------------|-----------------|
| none                                  | new           | new               | new             |
| the same job                          | refused       | continue          | replace         |
| another job (data, model, metrics...) | refused       | refused           | replace         |
| failed, no committed shard            | replace       | continue if same  | replace         |
| failed, another job                   | replace       | refused           | replace         |
| failed, same job, shards committed    | refused       | continue          | replace         |

"The same job" means the same data (its fingerprint), model identity (factory, kwargs,
checkpoint hash and options; its code may change, which is how a failing model is fixed) and
``RESUME_KEYS`` of the manifest config. A failed run is replaced without being asked when
nothing of it can be continued: a fixed ``--model`` or flag may reuse its name. Every refusal
names the options that apply. See docs/scoring-job.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from winnow.pipelines.fingerprint import fingerprint_changes
from winnow.pipelines.jobspec import RESUME_KEYS, ScoreJob

__all__ = ["Decision", "decide", "differences"]

_NEW, _CONTINUE, _REPLACE = "new", "continue", "replace"


@dataclass(frozen=True)
class Decision:
    """``action``: ``"new"``, ``"continue"`` (keep the committed shards, cut with
    ``shard_size``) or ``"replace"`` (remove the stored run first; ``reason`` says why)."""

    action: str
    shard_size: int | None = None
    reason: str | None = None


def differences(
    manifest: Mapping[str, Any], config: Mapping[str, Any], model: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """Why the stored run is not the job of ``config`` and ``model``: ``(what, message)``
    pairs (``what`` is ``data``, ``model`` or a ``RESUME_KEYS`` key); empty if it is."""
    stored = manifest.get("config", {})
    out = []
    if stored.get("source_fingerprint") is not None:  # (runs begun before fingerprints: none)
        changes = fingerprint_changes(stored["source_fingerprint"], config["source_fingerprint"])
        if changes:
            message = (
                f"the data changed since the run began ({'; '.join(changes)}), so its "
                "committed shards may hold other rows"
            )
            out.append(("data", message))
    if manifest.get("model") != model:
        stored_model = manifest.get("model")
        out.append(("model", f"the model differs (stored {stored_model!r}, now {model!r})"))
    for key in RESUME_KEYS:
        if stored.get(key) != config[key]:
            message = f"{key} differs (stored {stored.get(key)!r}, now {config[key]!r})"
            out.append((key, message))
    return out


def _committed(counts: Mapping[str, Any], manifest: Mapping[str, Any]) -> tuple[int, int | None]:
    """(shards committed, shards in the run or None if unknown) from ``row_counts(run)``."""
    committed = max((counts.get("shards") or {}).values(), default=0)
    stored = manifest.get("config", {})
    rows, size = stored.get("num_rows"), stored.get("shard_size")
    total = math.ceil(rows / size) if isinstance(rows, int) and isinstance(size, int) else None
    return committed, total


def decide(
    existing: Mapping[str, Any] | None,
    job: ScoreJob,
    config: Mapping[str, Any],
    model: Mapping[str, Any] | None,
    counts: Mapping[str, Any],
) -> Decision:
    """What to do with run ``job.run`` given its stored manifest (None: no such run) and its
    committed files' ``counts`` (``ScoreStore.row_counts``); raises ``ValueError`` to refuse."""
    if existing is None:
        return Decision(_NEW)
    if job.overwrite:
        return Decision(_REPLACE, reason="--overwrite")
    name, status = job.run, existing.get("status")
    failed = status == "failed"
    committed, total = _committed(counts, existing)
    diffs = differences(existing, config, model)
    if job.resume:
        if diffs:
            if failed:
                advice = (
                    "The run failed, so rerun without --resume to start it again under its "
                    "name, or choose another --run"
                )
            else:
                advice = (
                    "rerun without --resume under a new --run name, or with --overwrite to "
                    "replace the run"
                )
            sep = ". " if failed else "; "
            raise ValueError(f"cannot resume run {name!r}: {diffs[0][1]}{sep}{advice}")
        stored_shard = int(existing.get("config", {})["shard_size"])
        if job.shard_size is not None and job.shard_size != stored_shard:
            raise ValueError(
                f"cannot resume with shard_size {job.shard_size}: the run uses {stored_shard}"
            )
        return Decision(_CONTINUE, shard_size=stored_shard)
    if failed and committed == 0:
        return Decision(_REPLACE, reason="failed run with no committed shard")
    if failed and diffs:
        return Decision(_REPLACE, reason=f"failed run whose {diffs[0][0]} differs")
    if failed:
        of = f" of {total}" if total is not None else ""
        raise ValueError(
            f"run {name!r} failed after committing {committed}{of} shards; pass --resume to "
            "continue it with this model and data (the model's code may have changed), or "
            "--overwrite to start again"
        )
    raise ValueError(
        f"run {name!r} already exists in {job.store} (status {status!r}); pass --resume to "
        "continue it, --overwrite to replace it, or choose another --run"
    )
