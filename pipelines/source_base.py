"""What every scoring source returns: a ``Batch`` of rows, a ``SourcePlan``, an ``ItemError``.

A source is a small picklable description. On the driver, ``plan()`` checks the data (columns,
types, ids) and counts its rows; inside an actor, ``open()`` returns a reader whose
``iter_batches(start, stop, size)`` yields ``Batch(ids, x, y)`` for the rows at positions
``[start, stop)``. See docs/scoring-job.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Batch", "ItemError", "SourcePlan", "describe_table_source"]


@dataclass
class Batch:
    """One mini-batch: ids int64 numpy ``[B]``, x tensor ``[B, ...]``, y ``[B]`` or None.

    Token documents (``--token-column``): ``x`` int64 ``[B, T]`` right-padded with 0 to the
    longest document of the batch and ``lengths`` int64 ``[B]``. ``domain``: numpy ``[B]`` of the
    ``--domain-column`` values as read (integers, or strings), else None.
    """

    ids: np.ndarray
    x: Any
    y: Any | None
    lengths: Any | None = None
    domain: np.ndarray | None = None


@dataclass(frozen=True)
class SourcePlan:
    """What the driver knows before scoring.

    ``num_rows``; ``num_examples`` (largest id + 1); ``has_labels``; ``fingerprint``: a JSON
    description of the data as it is now (files, sizes, modification times, row counts, Parquet
    footers; see ``pipelines.fingerprint``), recorded in the run manifest and compared on resume.
    ``token_range``: the smallest and largest token id of a token column (None if not known);
    ``domain_names``: a string ``--domain-column``'s distinct values, sorted (the domain codes
    0, 1, ... index them); None for integer domains or none.
    """

    num_rows: int
    num_examples: int
    has_labels: bool
    fingerprint: dict[str, Any] = field(default_factory=dict)
    token_range: tuple[int, int] | None = None
    domain_names: tuple[str, ...] | None = None


class ItemError(RuntimeError):
    """Reading an example failed; ``example_id`` names the first failing one (None if unknown)."""

    def __init__(self, example_id: int | None, cause: BaseException):
        self.example_id = example_id
        super().__init__(f"{type(cause).__name__}: {cause}")


def describe_table_source(source: Any, kind: str) -> dict[str, Any]:
    """The description of a table source (Parquet, a Hugging Face dataset) that a resumed run
    must match: its kind, path and columns. The token and domain options appear only when set,
    so runs begun before they existed still compare equal on resume."""
    out: dict[str, Any] = {
        "kind": kind,
        "path": source.path,
        "id_column": source.id_column,
        "feature_columns": list(source.feature_columns),
        "label_column": source.label_column,
    }
    if source.tokens:
        out["tokens"] = True
    if source.domain_column is not None:
        out["domain_column"] = source.domain_column
    return out
