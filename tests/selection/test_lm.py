"""Per-document LM losses in windows: the documented rule, against per-document loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from winnow.selection.lm import (
    IGNORE,
    document_nll,
    make_windows,
    pool_windows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class _Bigram(nn.Module):
    """A causal LM whose output depends on the current token and its position in the window:
    any change of a window's start shows up in the loss."""

    def __init__(self, vocab: int = 11, width: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=gen))
        self.position = nn.Parameter(torch.randn(width, vocab, generator=gen))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens] + self.position[: tokens.shape[1]][None]


def _ragged(lengths, vocab=11, seed=0):
    gen = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = gen.integers(1, vocab, n)
    return torch.from_numpy(tokens), torch.tensor(lengths)


def _reference_nll(model, doc: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """The documented rule, one document, one window at a time."""
    n = doc.shape[0]
    width = n if max_tokens is None else max_tokens
    total, count, start = 0.0, 0, 0
    while start < n - 1:
        window = doc[start : start + width]
        logits = model(window[None])[0]
        total = total + F.cross_entropy(logits[:-1], window[1:], reduction="sum")
        count += window.shape[0] - 1
        start += width - 1
    return total / count


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 16), min_size=1, max_size=6),
    max_tokens=st.one_of(st.none(), st.integers(2, 9)),
)
def test_every_target_is_predicted_once_and_windows_follow_the_rule(lengths, max_tokens):
    tokens, lens = _ragged(lengths)
    w = make_windows(tokens, lens, max_tokens)
    assert w.num_documents == len(lengths)
    assert torch.equal(w.document, torch.sort(w.document).values)
    for doc, n in enumerate(lengths):
        rows = (w.document == doc).nonzero().flatten()
        predicted = (w.targets[rows] != IGNORE).sum()
        assert int(predicted) == n - 1
        assert int(w.new[rows].sum()) == n  # each token new exactly once
        stride = n - 1 if max_tokens is None else max_tokens - 1
        for k, row in enumerate(rows.tolist()):
            start = k * stride
            length = int(w.lengths[row])
            assert length == min(stride + 1, n - start) >= 2
            assert torch.equal(w.tokens[row, :length], tokens[doc, start : start + length])
            assert (w.tokens[row, length:] == 0).all()
            following = tokens[doc, start + 1 : start + length]
            assert torch.equal(w.targets[row, : length - 1], following)
            assert (w.targets[row, length - 1 :] == IGNORE).all()


@pytest.mark.parametrize("max_tokens", [None, 2, 5, 16])
def test_document_nll_equals_a_per_document_loop(max_tokens):
    lengths = [16, 2, 9, 5, 13, 3]
    tokens, lens = _ragged(lengths, seed=1)
    model = _Bigram()
    with torch.no_grad():
        got = document_nll(model, tokens, lens, max_tokens=max_tokens)
        for i, n in enumerate(lengths):
            want = _reference_nll(model, tokens[i, :n], max_tokens)
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)


def test_windows_change_the_loss_only_for_documents_longer_than_max_tokens():
    tokens, lens = _ragged([12, 4, 7], seed=2)
    model = _Bigram()
    with torch.no_grad():
        whole = document_nll(model, tokens, lens)
        cut = document_nll(model, tokens, lens, max_tokens=7)
    torch.testing.assert_close(cut[1:], whole[1:])  # 4 and 7 tokens: one window each
    assert abs(float(cut[0] - whole[0])) > 1e-3


def test_a_user_per_token_loss_and_padding_values():
    tokens, lens = _ragged([6, 3])
    padded = tokens.clone()
    padded[1, 3:] = 7  # the pad value never matters
    model = _Bigram()
    smooth = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    with torch.no_grad():
        a = document_nll(model, tokens, lens, loss_fn=smooth)
        b = document_nll(model, padded, lens, loss_fn=smooth)
        want = smooth(model(tokens[1:2, :3])[0, :-1], tokens[1, 1:3]).mean()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1], want)


def test_pooling_counts_each_token_once():
    tokens, lens = _ragged([7, 3])
    w = make_windows(tokens, lens, max_tokens=3)  # document 0: windows at 0, 2, 4
    hidden = tokens[w.document[:, None], 0].float() * 0 + torch.arange(3.0)[None, :]
    hidden = torch.stack([w.tokens.float(), hidden], dim=2)  # d = 2: the token, the position
    pooled = pool_windows(hidden, w)
    assert pooled[0, 0] == tokens[0, :7].float().mean()
    assert pooled[1, 0] == tokens[1, :3].float().mean()
    per_window = pool_windows(torch.ones(w.tokens.shape[0], 4), w)
    assert torch.equal(per_window, torch.ones(2, 4))


@pytest.mark.parametrize(
    ("lengths", "max_tokens", "error", "message"),
    [
        ([1, 4], None, ValueError, "at least 2"),
        ([4, 4], 1, ValueError, "max_tokens must be"),
        ([9, 4], None, ValueError, "exceeds"),
    ],
)
def test_bad_batches_are_refused(lengths, max_tokens, error, message):
    tokens = torch.ones(2, 4, dtype=torch.int64)
    with pytest.raises(error, match=message):
        make_windows(tokens, torch.tensor(lengths), max_tokens)
    with pytest.raises(TypeError, match="integer"):
        make_windows(tokens.float(), torch.tensor([2, 2]))
