"""Per-example difficulty scores from model outputs, and the forgetting-event counter.

Functions take logits ``[B, C]`` (torch, any device) and return ``[B]`` on the same device; they
are forward-only and meant to run under ``torch.no_grad``. Direction, for every score here:
**higher = harder / less certain / more informative**, except ``margin`` (lower = harder).
See docs/static-pruning.md (EL2N, forgetting), docs/importance-sampling.md (last-layer
bound), docs/rho-loss.md (learnability = RHO-LOSS score).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from winnow.selection._state import check_state, make_state

__all__ = [
    "ForgettingTracker",
    "el2n",
    "entropy",
    "last_layer_grad_norm",
    "learnability",
    "margin",
]


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, C] with C >= 2, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    return logits


def _one_hot_like(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.device != logits.device:
        raise ValueError(
            f"logits and targets are on different devices: {logits.device} vs {targets.device}"
        )
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"probability targets must be {tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        return targets.to(logits.dtype)
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must be [B] with B={logits.shape[0]}, got {tuple(targets.shape)}"
        )
    return torch.nn.functional.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)


def el2n(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """EL2N ``||softmax(z_i) - onehot(y_i)||_2``, ``[B]`` (Paul et al. 2021). Higher = harder.

    Also the last-layer gradient bound of softmax cross-entropy (``||dl/dz||``), as used by
    RHO-LOSS's ``gradnorm_ub`` baseline and Katharopoulos & Fleuret's importance sampling.
    ``targets``: int ``[B]`` or probabilities ``[B, C]``. Average over runs for Data Diet.
    """
    logits = _check_logits(logits)
    return (torch.softmax(logits, dim=1) - _one_hot_like(logits, targets)).norm(dim=1)


def last_layer_grad_norm(
    logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor, *, bias: bool = True
) -> torch.Tensor:
    """Exact per-example gradient norm of a final ``Linear`` layer under softmax CE, ``[B]``.

    ``||p_i - y_i|| * sqrt(||h_i||^2 + 1)`` with ``h_i`` = ``features`` ``[B, D]`` (the layer's
    input); drop the ``+1`` with ``bias=False`` (docs/importance-sampling.md).
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(
            f"features must be a [B, D] tensor, got {getattr(features, 'shape', None)}"
        )
    if features.shape[0] != logits.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows, logits has {logits.shape[0]}")
    sq = features.to(logits.dtype).square().sum(1) + (1.0 if bias else 0.0)
    return el2n(logits, targets) * sq.sqrt()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``-sum_c p_c log p_c`` in nats, ``[B]``. Higher = less certain."""
    logp = torch.log_softmax(_check_logits(logits), dim=1)
    return -(logp.exp() * logp).sum(1)


def margin(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Probability margin, ``[B]``; **lower = harder**.

    Without ``targets``: ``p_top1 - p_top2`` (uncertainty sampling, in ``[0, 1]``). With int
    ``targets`` ``[B]``: ``p_y - max_{c != y} p_c`` (in ``[-1, 1]``; negative = misclassified).
    """
    p = torch.softmax(_check_logits(logits), dim=1)
    if targets is None:
        top2 = p.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]
    if isinstance(targets, torch.Tensor) and targets.is_floating_point():
        raise TypeError("margin needs integer class targets, got probabilities")
    onehot = _one_hot_like(logits, targets)
    p_true = (p * onehot).sum(1)
    p_other = p.masked_fill(onehot.bool(), float("-inf")).max(dim=1).values
    return p_true - p_other


def _ids_to_numpy(ids, name: str = "ids") -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


def _check_id_range(ids: np.ndarray, n: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)]
        raise ValueError(f"{bad.size} id(s) outside [0, {n}), e.g. {bad[:5].tolist()}")


def learnability(ids, learner_losses, reference_values):
    """RHO-LOSS / JEST learnability ``learner_loss - reference_loss``, aligned by ``example_id``.

    Args:
        ids: int ``[B]`` example ids of the batch (numpy or torch; a device tensor is copied to
            the host, so keep ids on the CPU in a training loop to avoid a sync).
        learner_losses: ``[B]`` current per-example losses (numpy, or torch on any device).
        reference_values: dense ``[N]`` reference (irreducible) losses indexed by example id,
            NaN where missing; numpy or torch.
    Returns:
        ``[B]`` in the type/device of ``learner_losses``. Higher = more worth training on.
    Raises ``ValueError`` naming how many ids have no reference value (NaN) or are out of range.
    """
    ids_np = _ids_to_numpy(ids)
    n_batch = ids_np.shape[0]
    if len(learner_losses) != n_batch:
        raise ValueError(
            f"ids has length {n_batch} but learner_losses has length {len(learner_losses)}"
        )
    if getattr(reference_values, "ndim", None) != 1:
        raise ValueError("reference_values must be a dense 1-D array indexed by example id")
    _check_id_range(ids_np, reference_values.shape[0])
    if isinstance(reference_values, torch.Tensor):
        ref = reference_values.detach()[torch.from_numpy(ids_np).to(reference_values.device)]
        missing_mask = torch.isnan(ref).cpu().numpy()
    else:
        ref = np.asarray(reference_values)[ids_np]
        missing_mask = np.isnan(ref)
    if missing_mask.any():
        missing = ids_np[missing_mask]
        raise ValueError(
            f"{missing.size} of {n_batch} ids have no reference value (NaN), "
            f"e.g. ids {missing[:5].tolist()}"
        )
    if isinstance(learner_losses, torch.Tensor):
        ref_t = (
            ref if isinstance(ref, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ref))
        )
        return learner_losses - ref_t.to(device=learner_losses.device, dtype=learner_losses.dtype)
    ref_np = ref.cpu().numpy() if isinstance(ref, torch.Tensor) else ref
    return np.asarray(learner_losses) - ref_np


