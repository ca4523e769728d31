"""Jobs and entry points: the Ray scoring job, embeddings, demo, report and the `winnow` CLI.

``pipelines.score(data, model, store=..., run=..., metrics=[...])`` runs the scoring job and
returns the run manifest; ``pipelines.run_demo()`` runs the demo. Names are resolved lazily, so
``import winnow.pipelines`` imports neither Ray nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["score", "run_demo", "ShardError", "ParquetSource", "DatasetSource", "ModelSpec"]

_LAZY = {
    "score": "winnow.pipelines.job",
    "run_demo": "winnow.pipelines.demo",
    "ShardError": "winnow.pipelines.scorer",
    "ParquetSource": "winnow.pipelines.sources",
    "DatasetSource": "winnow.pipelines.sources",
    "ModelSpec": "winnow.pipelines.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'winnow.pipelines' has no attribute {name!r}")
