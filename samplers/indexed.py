"""``IndexedDataset``: a map-style dataset whose items carry their ``example_id``."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so item ``i`` is ``(i, dataset[i])``.

    The default collate turns the ids of a batch into an int64 tensor ``[B]``, which is what
    ``sampler.update(ids, losses)`` / ``sampler.reweight(ids, losses)`` expect. Works with any
    number of DataLoader workers: the id travels with the item, nothing is patched.
    """

    def __init__(self, dataset: Any):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset must be map-style (__getitem__ and __len__), got {type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]
