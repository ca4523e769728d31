"""Small models, datasets and Parquet files for the scoring-job tests.

Everything here is importable as ``tests.pipelines.scoring_fixtures:<name>`` by Ray workers too
(Ray puts the driver's working directory, the repository root, on the workers' path).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from winnow.pipelines.toydata import MLP

__all__ = [
    "BAD_MARKER",
    "broken_dataset",
    "exploding_mlp",
    "make_arrays",
    "mlp",
    "mlp_only_on_meta",
    "mlp_with_loss",
    "slow_mlp",
    "tensor_dataset",
    "write_parquet",
]

# An input whose first feature equals this makes `exploding_mlp` raise.
BAD_MARKER = 1e6


def make_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 ``[n, 40]``, ``y`` int64 ``[n]`` in 0..9, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 40)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


def tensor_dataset(n: int = 300, seed: int = 0) -> torch.utils.data.TensorDataset:
    x, y = make_arrays(n, seed)
    return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


class _BrokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, bad: int):
        self.inner, self.bad = tensor_dataset(n), bad

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        if index == self.bad:
            raise OSError(f"cannot decode item {index}")
        return self.inner[index]


def broken_dataset(n: int = 100, bad: int = 42) -> torch.utils.data.Dataset:
    """``tensor_dataset(n)`` whose item ``bad`` cannot be read."""
    return _BrokenDataset(n, bad)


def write_parquet(
    directory: Path,
    x: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray | None = None,
    *,
    files: int = 2,
    row_group_size: int = 64,
    with_ids: bool = True,
) -> Path:
    """Split rows over ``files`` Parquet files (small row groups) with a fixed-size-list column.

    ``with_ids=False`` writes no ``example_id`` column (the job then uses row positions).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ids = np.arange(len(x), dtype=np.int64) if ids is None else ids
    for part, rows in enumerate(np.array_split(np.arange(len(x)), files)):
        flat = pa.array(x[rows].ravel())
        columns = {"example_id": pa.array(ids[rows], pa.int64())} if with_ids else {}
        table = pa.table(
            {
                **columns,
                "x": pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
                "label": pa.array(y[rows], pa.int64()),
            }
        )
        pq.write_table(table, directory / f"part-{part:03d}.parquet", row_group_size=row_group_size)
    return directory


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(in_features=40, hidden=32)


def mlp_only_on_meta(seed: int = 0) -> nn.Module:
    """Builds on the meta device (the driver's check) but not for real: stands for a factory
    that fails only where the shards are scored (a file or GPU missing on a worker)."""
    if torch.empty(0).device.type != "meta":
        raise OSError("weights file missing on this worker")
    return mlp(seed)


def mlp_with_loss(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A factory returning ``(module, loss_fn)`` with a torch criterion (reduction='none')."""
    return mlp(seed), nn.CrossEntropyLoss(reduction="none")


class _Exploding(nn.Module):
    def __init__(self, inner: nn.Module, flag: str | None = None):
        super().__init__()
        self.inner, self.flag = inner, flag

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        broken = self.flag is None or Path(self.flag).exists()
        if broken and bool((x[:, 0] == BAD_MARKER).any()):
            raise ValueError("model cannot handle the marked input")
        return self.inner(x)


def exploding_mlp(seed: int = 0, flag: str | None = None) -> nn.Module:
    """Same weights as ``mlp(seed)`` but raises on rows whose first feature is BAD_MARKER.

    With ``flag``, it only raises while that file exists: deleting it "fixes" the model.
    """
    return _Exploding(mlp(seed), flag)


class _Slow(nn.Module):
    def __init__(self, inner: nn.Module, delay: float):
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)  # keeps a tiny job running long enough to be killed part-way
        return self.inner(x)


def slow_mlp(seed: int = 0, delay: float = 0.1) -> nn.Module:
    """Same weights and outputs as ``mlp(seed)``, ``delay`` seconds slower per mini-batch."""
    return _Slow(mlp(seed), delay)
