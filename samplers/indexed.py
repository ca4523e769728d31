"""``IndexedDataset``: a map-style dataset whose items carry their ``example_id``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["IndexedDataset", "collate_with_ids"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so item ``i`` is ``(i, dataset[i])``.

    The default collate turns the ids of a batch into an int64 tensor ``[B]``, which is what
    ``sampler.update(ids, losses)`` / ``sampler.reweight(ids, losses)`` expect. Works with any
    number of DataLoader workers: the id travels with the item, nothing is patched.

    A Hugging Face ``datasets.Dataset`` works as is: a batch is ``(ids, {column: values})``, read
    from Arrow a whole batch at a time (``__getitems__``). Give it ``.with_format("torch")`` so
    list columns collate to ``[B, ...]`` tensors (torch's default collate transposes plain Python
    lists), or collate with a Hugging Face collator through :func:`collate_with_ids`.
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

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        # The DataLoader fetches a batch through this when it exists; datasets.Dataset then
        # reads the batch from Arrow in one call instead of one row at a time.
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if getitems else [self.dataset[i] for i in indices]
        return list(zip(indices, items, strict=True))


def collate_with_ids(
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Callable[[list[tuple[int, Any]]], tuple[torch.Tensor, Any]]:
    """A ``collate_fn`` for :class:`IndexedDataset` batches: ``(ids, collate_fn(items))``.

    ``ids`` is int64 ``[B]``; ``collate_fn`` (default: torch's ``default_collate``) sees the
    items alone, so a Hugging Face collator (``DataCollatorWithPadding(tokenizer)``, ...) works.
    """
    inner = default_collate if collate_fn is None else collate_fn

    def collate(batch: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        ids = torch.tensor([i for i, _ in batch], dtype=torch.int64)
        return ids, inner([item for _, item in batch])

    return collate
