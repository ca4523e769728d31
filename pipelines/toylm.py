"""A generated multi-domain token corpus and a tiny causal transformer, fully offline.

For the language-model side of winnow (Online Data Mixing, per-document LM scores) on a CPU: the
"languages" differ in how much a small model can learn from them, and the natural proportions
are unequal, as in a web-scale pretraining mixture.

| domain | what it is | what a small model can learn |
|---|---|---|
| ``markov1`` | order-1 Markov chain, peaked transitions | almost all of it, fast |
| ``markov2`` | order-2 Markov chain over 8 of the tokens | most, with two tokens of context |
| ``copy`` | a random motif of 8 tokens, repeated | all after the first 8, through attention |
| ``count`` | ``x[t+1] = x[t] + s (mod V)``, random start and step | everything after two tokens |
| ``noise`` | uniform random tokens | nothing (loss stays ``ln V``) |

Documents are ragged (lengths drawn per document) so per-document scoring has padding to handle.
Everything is a pure function of the seed; numpy's global RNG is never used.

Tuned so that a two-layer model of width 64 separates the domains within ~1000 steps of 32
documents on a CPU: with ``markov2`` over all 31 tokens (961 contexts) and ``copy`` as one
24-token half repeated once, neither moved from ``ln 31`` in 1000 steps under natural or uniform
mixing; over 8 symbols and with an 8-token motif both are learnt, ``markov2`` slowest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DOMAINS", "NATURAL", "Corpus", "TinyCausalLM", "make_corpus"]

DOMAINS = ("markov1", "markov2", "copy", "count", "noise")
# Unequal natural proportions: the unlearnable domain is a large share, as noisy web text is.
NATURAL = (0.30, 0.15, 0.10, 0.10, 0.35)
_MARKOV2_SYMBOLS = 8  # markov2 speaks tokens 1..8: 64 two-token contexts
_COPY_PERIOD = 8  # copy repeats a random motif of this many tokens


@dataclass(frozen=True)
class Corpus:
    """Ragged token documents with their domains.

    ``tokens``: int64 ``[D, T_max]`` right-padded with ``pad``; ``lengths``: int64 ``[D]``;
    ``domain``: int64 ``[D]`` index into ``names``. Document ``i`` is ``tokens[i, :lengths[i]]``.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    domain: np.ndarray
    vocab_size: int
    names: tuple[str, ...] = DOMAINS
    pad: int = 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def documents(self) -> list[list[int]]:
        """The documents as ragged lists (a ``list<int>`` column)."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


def _peaked(gen: np.random.Generator, rows: int, vocab: int, concentration: float) -> np.ndarray:
    """Row-stochastic ``[rows, vocab]`` matrix; small ``concentration`` = peaked rows."""
    return gen.dirichlet(np.full(vocab, concentration), size=rows)


def _sample_chain(gen, table: np.ndarray, context: np.ndarray, length: int, order: int, vocab):
    """Sample tokens of one Markov chain of ``order`` for every row of ``context`` at once."""
    docs = context.shape[0]
    out = np.empty((docs, length), dtype=np.int64)
    out[:, :order] = context
    cdf = np.cumsum(table, axis=1)
    for t in range(order, length):
        state = out[:, t - 1] if order == 1 else out[:, t - 2] * vocab + out[:, t - 1]
        u = gen.random(docs)[:, None]
        out[:, t] = np.minimum((u > cdf[state]).sum(axis=1), vocab - 1)
    return out


def make_corpus(
    num_documents: int,
    *,
    vocab_size: int = 32,
    max_length: int = 48,
    min_length: int = 16,
    proportions: tuple[float, ...] = NATURAL,
    seed: int = 0,
    shuffle: bool = True,
) -> Corpus:
    """``num_documents`` documents in the five domains, ``proportions`` of each (rounded).

    Token 0 is reserved for padding; domains use tokens ``1..vocab_size-1``. The grammar of each
    language (its Markov tables) comes from a fixed seed, so corpora drawn with different
    ``seed`` speak the same languages (a training and a validation corpus).
    """
    if len(proportions) != len(DOMAINS) or not math.isclose(sum(proportions), 1.0):
        raise ValueError(
            f"proportions must be {len(DOMAINS)} shares summing to 1, got {proportions}"
        )
    if not 4 <= min_length <= max_length:
        raise ValueError(f"need 4 <= min_length <= max_length, got {min_length}, {max_length}")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    counts = np.floor(np.asarray(proportions) * num_documents).astype(int)
    counts[np.argmax(proportions)] += num_documents - counts.sum()
    grammar = np.random.default_rng(12345)  # the languages themselves, shared by every corpus
    v = vocab_size - 1  # tokens 1..V-1
    t1 = _peaked(grammar, v, v, 0.05)
    s2 = min(_MARKOV2_SYMBOLS, v)
    t2 = _peaked(grammar, s2 * s2, s2, 0.1)
    gen = np.random.default_rng(seed)
    parts, domains = [], []
    for d, count in enumerate(counts):
        if count == 0:
            continue
        name = DOMAINS[d]
        if name == "markov1":
            docs = _sample_chain(gen, t1, gen.integers(0, v, (count, 1)), max_length, 1, v)
        elif name == "markov2":
            docs = _sample_chain(gen, t2, gen.integers(0, s2, (count, 2)), max_length, 2, s2)
        elif name == "copy":
            motif = gen.integers(0, v, (count, _COPY_PERIOD))
            docs = np.tile(motif, (1, -(-max_length // _COPY_PERIOD)))[:, :max_length]
        elif name == "count":
            start = gen.integers(0, v, (count, 1))
            step = gen.integers(1, 4, (count, 1))
            docs = (start + step * np.arange(max_length)[None, :]) % v
        else:
            docs = gen.integers(0, v, (count, max_length))
        parts.append(docs + 1)
        domains.append(np.full(count, d, dtype=np.int64))
    tokens = np.concatenate(parts).astype(np.int64)
    domain = np.concatenate(domains)
    lengths = gen.integers(min_length, max_length + 1, tokens.shape[0]).astype(np.int64)
    if shuffle:
        order = gen.permutation(tokens.shape[0])
        tokens, domain, lengths = tokens[order], domain[order], lengths[order]
    tokens[np.arange(max_length)[None, :] >= lengths[:, None]] = 0
    return Corpus(tokens=tokens, lengths=lengths, domain=domain, vocab_size=vocab_size)


class TinyCausalLM(nn.Module):
    """A two-layer causal transformer, ``[B, T]`` int64 tokens to ``[B, T, V]`` logits."""

    def __init__(
        self,
        vocab_size: int = 32,
        max_length: int = 48,
        *,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_length, dim)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.register_buffer(
            "causal", nn.Transformer.generate_square_subsequent_mask(max_length), persistent=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        h = self.embed(tokens) + self.position(pos)[None]
        h = self.blocks(h, mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(h))
