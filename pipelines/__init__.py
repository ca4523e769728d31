"""Jobs and entry points: the Ray scoring job, embeddings, demo, report and the `winnow` CLI.

``pipelines.score(data, model, store=..., run=..., metrics=[...])`` runs the scoring job and
returns the run manifest; ``pipelines.run_demo()`` runs the demo. Names are resolved lazily, so
``import pipelines`` imports neither Ray nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["score", "run_demo", "ShardError", "ParquetSource", "DatasetSource", "ModelSpec"]

_LAZY = {
    "score": "pipelines.job",
    "run_demo": "pipelines.demo",
    "ShardError": "pipelines.scorer",
    "ParquetSource": "pipelines.sources",
    "DatasetSource": "pipelines.sources",
    "ModelSpec": "pipelines.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
