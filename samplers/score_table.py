"""The score table shared by epoch samplers: one float per example, fed by training feedback.

Feedback arrives every step as ``update(ids, losses)`` with tensors on any device. Steps only
append the (detached) tensors to a pending list, so no step waits for the device; the pending
feedback is *settled* into the table at epoch boundaries (``flush``, called by the samplers'
``set_epoch``): one device-to-host copy, one all-gather across DDP ranks (ids as int64), one
vectorised check, one scatter. Between flushes the table is a frozen snapshot, which is what
makes an epoch plan a pure function of (snapshot, seed, epoch) even while the DataLoader
prefetches and feedback keeps arriving.

Score direction is whatever the feeder writes; for InfoBatch it is the latest raw training loss
(higher = harder). Memory: 4 bytes (float32 score) + 1 byte (seen flag) per example.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from winnow.samplers._dist import gather_feedback_to_host
from winnow.selection._state import check_state, make_state, state_array

__all__ = ["ScoreTable"]

_K_NUM = "num_examples"
_K_VALUES = "values"
_K_SEEN = "seen"
_K_PENDING_IDS = "pending_ids"
_K_PENDING_LOSSES = "pending_losses"
_COMPACT = 64
_VERSION = 2


def _cat_on_last_device(parts: list[torch.Tensor]) -> torch.Tensor:
    device = parts[-1].device
    dtype = torch.promote_types(parts[0].dtype, parts[-1].dtype)
    return torch.cat([p.to(device, dtype) for p in parts])


def as_feedback_tensors(
    ids: Any, losses: Any, num_examples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one feedback call and return it as tensors.

    ``ids``: 1-D integer tensor/array ``[B]``; ``losses``: 1-D floating tensor/array ``[B]``
    (``reduction="none"``). Shapes and dtypes are always checked; ids on the CPU (as a
    DataLoader yields them) are also checked against ``[0, num_examples)`` here, which costs
    no device sync. Values on an accelerator (NaN/inf losses, ids moved to the device) are
    checked at settle time, so a step never forces a host-device synchronisation.
    """
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(np.asarray(ids))
    if not isinstance(losses, torch.Tensor):
        losses = torch.as_tensor(np.asarray(losses))
    if losses.ndim == 0:
        raise ValueError(
            "losses is a scalar (already reduced); pass per-example losses, e.g. "
            "F.cross_entropy(..., reduction='none')"
        )
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-D [batch], got shape {tuple(losses.shape)}")
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D [batch], got shape {tuple(ids.shape)}")
    if ids.shape[0] != losses.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} entries but losses has {losses.shape[0]}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    if not losses.dtype.is_floating_point:
        raise TypeError(f"losses must be a floating tensor, got dtype {losses.dtype}")
    if num_examples is not None and ids.device.type == "cpu" and ids.numel():
        bad = (ids < 0) | (ids >= num_examples)
        if bool(bad.any()):
            offending = torch.unique(ids[bad])[:10].tolist()
            raise ValueError(f"feedback ids must be in [0, {num_examples}); got {offending}")
    return ids, losses


