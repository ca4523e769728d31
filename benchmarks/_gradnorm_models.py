"""The models of the gradient-norm benchmark, each with a batch maker and a per-example loss.

Every model uses only layers that have a ghost rule in winnow and a norm or per-sample-gradient
rule in Opacus, so both libraries compute their fast path (no fallback on either side), and no
buffers (Opacus' strict mode). Shared by benchmarks/bench_gradnorm.py and the Opacus agreement
test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from winnow.pipelines.toydata import MLP, SmallCNN
from winnow.selection.losses import per_example_cross_entropy, sequence_loss

__all__ = ["CASES", "Case", "TransformerBlock", "cifar_cnn", "embedding_classifier"]


@dataclass(frozen=True)
class Case:
    """A benchmark model: ``make()`` builds it, ``batch(b, gen)`` returns ``(inputs, targets)``."""

    make: Callable[[], nn.Module]
    batch: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cifar_cnn(c1: int = 16, c2: int = 32, num_classes: int = 10) -> nn.Module:
    """Two 3x3 convolutions with max-pooling on 32x32x3 images, and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 8 * 8, num_classes),
    )


class _EmbeddingClassifier(nn.Module):
    def __init__(self, vocab: int, dim: int, num_classes: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(self.ln(self.emb(ids))))
        return self.out(h.mean(1))


def embedding_classifier(vocab: int = 1000, dim: int = 64, num_classes: int = 10) -> nn.Module:
    """Token embedding, LayerNorm, a per-token Linear, mean pooling, a classifier."""
    return _EmbeddingClassifier(vocab, dim, num_classes)


class TransformerBlock(nn.Module):
    """A pre-LayerNorm Transformer block on token and position embeddings, with an LM head.

    Attention is written out with Linear layers (``qkv``, ``proj``) and
    ``F.scaled_dot_product_attention``, as GPT-style code does.
    """

    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4, max_len: int = 32):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.lnf = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        # Positions per example (batch on dim 0), not one [T] row broadcast over the batch;
        # materialised, because Opacus' embedding rule views the ids.
        positions = torch.arange(t, device=ids.device).repeat(b, 1)
        h = self.tok(ids) + self.pos(positions)
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(att.transpose(1, 2).reshape(b, t, -1))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(self.lnf(h))


def _vectors(b, gen):
    return torch.randn(b, 40, generator=gen), torch.randint(0, 10, (b,), generator=gen)


def _images(b, gen):
    return torch.randn(b, 3, 32, 32, generator=gen), torch.randint(0, 10, (b,), generator=gen)


def _tokens(vocab: int, length: int, classes: int | None):
    def batch(b, gen):
        ids = torch.randint(0, vocab, (b, length), generator=gen)
        if classes is None:  # next-token targets
            return ids, torch.randint(0, vocab, (b, length), generator=gen)
        return ids, torch.randint(0, classes, (b,), generator=gen)

    return batch


CASES: dict[str, Case] = {
    "mlp 40-100-100-10 (toydata.MLP)": Case(MLP, _vectors, per_example_cross_entropy),
    "mlp 40-512-512-10": Case(lambda: MLP(hidden=512), _vectors, per_example_cross_entropy),
    "cnn 3xConv1d(32)+fc (toydata.SmallCNN)": Case(SmallCNN, _vectors, per_example_cross_entropy),
    "cnn 2xConv2d(16,32) 32x32x3": Case(cifar_cnn, _images, per_example_cross_entropy),
    "embedding+LayerNorm, 32 tokens": Case(
        embedding_classifier, _tokens(1000, 32, 10), per_example_cross_entropy
    ),
    "transformer block d64 h4, 32 tokens, LM": Case(
        TransformerBlock, _tokens(256, 32, None), sequence_loss
    ),
}
