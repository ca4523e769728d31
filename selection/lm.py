"""Per-document language-model losses over ragged token documents, scored in windows.

A batch of ``B`` documents is int64 tokens ``[B, T]`` right-padded (any pad value), with
``lengths [B]``; ``T`` is the longest document of the batch, so compute follows real lengths.
Token ``t`` predicts token ``t + 1``: a document of ``n`` tokens has ``n - 1`` targets.

Windows (docs/scoring-job.md, "Token documents"). With ``max_tokens = W``, a document is cut
into windows of at most ``W`` tokens that start every ``W - 1`` tokens, so consecutive windows
share one token: window ``k`` holds tokens ``[k (W - 1), k (W - 1) + W)``. Each window predicts
its own next tokens and the context restarts at each window, so every one of the ``n - 1``
targets is predicted exactly once. A document of ``n <= W`` tokens is one window (the whole
document); ``max_tokens=None`` never cuts. The document's loss is the mean over its ``n - 1``
target tokens, i.e. the token-weighted mean of its windows' mean losses.

Everything is vectorised over documents and windows (no Python loop per token or document).
Higher loss = less predictable for the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "IGNORE",
    "Windows",
    "document_losses",
    "document_nll",
    "lm_logits",
    "make_windows",
    "pool_windows",
    "token_losses",
]

IGNORE = -100
"""The target of a position that predicts nothing (past a window's last token): as in
``torch.nn.CrossEntropyLoss(ignore_index=-100)`` and Hugging Face labels."""


@dataclass(frozen=True)
class Windows:
    """The windows of a batch of documents (see the module docstring for the rule).

    ``tokens``: int64 ``[M, W]``, right-padded with 0 (``W`` = the longest window);
    ``targets``: int64 ``[M, W]``, the next token of each position, ``IGNORE`` where a position
    predicts nothing; ``document``: int64 ``[M]``, the batch row each window comes from
    (non-decreasing); ``lengths``: int64 ``[M]`` tokens per window (>= 2); ``new``: bool
    ``[M, W]``, positions holding a token no earlier window of the document held (each of a
    document's tokens is ``new`` exactly once); ``num_documents``: ``B``.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    document: torch.Tensor
    lengths: torch.Tensor
    new: torch.Tensor
    num_documents: int

    @property
    def one_per_document(self) -> bool:
        """True when no document was cut (``M == B``)."""
        return int(self.document.shape[0]) == self.num_documents


def _check_batch(tokens: torch.Tensor, lengths: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or not isinstance(lengths, torch.Tensor):
        raise TypeError(
            f"tokens and lengths must be tensors, got {type(tokens).__name__} and "
            f"{type(lengths).__name__}"
        )
    if tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer [B, T], got {tokens.dtype} {list(tokens.shape)}")
    if lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"lengths must be [B] = [{tokens.shape[0]}], got shape {list(lengths.shape)}"
        )
    if lengths.numel() == 0:
        raise ValueError("the batch holds no documents")
    shortest, longest = int(lengths.min()), int(lengths.max())
    if shortest < 2:
        raise ValueError(
            f"a document of {shortest} token(s): each needs at least 2 (one next-token target)"
        )
    if longest > tokens.shape[1]:
        raise ValueError(f"a length of {longest} exceeds the {tokens.shape[1]} token columns")


def make_windows(
    tokens: torch.Tensor, lengths: torch.Tensor, max_tokens: int | None = None
) -> Windows:
    """Cut each document into windows of at most ``max_tokens`` tokens sharing one token.

    ``tokens`` int ``[B, T]`` right-padded, ``lengths`` int ``[B]`` (each in ``[2, T]``),
    ``max_tokens`` >= 2 or None (one window per document). Returns ``Windows`` on the tokens'
    device; window ``k`` of a document starts at token ``k * (max_tokens - 1)``.
    """
    _check_batch(tokens, lengths)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2
    ):
        raise ValueError(f"max_tokens must be an int >= 2 or None, got {max_tokens!r}")
    device = tokens.device
    lengths = lengths.to(device=device, dtype=torch.int64)
    batch = int(lengths.shape[0])
    targets_per_doc = lengths - 1
    stride = int(targets_per_doc.max()) if max_tokens is None else max_tokens - 1
    count = (targets_per_doc + stride - 1) // stride  # windows per document, >= 1
    document = torch.repeat_interleave(torch.arange(batch, device=device), count)
    first = torch.cumsum(count, 0) - count
    k = torch.arange(document.shape[0], device=device) - first[document]
    start = k * stride
    win_lengths = torch.minimum(lengths[document] - start, torch.full_like(start, stride + 1))
    width = int(win_lengths.max())
    pos = torch.arange(width, device=device)
    inside = pos[None, :] < win_lengths[:, None]
    column = (start[:, None] + pos[None, :]).clamp_max(tokens.shape[1] - 1)
    gathered = tokens.to(torch.int64)[document[:, None], column]
    win_tokens = torch.where(inside, gathered, torch.zeros_like(gathered))
    predicts = pos[None, :] < (win_lengths[:, None] - 1)
    next_tokens = torch.cat([win_tokens[:, 1:], torch.zeros_like(win_tokens[:, :1])], dim=1)
    targets = torch.where(predicts, next_tokens, torch.full_like(next_tokens, IGNORE))
    new = inside & ((pos[None, :] > 0) | (k[:, None] == 0))
    return Windows(win_tokens, targets, document, win_lengths, new, batch)


def lm_logits(output: object, windows: Windows | None = None) -> torch.Tensor:
    """The ``[M, W, V]`` logits of a causal LM's output: a tensor, an object with ``.logits``
    (Hugging Face), or a tuple whose first item is the logits. Checked against ``windows``."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, tuple | list) and logits:
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the language model returned {type(output).__name__}; expected [B, T, V] logits "
            "(a tensor, an output with .logits, or a tuple starting with them)"
        )
    expected = None if windows is None else tuple(windows.tokens.shape)
    if logits.ndim != 3 or (expected is not None and tuple(logits.shape[:2]) != expected):
        want = "[B, T, V]" if expected is None else f"[{expected[0]}, {expected[1]}, V]"
        raise ValueError(
            f"the language model must map [B, T] tokens to {want} logits; got shape "
            f"{list(logits.shape)}"
        )
    return logits


def token_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of every position, float32 ``[M, W]`` (0 where ``targets == IGNORE``).

    ``logits`` ``[M, W, V]``, ``targets`` int64 ``[M, W]``; ``loss_fn(logits [N, V], targets
    [N]) -> [N]`` a per-token loss (default: softmax cross-entropy in float32). It sees every
    position, with ``IGNORE`` targets replaced by 0 and masked out afterwards, so the shapes do
    not depend on the data (which ``torch.func`` needs for gradient norms).
    """
    m, w, v = logits.shape
    keep = targets != IGNORE
    safe = torch.where(keep, targets, torch.zeros_like(targets)).reshape(-1)
    flat = logits.reshape(m * w, v)
    if loss_fn is None:
        per = F.cross_entropy(flat.float(), safe, reduction="none")
    else:
        per = loss_fn(flat, safe).float()
    return per.reshape(m, w) * keep


def document_losses(per_token: torch.Tensor, windows: Windows) -> torch.Tensor:
    """Each document's mean loss over its target tokens, float32 ``[B]``.

    ``per_token`` ``[M, W]`` from ``token_losses`` (0 where nothing is predicted).
    """
    counts = (windows.targets != IGNORE).sum(1).to(per_token.dtype)
    batch = windows.num_documents
    total = per_token.new_zeros(batch).index_add(0, windows.document, per_token.sum(1))
    targets = per_token.new_zeros(batch).index_add(0, windows.document, counts)
    return total / targets


def pool_windows(hidden: torch.Tensor, windows: Windows) -> torch.Tensor:
    """Mean of a layer's output over each document's tokens, ``[B, d]``.

    ``hidden``: ``[M, W, d]`` (one vector per position; every token of a document counts
    once, shared window tokens included once) or ``[M, d]`` (one vector per window; windows
    weighted by the tokens new in them).
    """
    new = windows.new.to(hidden.dtype)
    if hidden.ndim == 3 and tuple(hidden.shape[:2]) == tuple(windows.new.shape):
        summed = (hidden * new[:, :, None]).sum(1)
    elif hidden.ndim == 2 and hidden.shape[0] == windows.new.shape[0]:
        summed = hidden * new.sum(1, keepdim=True)
    else:
        raise ValueError(
            f"cannot pool an embedding of shape {list(hidden.shape)} over windows "
            f"{list(windows.new.shape)}: expected [M, W, d] or [M, d] with M = "
            f"{windows.new.shape[0]}"
        )
    batch = windows.num_documents
    total = hidden.new_zeros((batch, hidden.shape[-1])).index_add(0, windows.document, summed)
    tokens = new.new_zeros(batch).index_add(0, windows.document, new.sum(1))
    return total / tokens[:, None]


def document_nll(
    model: nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    *,
    max_tokens: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean next-token loss of each document under a causal LM, float32 ``[B]`` (nats).

    ``model`` maps int64 ``[M, W]`` to ``[M, W, V]`` logits (see ``lm_logits``); ``tokens``
    ``[B, T]`` right-padded, ``lengths`` ``[B]``; windows as in the module docstring. Runs in the
    caller's grad mode (wrap in ``torch.no_grad()`` to score). The scoring job's ``nll`` is this.
    """
    windows = make_windows(tokens, lengths, max_tokens)
    logits = lm_logits(model(windows.tokens), windows)
    return document_losses(token_losses(logits, windows.targets, loss_fn), windows)