class ForgettingTracker:
    """Forgetting events per example (Toneva et al. 2019; docs/static-pruning.md).

    Feed it the 0/1 correctness of each example every time it appears in a training batch
    (the update's own forward). A *forgetting event* is correct -> incorrect between consecutive
    appearances; a *learning event* is incorrect -> correct. State: 1 + 1 + 1 + 4 + 4 bytes per
    example (10^8 examples ~= 1.1 GB). ``update`` is vectorised; an id repeated inside one batch
    is applied in order of appearance.
    """

    def __init__(self, num_examples: int):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise TypeError(f"num_examples must be an int, got {num_examples!r}")
        if num_examples <= 0:
            raise ValueError(f"num_examples must be > 0, got {num_examples}")
        n = int(num_examples)
        self.num_examples = n
        self._last_correct = np.zeros(n, dtype=bool)
        self._seen = np.zeros(n, dtype=bool)
        self._learned = np.zeros(n, dtype=bool)
        self._forgets = np.zeros(n, dtype=np.int32)
        self._presentations = np.zeros(n, dtype=np.int32)

    def update(self, ids, correct) -> None:
        """Record one batch: ``ids`` int ``[B]``, ``correct`` bool/0-1 ``[B]`` (numpy or torch)."""
        ids_np = _ids_to_numpy(ids)
        if isinstance(correct, torch.Tensor):
            correct = correct.detach().cpu().numpy()
        ok = np.asarray(correct)
        if ok.shape != ids_np.shape:
            raise ValueError(f"ids has shape {ids_np.shape} but correct has shape {ok.shape}")
        if ok.dtype != np.bool_:
            if not np.all((ok == 0) | (ok == 1)):
                raise ValueError("correct must be boolean or 0/1")
            ok = ok.astype(bool)
        _check_id_range(ids_np, self.num_examples)
        # Apply repeated ids in rounds: round r holds the r-th occurrence of each id.
        order = np.argsort(ids_np, kind="stable")
        sorted_ids = ids_np[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        occurrence = np.arange(sorted_ids.size) - np.repeat(
            starts, np.diff(np.r_[starts, sorted_ids.size])
        )
        for r in range(int(occurrence.max()) + 1 if occurrence.size else 0):
            pick = order[occurrence == r]
            self._apply(ids_np[pick], ok[pick])

    def _apply(self, ids: np.ndarray, ok: np.ndarray) -> None:
        forgot = self._seen[ids] & self._last_correct[ids] & ~ok
        self._forgets[ids] += forgot
        self._presentations[ids] += 1
        self._learned[ids] |= ok
        self._last_correct[ids] = ok
        self._seen[ids] = True

    @property
    def forgetting_counts(self) -> np.ndarray:
        """Raw forgetting events, int32 ``[N]`` (a copy)."""
        return self._forgets.copy()

    @property
    def never_learned(self) -> np.ndarray:
        """bool ``[N]``: presented at least once and never classified correctly."""
        return self._seen & ~self._learned

    def scores(self, *, never_learned: str = "presentations", unseen: float = np.nan) -> np.ndarray:
        """Forgetting scores, float64 ``[N]``; higher = more forgettable (harder).

        Examples never classified correctly get, per ``never_learned``: ``"presentations"``
        (their number of presentations, as upstream ``npresentations``; the run's maximum
        possible count), ``"max"`` (the largest count seen in this run, plus one) or ``"inf"``
        (data_diet). Examples never presented get ``unseen`` (NaN by default, so a chooser
        refuses them until you decide). Sum ``scores()`` over runs for the paper's score.
        """
        out = self._forgets.astype(np.float64)
        nl = self.never_learned
        if never_learned == "presentations":
            out[nl] = self._presentations[nl]
        elif never_learned == "max":
            out[nl] = float(self._forgets.max()) + 1.0
        elif never_learned == "inf":
            out[nl] = np.inf
        else:
            raise ValueError(
                f"never_learned must be 'presentations', 'max' or 'inf', got {never_learned!r}"
            )
        out[~self._seen] = unseen
        return out

    def state_dict(self) -> dict[str, Any]:
        """The tracker's arrays as tensors, in the state convention of docs/conventions.md."""
        return make_state(
            "ForgettingTracker",
            _FORGETTING_VERSION,
            {"num_examples": self.num_examples},
            **{key: torch.from_numpy(getattr(self, f"_{key}").copy()) for key in _FORGETTING_KEYS},
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses another N or arrays of the wrong shape."""
        check_state(
            state,
            kind="ForgettingTracker",
            version=_FORGETTING_VERSION,
            config={"num_examples": self.num_examples},
            required=_FORGETTING_KEYS,
        )
        arrays = {}
        for key in _FORGETTING_KEYS:
            value = state[key]
            array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if array.shape != (self.num_examples,):
                raise ValueError(
                    f"ForgettingTracker state {key!r} has shape {array.shape}; expected "
                    f"({self.num_examples},)"
                )
            arrays[key] = array.astype(getattr(self, f"_{key}").dtype).copy()
        for key, array in arrays.items():
            setattr(self, f"_{key}", array)


_FORGETTING_VERSION = 2
_FORGETTING_KEYS = ("last_correct", "seen", "learned", "forgets", "presentations")
