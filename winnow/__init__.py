"""winnow: score every training example, keep the scores in Parquet/DuckDB, train on what matters.

The four packages:

- :mod:`winnow.selection`: the math (per-example scores, gradient norms, choosers, faiss).
- :mod:`winnow.samplers`: PyTorch samplers and in-step selectors for a ``DataLoader``.
- :mod:`winnow.store`: the Parquet score store with DuckDB SQL.
- :mod:`winnow.pipelines`: the Ray scoring job, report, benchmark and the ``winnow`` command.

The names a user needs first are re-exported here and resolved lazily, so ``import winnow``
(and ``winnow sql``) imports neither torch nor Ray until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("winnow")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "ScoreStore": "winnow.store",
    "IndexedDataset": "winnow.samplers",
    "EpochSampler": "winnow.samplers",
    "EpochPolicy": "winnow.samplers",
    "InfoBatchSampler": "winnow.samplers",
    "RS2Sampler": "winnow.samplers",
    "PrunedSampler": "winnow.samplers",
    "score": "winnow.pipelines",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'winnow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