class ScoreTable:
    """Latest score per example, ``float32 [num_examples]``, with deferred, DDP-gathered feedback.

    Args:
        num_examples: N; valid ids are ``0..N-1``.
        initial: value of never-seen entries (InfoBatch uses a constant so epoch 0 prunes
            nothing: no entry is strictly below the mean of equal values).

    Under DDP, ``flush`` and ``state_dict`` are collectives: call them on every rank.
    """

    def __init__(self, num_examples: int, *, initial: float = 0.0):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise TypeError(f"num_examples must be an int, got {type(num_examples).__name__}")
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if not np.isfinite(initial):
            raise ValueError(f"initial must be finite, got {initial}")
        self._n = int(num_examples)
        self._values = np.full(self._n, initial, dtype=np.float32)
        self._seen = np.zeros(self._n, dtype=bool)
        self._local_ids: list[torch.Tensor] = []
        self._local_losses: list[torch.Tensor] = []
        self._compacted = 0
        self._gathered: list[tuple[np.ndarray, np.ndarray]] = []
        # Set by load_state_dict, cleared by the epoch sampler once its own state is loaded.
        self.restored = False

    @property
    def num_examples(self) -> int:
        return self._n

    @property
    def values(self) -> np.ndarray:
        """The settled scores, ``float32 [N]`` (read-only view; pending feedback not included)."""
        view = self._values.view()
        view.flags.writeable = False
        return view

    @property
    def seen(self) -> np.ndarray:
        """``bool [N]``: True where a score was ever recorded (read-only view)."""
        view = self._seen.view()
        view.flags.writeable = False
        return view

    @property
    def num_pending(self) -> int:
        """Feedback entries recorded but not yet settled (this rank's plus already gathered)."""
        local = sum(int(i.shape[0]) for i in self._local_ids)
        return local + sum(len(i) for i, _ in self._gathered)

    def update(self, ids: Any, losses: Any) -> None:
        """Record per-example losses ``[B]`` for ``ids [B]`` (any device; detached, not copied).

        Overwrites on settle (latest wins; no averaging). Bad values (NaN/inf, ids out of
        ``[0, N)``) raise ``ValueError`` at the next :meth:`flush` and leave the table untouched.
        The caller must not modify ``losses`` in place afterwards.
        """
        ids, losses = as_feedback_tensors(ids, losses, self._n)
        self.record_checked(ids, losses)

    def record_checked(self, ids: torch.Tensor, losses: torch.Tensor) -> None:
        """:meth:`update` for tensors already checked by :func:`as_feedback_tensors`."""
        self._local_ids.append(ids)
        self._local_losses.append(losses.detach())
        if len(self._local_ids) - self._compacted >= _COMPACT:
            # Thousands of live small tensors make Python's cyclic GC rescan them all; fold
            # the newest ones into one tensor (an async device op, no sync).
            c = self._compacted
            self._local_ids[c:] = [_cat_on_last_device(self._local_ids[c:])]
            self._local_losses[c:] = [_cat_on_last_device(self._local_losses[c:])]
            self._compacted = c + 1

    def _gather_local(self) -> None:
        """Move this rank's pending feedback to the host, gathered from all ranks (collective,
        in bounded chunks)."""
        if self._local_ids:
            ids = torch.cat([i.to(torch.int64).cpu() for i in self._local_ids])
            losses = _cat_on_last_device(self._local_losses).to(torch.float32)
        else:
            ids = torch.zeros(0, dtype=torch.int64)
            losses = torch.zeros(0, dtype=torch.float32)
        self._gathered.extend(gather_feedback_to_host(ids, losses))
        self._local_ids, self._local_losses, self._compacted = [], [], 0

    def flush(self) -> int:
        """Settle all pending feedback into the table; returns the number of entries applied.

        Raises ``ValueError`` naming the offending ids/values if any id is outside ``[0, N)``
        or any loss is NaN/inf; then nothing is applied and the feedback stays pending
        (see :meth:`discard_pending`). A collective under DDP.
        """
        self._gather_local()
        if not self._gathered:
            return 0
        ids = np.concatenate([i for i, _ in self._gathered])
        losses = np.concatenate([v for _, v in self._gathered])
        bad_id = (ids < 0) | (ids >= self._n)
        if bad_id.any():
            offending = np.unique(ids[bad_id])[:10].tolist()
            raise ValueError(f"feedback ids must be in [0, {self._n}); got {offending}")
        bad = ~np.isfinite(losses)
        if bad.any():
            raise ValueError(
                f"feedback losses must be finite; got {losses[bad][:5].tolist()} for ids "
                f"{ids[bad][:5].tolist()} ({int(bad.sum())} bad entries)"
            )
        # NumPy assigns repeated indices in order, so the latest feedback for an id wins.
        self._values[ids] = losses
        self._seen[ids] = True
        self._gathered = []
        return len(ids)

    def discard_pending(self) -> None:
        """Drop feedback not yet settled (e.g. after :meth:`flush` rejected it)."""
        self._local_ids, self._local_losses, self._compacted = [], [], 0
        self._gathered = []

    def seed(self, values: Any, ids: Any = None) -> None:
        """Set scores from a stored run: ``values [N]`` aligned by example_id, or ``values [M]``
        for ``ids [M]``. NaN entries mean "no score" and are skipped. Pending feedback is kept.
        ``ScoreStore.read(run, metric)[0]`` is such an aligned array."""
        values = np.asarray(values)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(
                f"values must be a 1-D numeric array, got {values.dtype} {values.shape}"
            )
        if np.isinf(values).any():
            raise ValueError("values must be finite or NaN (missing), got inf")
        have = ~np.isnan(values)
        if ids is None:
            if len(values) != self._n:
                raise ValueError(
                    f"values has {len(values)} entries but the table has {self._n} examples; "
                    "pass ids= for a partial seed"
                )
            self._values[have] = values[have]
            self._seen |= have
            return
        ids = np.asarray(ids)
        if ids.shape != values.shape or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"ids must be integers of the same shape as values {values.shape}, "
                f"got {ids.dtype} {ids.shape}"
            )
        if len(ids) and (ids.min() < 0 or ids.max() >= self._n):
            raise ValueError(f"ids must be in [0, {self._n}), got range [{ids.min()}, {ids.max()}]")
        self._values[ids[have]] = values[have]
        self._seen[ids[have]] = True

    def state_dict(self) -> dict[str, Any]:
        """Scores, seen flags and pending feedback as tensors (a collective under DDP).

        Pending feedback is gathered from all ranks first, so every rank's state is the same.
        Follows the state convention of docs/conventions.md (``torch.load`` defaults read it).
        """
        self._gather_local()
        ids = [i for i, _ in self._gathered]
        losses = [v for _, v in self._gathered]
        return make_state(
            "ScoreTable",
            _VERSION,
            {_K_NUM: self._n},
            **{
                _K_VALUES: torch.from_numpy(self._values.copy()),
                _K_SEEN: torch.from_numpy(self._seen.copy()),
                _K_PENDING_IDS: torch.from_numpy(
                    np.concatenate(ids) if ids else np.zeros(0, np.int64)
                ),
                _K_PENDING_LOSSES: torch.from_numpy(
                    np.concatenate(losses) if losses else np.zeros(0, np.float32)
                ),
            },
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; refuses another N, bad shapes or non-finite scores.

        Nothing changes unless the whole state is valid. Marks the table as *restored*: an
        epoch sampler sharing it then holds a ``set_epoch`` until its own state is loaded
        (the resume path of docs/conventions.md), so restored pending feedback is settled
        exactly where the interrupted run would have settled it.
        """
        check_state(
            state,
            kind="ScoreTable",
            version=_VERSION,
            config={_K_NUM: self._n},
            required=(_K_VALUES, _K_SEEN, _K_PENDING_IDS, _K_PENDING_LOSSES),
        )
        def entry(key: str, dtype: Any) -> np.ndarray:
            return state_array(state[key], dtype, what=f"ScoreTable state {key!r}")

        values = entry(_K_VALUES, np.float32)
        seen = entry(_K_SEEN, np.bool_)
        if values.shape != (self._n,) or seen.shape != (self._n,):
            raise ValueError(
                f"ScoreTable state arrays must have shape ({self._n},), got values "
                f"{values.shape} and seen {seen.shape}"
            )
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            raise ValueError(
                f"ScoreTable state has {len(bad)} non-finite scores (ids {bad[:5].tolist()}); "
                "expected finite values"
            )
        pending = entry(_K_PENDING_IDS, np.int64)
        pending_losses = entry(_K_PENDING_LOSSES, np.float32)
        if pending.ndim != 1 or pending.shape != pending_losses.shape:
            raise ValueError(
                f"ScoreTable state: pending ids {pending.shape} and losses "
                f"{pending_losses.shape} must be 1-D of one length"
            )
        self._values = values.copy()
        self._seen = seen.copy()
        self._local_ids, self._local_losses, self._compacted = [], [], 0
        self._gathered = [(pending.copy(), pending_losses.copy())] if len(pending) else []
        self.restored = True
