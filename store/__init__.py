"""The score store: Parquet files on disk (or any pyarrow filesystem), DuckDB views for SQL.

>>> s = ScoreStore("winnow-store")
>>> s.write("run1", "loss", ids, losses, shard=0)
>>> values, present = s.read("run1", "loss")
>>> s.sql("SELECT example_id, value FROM scores WHERE metric = 'loss' ORDER BY value DESC LIMIT 10")
"""

from winnow.store.errors import (
    CorruptFileError,
    ReadOnlyQueryError,
    StoreLookupError,
    StoreWarning,
    UnknownMetricError,
    UnknownRunError,
)
from winnow.store.score_store import ScoreStore
from winnow.store.trace import TraceWriter

__all__ = [
    "CorruptFileError",
    "ReadOnlyQueryError",
    "ScoreStore",
    "StoreLookupError",
    "StoreWarning",
    "TraceWriter",
    "UnknownMetricError",
    "UnknownRunError",
]
