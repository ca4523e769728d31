"""The generated multi-domain corpus and document_nll: shapes, proportions, padding, the
languages' learnability ranking, and per-document losses equal to a per-document loop."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from winnow.pipelines.toylm import DOMAINS, NATURAL, TinyCausalLM, make_corpus
from winnow.selection import document_nll


def test_corpus_is_ragged_deterministic_and_in_proportion():
    c = make_corpus(1000, seed=3)
    assert c.tokens.shape == (1000, 48) and c.lengths.min() >= 16 and c.lengths.max() <= 48
    np.testing.assert_allclose(np.bincount(c.domain) / 1000, NATURAL, atol=0.002)
    pad = np.arange(48)[None, :] >= c.lengths[:, None]
    assert (c.tokens[pad] == 0).all() and (c.tokens[~pad] >= 1).all()
    again = make_corpus(1000, seed=3)
    np.testing.assert_array_equal(c.tokens, again.tokens)
    assert not np.array_equal(make_corpus(1000, seed=4).tokens, c.tokens)
    copy = c.tokens[c.domain == DOMAINS.index("copy")]
    later = copy[:, 8:] != 0  # a repeat of the 8-token motif wherever the document goes on
    np.testing.assert_array_equal(copy[:, 8:][later], copy[:, :-8][later])
    assert (c.tokens[c.domain == DOMAINS.index("markov2")] <= 8).all()  # 8 symbols, and padding
    count = c.tokens[c.domain == DOMAINS.index("count")]
    steps = (count[:, 1:] - count[:, :-1]) % 31
    assert ((steps == steps[:, :1]) | (count[:, 1:] == 0)).all()  # one step per document
    with pytest.raises(ValueError, match="proportions"):
        make_corpus(10, proportions=(0.5, 0.5))


def test_languages_differ_in_entropy():
    """Empirical next-token entropy: markov1 < markov2 < noise (= log 31)."""
    c = make_corpus(3000, seed=0)

    def conditional_entropy(domain):
        docs = c.tokens[c.domain == DOMAINS.index(domain)][:, :16]
        pairs = np.zeros((32, 32))
        np.add.at(pairs, (docs[:, :-1].ravel(), docs[:, 1:].ravel()), 1)
        p = pairs / pairs.sum()
        row = p.sum(1, keepdims=True)
        nz = p > 0
        return float(-(p[nz] * np.log((p / np.where(row > 0, row, 1))[nz])).sum())

    h1, h2, hn = (conditional_entropy(d) for d in ("markov1", "markov2", "noise"))
    assert h1 < h2 < hn and hn == pytest.approx(np.log(31), abs=0.05)


def test_document_nll_equals_a_per_document_loop():
    c = make_corpus(12, seed=1)
    model = TinyCausalLM().eval()
    tokens, lengths = torch.from_numpy(c.tokens), torch.from_numpy(c.lengths)
    with torch.no_grad():
        got = document_nll(model, tokens, lengths)  # the scoring job's nll, on the toy corpus
        for i in range(12):
            doc = tokens[i : i + 1, : lengths[i]]
            want = F.cross_entropy(model(doc)[0, :-1], doc[0, 1:])
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
