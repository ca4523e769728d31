"""Read score shards into a dense array indexed by ``example_id``.

Decoding a Parquet row group and scattering it into the dense array both release the GIL, so
they are pipelined: the calling thread decodes row group k+1 (a ``ParquetFile`` is not safe to
share between threads, so only this thread touches it) while one helper thread scatters row
group k. If a broken store has the same id in two shards, the row count exposes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.store.errors import CorruptFileError
from winnow.store.files import SCORES_SCHEMA, check_schema
from winnow.store.layout import StoreFS

__all__ = ["read_dense"]

_COLUMNS = SCORES_SCHEMA.names
_BYTES_PER_SLOT = 5  # a float32 value and a bool "present" flag per possible id


def _memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(num_examples: int, given: bool, label: str) -> None:
    """Refuse a dense read larger than physical memory before allocating anything."""
    need = num_examples * _BYTES_PER_SLOT
    memory = _memory_bytes()
    if memory is None or need <= memory:
        return
    source = (
        f"num_examples={num_examples}"
        if given
        else f"num_examples = largest stored example_id {num_examples - 1} + 1"
    )
    raise ValueError(
        f"{label}: a dense read needs {source} slots, {need} bytes ({need / 2**30:.3g} GiB, "
        f"{_BYTES_PER_SLOT} per slot), more than this machine's {memory / 2**30:.3g} GiB of "
        "memory; read the stored rows with read_table(run, metric) instead"
    )


def _max_id(path: str, parquet: pq.ParquetFile) -> int:
    """Largest example_id of a file, from row-group statistics when present (no decoding)."""
    meta = parquet.metadata
    column = parquet.schema_arrow.get_field_index("example_id")
    highest = -1
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(column).statistics
        if stats is None or not stats.has_min_max:
            ids = parquet.read(columns=["example_id"])["example_id"]
            return -1 if len(ids) == 0 else int(pc.max(ids).as_py())
        highest = max(highest, int(stats.max))
    return highest


def read_dense(
    sfs: StoreFS, files: list[str], num_examples: int | None, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter every row of ``files`` into ``(values float32 [N], present bool [N])``.

    Args:
        num_examples: N; None means max stored id + 1.
        label: names the run and metric in error messages.

    Raises:
        CorruptFileError: a file is unreadable or has the wrong schema.
        ValueError: an id outside ``[0, N)``, an id stored by two shards, or N so large that
            the arrays (5 bytes per slot) would not fit in this machine's physical memory.
    """
    with contextlib.ExitStack() as stack:
        opened = []
        for path in files:
            try:
                source = stack.enter_context(sfs.fs.open_input_file(path))
                parquet = pq.ParquetFile(source)
            except PermissionError:  # not corruption: the caller sees it as it is
                raise
            except (OSError, pa.ArrowException) as exc:
                raise CorruptFileError(path, f"{type(exc).__name__}: {exc}") from exc
            check_schema(path, parquet.schema_arrow, SCORES_SCHEMA)
            opened.append((path, parquet))
        given = num_examples is not None
        if not given:
            num_examples = 1 + max((_max_id(p, f) for p, f in opened), default=-1)
        _check_fits(num_examples, given, label)
        values = np.full(num_examples, np.nan, dtype=np.float32)

        def decode(path: str, parquet: pq.ParquetFile, row_group: int) -> pa.Table:
            try:
                return parquet.read_row_group(row_group, columns=_COLUMNS)
            except PermissionError:  # not corruption: the caller sees it as it is
                raise
            except (OSError, pa.ArrowException) as exc:
                raise CorruptFileError(path, f"{type(exc).__name__}: {exc}") from exc

        def scatter(path: str, table: pa.Table) -> tuple[int, np.ndarray]:
            ids = table["example_id"].to_numpy()
            chunk = table["value"].to_numpy()
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_examples):
                raise ValueError(
                    f"{label}: {path} stores example_ids in [{int(ids.min())}, {int(ids.max())}], "
                    f"outside [0, num_examples={num_examples})"
                )
            values[ids] = chunk
            nan = np.isnan(chunk)
            return ids.size, ids[nan] if nan.any() else ids[:0]

        results = []
        with ThreadPoolExecutor(max_workers=1) as scatterer:
            pending = None
            for path, parquet in opened:
                for row_group in range(parquet.metadata.num_row_groups):
                    table = decode(path, parquet, row_group)
                    if pending is not None:
                        results.append(pending.result())
                    pending = scatterer.submit(scatter, path, table)
            if pending is not None:
                results.append(pending.result())
    rows = sum(n for n, _ in results)
    # A sequential pass instead of a second random scatter; stored NaNs are added back by id.
    present = ~np.isnan(values)
    for _, nan_ids in results:
        present[nan_ids] = True
    stored = int(np.count_nonzero(present))
    if rows != stored:
        raise ValueError(
            f"{label}: {rows - stored} example_id(s) are stored by more than one of shards "
            f"{[os.path.basename(p) for p in files]}"
        )
    return values, present
