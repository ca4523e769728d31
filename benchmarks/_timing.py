"""Timing shared by the benchmarks: every case measured round-robin, so load drifts on a shared
machine hit each case alike and ratios between cases stay meaningful."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["interleaved_times"]


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each call, running every function once per round for ``repeats`` rounds.

    With ``warmup``, each function runs once first, untimed (allocator, tracing, caches).
    ``clock``: wall time by default; ``time.process_time`` counts only the CPU time this
    process used, which other processes on a busy shared machine do not inflate.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times
