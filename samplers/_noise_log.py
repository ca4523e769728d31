"""The bookkeeping half of :class:`winnow.samplers.NoiseScaleMonitor`: per-step squared norms
kept on their device, settled in chunks into bias-corrected EMAs, logged into the store.

Each measured step leaves one ``[2]`` float64 tensor ``(|G_small|^2, |G_big|^2)`` on the
gradients' device plus its two batch sizes (host ints). Settling copies every pending pair to
the host at once (one sync per ``flush_steps`` steps, not one per step), turns each pair into the
unbiased two-batch estimates (docs/noise-scale.md; the per-example estimator is the case
``b_small = 1``), feeds them in step order to a :class:`NoiseScaleTracker` and logs its smoothed
estimate once per ``log_every`` steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from winnow.selection.noise_scale import (
    NoiseScaleEstimate,
    NoiseScaleTracker,
    noise_scale_two_batches,
)

__all__ = ["NoiseLog"]

_FLUSH_STEPS = 1000


def two_batch_estimate(
    small: float, big: float, b_small: float, b_big: float
) -> NoiseScaleEstimate:
    """The two-batch estimates; NaN parts for a step with non-finite or negative norms (an
    overflowing mixed-precision step), which the tracker then skips and counts."""
    if not (math.isfinite(small) and math.isfinite(big) and small >= 0 and big >= 0):
        return NoiseScaleEstimate(math.nan, math.nan)
    return noise_scale_two_batches(small, big, b_small, b_big)


class NoiseLog:
    """Pending device norms, the tracker, and the rows logged so far (and their writer)."""

    def __init__(self, *, beta: float, log_every: int, writer: Any = None):
        self.tracker = NoiseScaleTracker(beta)
        self.log_every = log_every
        self.writer = writer
        self.flush_steps = int(getattr(writer, "flush_steps", _FLUSH_STEPS))
        self.next_log = log_every - 1
        self.last_step = -1  # the last step settled into the tracker
        self.last_logged = -1
        self.pending: list[tuple[int, torch.Tensor, float, float, str]] = []
        self.rows: list[tuple[int, float, float, float, int, str]] = []  # all logged rows
        self.unwritten = 0  # trailing rows of ``rows`` not yet written
        self.stale_from: int | None = 0  # the first write removes stored rows from here on
        self.last_batch: tuple[int, str] | None = None

    def add(self, step: int, pair: torch.Tensor, b_small: float, b_big: float, name: str) -> None:
        self.pending.append((step, pair, float(b_small), float(b_big), name))
        if len(self.pending) >= self.flush_steps:
            self.flush()

    def settle(self) -> None:
        """Copy the pending norms to the host (one sync) and update the tracker in order."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        device = pending[0][1].device
        values = torch.stack([p[1].to(device) for p in pending]).cpu().numpy()
        for (step, _, b_small, b_big, name), (small, big) in zip(pending, values, strict=True):
            self.tracker.update(two_batch_estimate(float(small), float(big), b_small, b_big))
            self.last_step, self.last_batch = step, (int(b_big), name)
            if step >= self.next_log:
                self._log(step)
                # the next window's last step: log_every - 1, 2 log_every - 1, ...
                self.next_log = ((step + 1) // self.log_every + 1) * self.log_every - 1

    def _log(self, step: int) -> None:
        est, (batch, name) = self.tracker.estimate, self.last_batch
        self.rows.append((step, est.b_simple, est.grad_sq, est.trace_cov, batch, name))
        self.unwritten += 1
        self.last_logged = step

    def flush(self, *, final: bool = False) -> None:
        """Settle, then write the rows logged since the last write. ``final`` also logs the
        last settled step when it was not logged (a run shorter than ``log_every``)."""
        self.settle()
        if final and self.last_batch is not None and self.last_logged != self.last_step:
            self._log(self.last_step)
        if self.writer is None or not self.unwritten:
            return
        rows, self.unwritten = self.rows[-self.unwritten :], 0
        if self.stale_from is not None:
            discard = getattr(self.writer, "discard", None)
            if callable(discard):
                discard("noise_scale", min(self.stale_from, rows[0][0]))
            self.stale_from = None
        columns = list(zip(*rows, strict=True))
        self.writer.write_noise_scale(
            np.asarray(columns[0], dtype=np.int64),
            np.asarray(columns[1], dtype=np.float64),
            np.asarray(columns[2], dtype=np.float64),
            np.asarray(columns[3], dtype=np.float64),
            np.asarray(columns[4], dtype=np.int64),
            np.asarray(columns[5], dtype=object),
        )

    def history(self) -> dict[str, np.ndarray]:
        """Every logged row as columns (host arrays)."""
        columns = list(zip(*self.rows, strict=True)) or [()] * 6
        return {
            "step": np.asarray(columns[0], dtype=np.int64),
            "b_simple": np.asarray(columns[1], dtype=np.float64),
            "grad_sq": np.asarray(columns[2], dtype=np.float64),
            "trace_cov": np.asarray(columns[3], dtype=np.float64),
            "batch_size": np.asarray(columns[4], dtype=np.int64),
            "estimator": np.asarray(columns[5], dtype=object),
        }
