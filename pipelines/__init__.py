"""Jobs and entry points: the Ray scoring job, embeddings, demo, report and the `winnow` CLI.

``pipelines.score(data, model, store=..., run=..., metrics=[...])`` runs the scoring job and
returns the run manifest; it builds a ``ScoreJob`` (every option, validated once) and runs it
with ``run_job``. ``register_metric`` adds a metric to the registry the job and ``winnow score``
read. ``pipelines.run_demo()`` runs the demo. Names are resolved lazily, so
``import winnow.pipelines`` imports neither Ray nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "score": "winnow.pipelines.job",
    "run_job": "winnow.pipelines.job",
    "ScoreJob": "winnow.pipelines.jobspec",
    "register_metric": "winnow.pipelines.metric_registry",
    "unregister_metric": "winnow.pipelines.metric_registry",
    "registered_metrics": "winnow.pipelines.metric_registry",
    "Metric": "winnow.pipelines.metric_registry",
    "MetricContext": "winnow.pipelines.metric_registry",
    "run_demo": "winnow.pipelines.demo",
    "ShardError": "winnow.pipelines.scorer",
    "ParquetSource": "winnow.pipelines.sources",
    "HFDatasetSource": "winnow.pipelines.sources",
    "DatasetSource": "winnow.pipelines.sources",
    "ModelSpec": "winnow.pipelines.models",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'winnow.pipelines' has no attribute {name!r}")
