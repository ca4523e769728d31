"""Training-time trace: per-epoch sampler decisions, one Parquet file per (run, epoch, shard).

Samplers receive a ``TraceWriter`` from the training script and call ``write`` duck-typed; they
never import ``store``. Rows: ``(example_id, loss, kept, weight)``; ``run`` and ``epoch`` come from
the path (``trace/run=R/epoch=E/shard-S.parquet``), so SQL sees ``trace(run, epoch, example_id,
loss, kept, weight)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.store.files import TRACE_SCHEMA, write_parquet
from winnow.store.layout import StoreFS, check_name, check_nonnegative_int, shard_filename
from winnow.store.validation import as_numpy, check_ids, check_same_length, check_values

__all__ = ["TraceWriter", "trace_path"]


def trace_path(sfs: StoreFS, run: str, epoch: int, shard: int) -> str:
    return sfs.path("trace", f"run={run}", f"epoch={epoch}", shard_filename(shard))


class TraceWriter:
    """Appends one epoch of one rank's sampler decisions to the store per ``write`` call.

    Args:
        sfs: the store's filesystem (``ScoreStore.trace_writer`` builds this object).
        run: run name.
        shard: this writer's shard, typically the DDP rank, so ranks never overwrite each other.

    Writing the same (epoch, shard) again replaces that file (a resumed epoch does not double
    count).
    """

    def __init__(self, sfs: StoreFS, run: str, *, shard: int = 0) -> None:
        self._sfs = sfs
        self.run = check_name(run, "run")
        self.shard = check_nonnegative_int(shard, "shard")

    def write(
        self,
        epoch: int,
        example_id: object,
        kept: object,
        weight: object | None = None,
        loss: object | None = None,
    ) -> int:
        """Record one epoch's decisions atomically; return the number of rows.

        Args:
            epoch: non-negative epoch number.
            example_id: [n] integer ids (numpy, list or tensor on any device), unique.
            kept: [n] bool, True where the example is trained on this epoch.
            weight: [n] float loss weight (finite); None means 1.0 for kept, 0.0 for pruned.
            loss: [n] float latest known loss per example (NaN allowed = unknown); None = unknown.
        """
        epoch = check_nonnegative_int(epoch, "epoch")
        ids = check_ids(example_id)
        kept_arr = as_numpy(kept, "kept")
        if kept_arr.dtype != np.bool_:
            if kept_arr.dtype.kind not in "iu" or not np.isin(kept_arr, (0, 1)).all():
                raise TypeError(f"kept must be booleans (or 0/1), got dtype {kept_arr.dtype}")
            kept_arr = kept_arr.astype(np.bool_)
        if weight is None:
            weight_arr = kept_arr.astype(np.float32)
        else:
            weight_arr = check_values(weight, "weight", allow_nan=False)
        if loss is None:
            loss_arr = np.full(ids.size, np.nan, dtype=np.float32)
        else:
            loss_arr = check_values(loss, "loss", allow_nan=True)
        check_same_length(example_id=ids, kept=kept_arr, weight=weight_arr, loss=loss_arr)
        table = pa.Table.from_arrays(
            [pa.array(ids), pa.array(loss_arr), pa.array(kept_arr), pa.array(weight_arr)],
            schema=TRACE_SCHEMA,
        )
        write_parquet(self._sfs, trace_path(self._sfs, self.run, epoch, self.shard), table)
        return ids.size
