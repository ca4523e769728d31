"""JEST's joint-example sampler and its per-example reduction (docs/jest.md), in torch.

Everything here is a pure function of tensors and a ``torch.Generator``: it runs on the device the
scores live on and never moves data to the host, so an in-step selector built on it adds no host
synchronisation. Scores are "higher = more wanted" throughout.

* :func:`sample_per_example` is JEST with per-example losses: ``S`` is diagonal, so the chunked
  sampler reduces exactly to one Gumbel-top-b over ``s_i / temperature``.
* :func:`joint_sample` is the chunked sampler over a ``[B, B]`` joint score matrix ``S``:
  chunk 1 from the softmax of ``diag(S)`` (or uniform), each next chunk by Gumbel-top-k over every
  candidate's conditional gain ``S_kk + sum_{j in sel} (S_kj + S_jk)`` given the chunks drawn so
  far, updated incrementally (``O(B)`` per selected example, ``O(B b)`` in all).

Deviation from the paper, on purpose: the selected batch size ``b`` is split into ``n_chunks``
chunks whose sizes differ by at most one, so exactly ``b`` examples come back (the paper takes
``floor(b / n_chunks)`` per chunk and silently trains on ``n_chunks * floor(b / n_chunks)``).
"""

from __future__ import annotations

import math

import torch

from winnow.selection.choose_torch import gumbel_top_k_torch

__all__ = [
    "LEARNABILITY_MODES",
    "batch_size_for",
    "chunk_sizes",
    "joint_learnability",
    "joint_sample",
    "frozen_pair_losses",
    "jest_scores",
    "sample_per_example",
]

#: ``S`` from learner scores ``L`` and reference scores ``R`` (matrices or per-example vectors).
LEARNABILITY_MODES = ("learnability", "easy_reference", "hard_learner")

# Pairs that float rounding pushes just below an integer (0.9 * 320 = 287.99999...) still count.
_RATIO_EPS = 1e-9


def batch_size_for(super_batch: int, filter_ratio: float) -> int:
    """Selected batch size ``b = floor(B * (1 - f))`` for a super-batch of ``B`` rows.

    Raises ``ValueError`` if ``f`` is outside ``(0, 1)`` or the result would be empty.
    """
    if not 0.0 < filter_ratio < 1.0:
        raise ValueError(f"filter_ratio must be in (0, 1), got {filter_ratio!r}")
    b = int(math.floor(super_batch * (1.0 - filter_ratio) + _RATIO_EPS))
    if b < 1:
        raise ValueError(
            f"super-batch of {super_batch} rows is too small for filter_ratio={filter_ratio}: "
            f"the selected batch floor({super_batch} * (1 - {filter_ratio})) would be empty"
        )
    return b


