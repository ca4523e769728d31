"""Token documents and tiny causal LMs for the LM-scoring tests.

Importable as ``tests.pipelines.lm_fixtures:<name>`` by Ray workers too (Ray puts the driver's
working directory, the repository root, on the workers' path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from winnow.pipelines.toylm import DOMAINS, TinyCausalLM, make_corpus

__all__ = ["VOCAB", "corpus_table", "tiny_lm", "tiny_lm_with_loss", "write_corpus"]

VOCAB = 32
MAX_LENGTH = 48


def tiny_lm(seed: int = 0) -> nn.Module:
    """A ``TinyCausalLM`` (vocabulary 32, positions 48, dim 32) whose weights depend on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCausalLM(VOCAB, MAX_LENGTH, dim=32, heads=2, layers=1)


def tiny_lm_with_loss(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(tiny_lm(seed), a per-token loss)``: label smoothing shows the loss is the user's."""
    return tiny_lm(seed), nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)


def corpus_table(n: int, seed: int = 0, *, min_length: int = 4, max_length: int = 40) -> pa.Table:
    """``example_id``, ``tokens`` (ragged ``list<int64>``) and ``domain`` (names) of ``n`` toy
    documents; ids are sparse and descending, never row positions."""
    corpus = make_corpus(n, min_length=min_length, max_length=max_length, seed=seed)
    ids = np.arange(n, dtype=np.int64)[::-1] * 3 + 1
    return pa.table(
        {
            "example_id": pa.array(ids),
            "tokens": pa.array(corpus.documents(), pa.list_(pa.int64())),
            "domain": pa.array([DOMAINS[d] for d in corpus.domain]),
        }
    )


def write_corpus(path: Path, table: pa.Table, *, files: int = 2, row_group_size: int = 32) -> Path:
    """``table`` split over ``files`` Parquet files (small row groups) under ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(np.array_split(np.arange(table.num_rows), files)):
        chunk = table.take(pa.array(rows))
        pq.write_table(chunk, path / f"part-{part:03d}.parquet", row_group_size=row_group_size)
    return path
