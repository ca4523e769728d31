"""Exceptions raised by the score store.

The "not found" errors subclass both ``KeyError`` (a lookup failed) and ``ValueError`` (the
project-wide convention for bad input), so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "CorruptFileError",
    "ReadOnlyQueryError",
    "StoreLookupError",
    "StoreWarning",
    "UnknownMetricError",
    "UnknownRunError",
]


class StoreLookupError(KeyError, ValueError):
    """A run, metric or vector name that the store does not hold."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class UnknownRunError(StoreLookupError):
    """The run has neither a manifest nor any data files."""


class UnknownMetricError(StoreLookupError):
    """The run exists but holds no data (and declares no such metric) under this name."""


class CorruptFileError(ValueError):
    """A file in the store is not a readable Parquet file with the expected schema."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt or foreign file in the score store: {path}: {reason}")
        self.path = path


class ReadOnlyQueryError(ValueError):
    """A SQL statement other than a query (COPY, CREATE, ATTACH, INSTALL, SET, ...)."""


class StoreWarning(UserWarning):
    """Something in the store was skipped so that the rest stays usable: a manifest that cannot
    be read, or a data file that SQL cannot read. The message names the file."""