def chunk_sizes(batch_size: int, n_chunks: int) -> list[int]:
    """Split ``batch_size`` into ``min(n_chunks, batch_size)`` chunk sizes differing by <= 1."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    n = min(n_chunks, batch_size)
    base, extra = divmod(batch_size, n)
    return [base + 1] * extra + [base] * (n - extra)


def jest_scores(
    learner: torch.Tensor, reference: torch.Tensor | None, mode: str = "learnability"
) -> torch.Tensor:
    """JEST's score from learner and reference losses (same shape; higher = more wanted).

    ``learnability``: ``learner - reference``; ``easy_reference``: ``-reference``;
    ``hard_learner``: ``learner`` (``reference`` may then be ``None``).
    """
    if mode not in LEARNABILITY_MODES:
        raise ValueError(f"mode must be one of {LEARNABILITY_MODES}, got {mode!r}")
    if mode == "hard_learner":
        return learner
    if reference is None:
        raise ValueError(f"mode {mode!r} needs reference losses, got None")
    if reference.shape != learner.shape:
        raise ValueError(
            f"learner losses have shape {tuple(learner.shape)} but reference losses have "
            f"shape {tuple(reference.shape)}; expected equal shapes"
        )
    return -reference if mode == "easy_reference" else learner - reference


def _float(x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got dtype {x.dtype}")
    # Half precision sums of many pair scores lose the differences the sampler ranks by.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sample_per_example(
    scores: torch.Tensor,
    batch_size: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """JEST for per-example losses: ``batch_size`` rows drawn ∝ ``exp(s_i / temperature)``.

    ``scores``: ``[B]`` float, any device (e.g. learner minus reference loss). ``temperature=0``
    gives the deterministic top-b (RHO-LOSS); ``inf`` gives uniform. Returns int64 rows ``[b]``.
    """
    if scores.dim() != 1:
        raise ValueError(f"per-example scores must be 1-D [B], got shape {tuple(scores.shape)}")
    _check_temperature(temperature)
    if batch_size > scores.shape[0]:
        raise ValueError(
            f"super-batch of {scores.shape[0]} rows is smaller than the batch of {batch_size}"
        )
    scores = _float(scores)
    if temperature == 0.0:
        return torch.topk(scores, batch_size, sorted=True).indices
    if math.isinf(temperature):
        return gumbel_top_k_torch(scores, batch_size, beta=0.0, generator=generator)
    return gumbel_top_k_torch(scores, batch_size, beta=1.0 / temperature, generator=generator)


def joint_sample(
    scores: torch.Tensor,
    batch_size: int,
    *,
    n_chunks: int = 16,
    temperature: float = 1.0,
    first_chunk: str = "softmax",
    normalize_logits: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """JEST's chunked joint sampler over a ``[B, B]`` score matrix ``S`` (higher = more wanted).

    Builds a batch whose joint score ``sum_{i,j in batch} S_ij`` is high: chunk 1 is drawn from
    ``softmax(diag(S) / temperature)`` (``first_chunk="uniform"``: uniformly, as the public port
    does); every next chunk by Gumbel-top-k over the not-yet-selected candidates' logits
    ``(S_kk + sum_{j in sel} (S_kj + S_jk)) / temperature``, divided further by ``2|sel| + 1``
    when ``normalize_logits`` (the port's normalisation; off by default, as in the paper).

    The conditional gains are kept in one ``[B]`` vector and updated with the rows and columns
    of each new chunk only: ``O(B)`` work per selected example, never the full sum again.
    Gumbel-top-k needs no ``exp``, so large logits cannot overflow; selected rows are masked with
    ``-inf``. Returns int64 rows ``[batch_size]`` on ``scores.device`` in draw order.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"joint scores must be a square [B, B] matrix, got {tuple(scores.shape)}")
    if first_chunk not in ("softmax", "uniform"):
        raise ValueError(f"first_chunk must be 'softmax' or 'uniform', got {first_chunk!r}")
    _check_temperature(temperature)
    n = scores.shape[0]
    if batch_size > n:
        raise ValueError(f"super-batch of {n} rows is smaller than the batch of {batch_size}")
    sizes = chunk_sizes(batch_size, n_chunks)
    s = _float(scores)
    diag = torch.diagonal(s)
    gain = torch.zeros_like(diag)
    taken = torch.zeros(n, dtype=torch.bool, device=s.device)
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    picked: list[torch.Tensor] = []
    n_selected = 0
    for c, size in enumerate(sizes):
        if c == 0 and first_chunk == "uniform":
            logits = torch.zeros_like(diag)
        else:
            logits = diag + gain
            if normalize_logits:
                logits = logits / (2 * n_selected + 1)
            logits = _tempered(logits, temperature)
        masked = torch.where(taken, neg_inf, logits)
        if temperature == 0.0 and not (c == 0 and first_chunk == "uniform"):
            new = torch.topk(masked, size, sorted=True).indices
        else:
            new = gumbel_top_k_torch(masked, size, generator=generator)
        picked.append(new)
        taken[new] = True
        n_selected += size
        if c + 1 < len(sizes):
            gain = gain + s.index_select(1, new).sum(1) + s.index_select(0, new).sum(0)
    return torch.cat(picked)


def frozen_pair_losses(
    x_emb: torch.Tensor, y_emb: torch.Tensor, *, temperature: float, bias: float
) -> torch.Tensor:
    """A frozen reference's SigLIP pair losses ``[B, B]`` from its stored embeddings, no grad.

    The same values as :func:`selection.losses.sigmoid_pair_losses` (``A_ij = log(1 +
    exp(-z_ij (t x_i.y_j + b)))``), computed in about a quarter of the time at ``B = 4096``:
    ``softplus(logits)`` everywhere with the diagonal (``z = +1``) patched, so the ``B x B``
    matrix is touched twice instead of five times. Never differentiated (in-place ops).
    """
    if x_emb.dim() != 2 or x_emb.shape != y_emb.shape:
        raise ValueError(
            f"embeddings must both be [B, D] with equal shapes, got {tuple(x_emb.shape)} and "
            f"{tuple(y_emb.shape)}"
        )
    with torch.no_grad():
        logits = torch.mm(x_emb, y_emb.T).mul_(temperature).add_(bias)
        diag = logits.diagonal().clone()
        out = torch.nn.functional.softplus(logits)
        out.diagonal().copy_(torch.nn.functional.softplus(-diag))
    return out


def joint_learnability(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``sum_{i,j in rows} S_ij`` (0-d tensor): the joint score of a selected batch."""
    sub = scores.index_select(0, rows).index_select(1, rows)
    return sub.sum()


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature == 0.0:
        return logits  # greedy: the caller takes the plain top-k
    if math.isinf(temperature):
        return torch.zeros_like(logits)
    return logits / temperature if temperature != 1.0 else logits


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0.0:
        raise ValueError(
            f"temperature must be >= 0 (0 = greedy, inf = uniform), got {temperature!r}"
        )
