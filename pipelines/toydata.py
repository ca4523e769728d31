"""A small, fully offline task for demos, tests and benchmarks: MNIST-1D and two tiny models.

MNIST-1D is generated procedurally (``mnist1d.data.make_dataset``); nothing is downloaded.
The generator reseeds numpy's *global* RNG, so the global state is saved and restored around it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["make_mnist1d", "add_label_noise", "SmallCNN", "MLP"]


def make_mnist1d(
    num_samples: int = 5000,
    *,
    seed: int = 42,
    train_split: float = 0.8,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Generate MNIST-1D locally.

    Returns ``{"x": float32 [n_train, 40], "y": int64 [n_train], "x_test", "y_test"}``.
    With ``cache_dir``, the arrays are kept in an ``.npz`` there (generation of 50k examples
    takes ~25 s on 2 cores; loading takes milliseconds). The cache file is written atomically.
    """
    if num_samples < 10:
        raise ValueError(f"num_samples must be >= 10 (one per class), got {num_samples}")
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"train_split must be in (0, 1), got {train_split}")
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"mnist1d-n{num_samples}-s{seed}-t{train_split}.npz"
        if cache_file.exists():
            with np.load(cache_file) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = train_split
    np_state = np.random.get_state()  # noqa: NPY002 (restored below)
    import random

    py_state = random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    data = {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int64),
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)
        os.replace(tmp, cache_file)
    return data


def add_label_noise(
    y: np.ndarray, fraction: float, *, num_classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric label noise: a ``fraction`` of labels moved to a different, uniform class.

    Returns ``(noisy_labels, is_noisy)``; ``is_noisy`` is a bool mask of the changed rows.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.int64)
    n_noisy = int(round(fraction * len(y)))
    rows = rng.choice(len(y), size=n_noisy, replace=False)
    shift = rng.integers(1, num_classes, size=n_noisy)
    noisy = y.copy()
    noisy[rows] = (y[rows] + shift) % num_classes
    mask = np.zeros(len(y), dtype=bool)
    mask[rows] = True
    return noisy, mask


class SmallCNN(nn.Module):
    """A small 1-D CNN for MNIST-1D (input ``[B, 40]`` or ``[B, 1, 40]``, 10 logits).

    ``embed(x)`` returns the penultimate features ``[B, hidden]`` (used for embedding metrics).
    No BatchNorm, so per-example gradients are well defined in train and eval mode.
    """

    def __init__(
        self, num_classes: int = 10, channels: int = 32, hidden: int = 64, length: int = 40
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        out_len = length
        for _ in range(3):
            out_len = (out_len - 1) // 2 + 1
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * out_len, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """A two-hidden-layer MLP for MNIST-1D (input ``[B, 40]``, 10 logits)."""

    def __init__(self, in_features: int = 40, hidden: int = 100, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
