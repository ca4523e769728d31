"""Step-partitioned files: what training records per step (selection trace, mixture, noise scale).

Each kind lives under ``<kind>/run=R/start=S/shard-N.parquet``: a writer appends one file per
flush, named by the first step it holds (``S``) and the writer's shard (``N``, typically the DDP
rank). Files of one shard never overlap in steps, so a view over all of them counts each step
once; a resumed writer first removes its shard's files from the resumed step on
(:func:`discard_from`), so the steps it replays are not counted twice.
"""

from __future__ import annotations

import pyarrow as pa

from winnow.store.files import (
    MIXTURE_SCHEMA,
    NOISE_SCALE_SCHEMA,
    STEPS_SCHEMA,
    count_rows,
    write_parquet,
)
from winnow.store.layout import StoreFS, shard_filename

__all__ = ["STEP_KINDS", "count_step_rows", "discard_from", "step_path", "write_step_file"]

#: kind (directory) -> the schema of its files
STEP_KINDS: dict[str, pa.Schema] = {
    "steps": STEPS_SCHEMA,
    "mixture": MIXTURE_SCHEMA,
    "noise_scale": NOISE_SCALE_SCHEMA,
}


def _run_dir(sfs: StoreFS, kind: str, run: str) -> str:
    if kind not in STEP_KINDS:
        raise ValueError(f"kind must be one of {sorted(STEP_KINDS)}, got {kind!r}")
    return sfs.path(kind, f"run={run}")


def step_path(sfs: StoreFS, kind: str, run: str, start: int, shard: int) -> str:
    """``<kind>/run=R/start=S/shard-N.parquet``."""
    return f"{_run_dir(sfs, kind, run)}/start={start}/{shard_filename(shard)}"


def write_step_file(sfs: StoreFS, kind: str, run: str, shard: int, table: pa.Table) -> None:
    """Write one flush of ``kind`` atomically; its first row's step names the file."""
    start = table.column("step")[0].as_py()
    write_parquet(sfs, step_path(sfs, kind, run, start, shard), table)


def discard_from(sfs: StoreFS, kind: str, run: str, shard: int, step: int) -> int:
    """Remove ``shard``'s files of ``kind`` whose first step is ``>= step``; return how many.

    Files never straddle a checkpoint (writers flush when their state is saved), so the files
    that start before a resumed step end before it.
    """
    base = _run_dir(sfs, kind, run)
    removed = 0
    for start in sfs.partitions(base, "start"):
        if not start.isdigit() or int(start) < step:
            continue
        for number, path in sfs.shard_files(f"{base}/start={start}").items():
            if number == shard:
                sfs.fs.delete_file(path)
                removed += 1
    return removed


def count_step_rows(sfs: StoreFS, kind: str, run: str) -> int:
    """Rows of every committed file of ``kind`` for ``run`` (from the Parquet footers)."""
    base = _run_dir(sfs, kind, run)
    total = 0
    for start in sfs.partitions(base, "start"):
        for path in sfs.shard_files(f"{base}/start={start}").values():
            total += count_rows(sfs, path)
    return total
