"""``IndexedDataset`` over a Hugging Face ``datasets.Dataset``: items are ``(example_id, row)``,
a batch is ``(ids, {column: tensor})``, read from Arrow a batch at a time; ``collate_with_ids``
hands the rows alone to another collator."""

import pytest
import torch
from torch.utils.data import DataLoader

from winnow.samplers import IndexedDataset, RS2Sampler, collate_with_ids

datasets = pytest.importorskip("datasets")

N, BATCH = 40, 4


def test_indexed_dataset_reads_a_hugging_face_dataset_a_batch_at_a_time():
    rows = datasets.Dataset.from_dict({"x": [[float(i)] * 3 for i in range(N)],
                                       "label": list(range(N))}).with_format("torch")  # fmt: skip
    fetched = []
    getitems = rows.__getitems__

    class Spy:  # counts the batched reads the DataLoader makes through IndexedDataset
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            raise AssertionError("read one row at a time")

        def __getitems__(self, keys):
            fetched.append(len(keys))
            return getitems(keys)

    sampler = RS2Sampler(N, 0.55, seed=1)  # 22 ids: a short last batch
    for source in (rows, Spy()):
        batches = list(DataLoader(IndexedDataset(source), batch_size=BATCH, sampler=sampler))
        ids = torch.cat([ids for ids, _ in batches])
        assert ids.tolist() == list(sampler)
        for ids, batch in batches:
            assert ids.dtype == torch.int64
            assert torch.equal(batch["label"], ids)  # each row came with its own id
            assert batch["x"].shape == (len(ids), 3)
    assert fetched == [len(ids) for ids, _ in batches]  # one read per batch
    plain = datasets.Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(N)]})
    stack = lambda rows: {"input_ids": torch.tensor([r["input_ids"] for r in rows])}  # noqa: E731
    loader = DataLoader(IndexedDataset(plain), batch_size=BATCH, sampler=sampler,
                        collate_fn=collate_with_ids(stack))  # fmt: skip
    ids, batch = next(iter(loader))
    assert torch.equal(batch["input_ids"][:, 0], ids)
