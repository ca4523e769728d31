"""Epoch samplers: epoch time next to torch's RandomSampler, planning at 10^8, feedback per step.

    python -m benchmarks.bench_samplers            # epoch at N = 10^7, planning at N = 10^8
    python -m benchmarks.bench_samplers --quick    # 10^6 and 10^7

Three tables, all measured in this one run:

1. *Epoch* (plan + hand every index to a ``BatchSampler(batch_size=256)``, as a DataLoader
   does): InfoBatch (a pruned epoch, r = 0.5, exponential scores so ~63 % are below the mean;
   and an annealing epoch), RS2 (r = 0.5), static pruning (keep 0.5), each as a ratio to
   ``torch.utils.data.RandomSampler`` over the same N. Peak memory is the child process's peak
   RSS above its RSS before the sampler was built (each case runs in a fresh spawned process).
2. *Planning alone* at the larger N: ``InfoBatchSampler.set_epoch`` of a pruned epoch (settled
   score table of N float32 + seen flags included in the bytes per example), next to
   ``torch.randperm(N)`` alone.
3. *Feedback per step* at batch 256 on CPU tensors: ``reweight`` and ``update`` over up to 20 000
   steps (so pending-buffer costs are included), next to a bare ``losses.mean()``;
   five interleaved rounds, median.

Results: benchmarks/results/bench_samplers.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_samplers.json"
BATCH = 256


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so setup allocations do not count."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _seeded_infobatch(n: int):
    from winnow.samplers import InfoBatchSampler

    sampler = InfoBatchSampler(n, num_epochs=10, prune_ratio=0.5, delta=0.875, seed=0)
    scores = np.random.default_rng(1).standard_exponential(size=n, dtype=np.float32)
    sampler.scores.seed(scores)
    del scores
    return sampler


def _build(case: str, n: int):
    import torch
    from torch.utils.data import RandomSampler

    from winnow.samplers import PrunedSampler, RS2Sampler

    if case == "RandomSampler (baseline)":
        return RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), None
    if case == "InfoBatch pruned epoch":
        return _seeded_infobatch(n), 1
    if case == "InfoBatch annealing epoch":
        return _seeded_infobatch(n), 9
    if case == "RS2 r=0.5":
        return RS2Sampler(n, 0.5, seed=0), 0
    if case == "PrunedSampler keep=0.5":
        scores = np.random.default_rng(2).random(n, dtype=np.float32)
        return PrunedSampler(scores, 0.5, seed=0), 0
    raise ValueError(f"unknown case {case!r}")


def _epoch_child(case: str, n: int, out: mp.Queue) -> None:
    from torch.utils.data import BatchSampler

    from winnow import samplers  # noqa: F401 (imports are not the sampler's memory)

    base = _rss_bytes()
    _reset_peak()
    sampler, epoch = _build(case, n)
    start = time.perf_counter()
    if epoch is not None:
        sampler.set_epoch(epoch)
    count = 0
    for batch in BatchSampler(sampler, BATCH, drop_last=False):
        count += len(batch)
    seconds = time.perf_counter() - start
    out.put({"seconds": seconds, "ids": count, "peak_bytes": _peak_bytes() - base})


def _plan_child(case: str, n: int, out: mp.Queue) -> None:
    """Peak bytes count the score table (5 B/example) plus everything planning allocates."""
    import torch

    from winnow import samplers  # noqa: F401

    base = _rss_bytes()
    if case == "torch.randperm (baseline)":
        _reset_peak()
        start = time.perf_counter()
        torch.randperm(n, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
    else:
        sampler = _seeded_infobatch(n)
        table = sampler.scores.values.nbytes + sampler.scores.seen.nbytes
        before = _rss_bytes()
        _reset_peak()
        start = time.perf_counter()
        sampler.set_epoch(1)
        seconds = time.perf_counter() - start
        base = before - table
    out.put({"seconds": seconds, "peak_bytes": _peak_bytes() - base})


def _in_child(target, case: str, n: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(case, n, out))
    proc.start()
    result = out.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{case} failed with exit code {proc.exitcode}")
    return result


def _feedback(steps: int) -> dict[str, float]:
    import torch

    from winnow.samplers import InfoBatchSampler

    n = 1_000_000
    sampler = InfoBatchSampler(n, num_epochs=10, prune_ratio=0.5, seed=0)
    sampler.scores.seed(np.random.default_rng(1).random(n))
    sampler.set_epoch(1)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, n, (BATCH,), generator=gen) for _ in range(64)]
    losses = [torch.rand(BATCH, generator=gen) for _ in range(64)]
    cases = {
        "losses.mean() (baseline)": lambda i, x: x.mean(),
        "reweight": sampler.reweight,
        "update": sampler.update,
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(5):  # interleaved rounds, median: machine load hits every case alike
        for name, fn in cases.items():
            for j in range(200):
                fn(ids[j % 64], losses[j % 64])
            sampler.scores.discard_pending()
            start = time.perf_counter()
            for j in range(steps):
                fn(ids[j % 64], losses[j % 64])
            runs[name].append((time.perf_counter() - start) / steps * 1e6)
            sampler.scores.discard_pending()
    return {name: float(np.median(values)) for name, values in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^6 / 10^7 instead of 10^7 / 10^8")
    parser.add_argument("--epoch-n", type=int, default=None)
    parser.add_argument("--plan-n", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="epoch runs per case (median)")
    args = parser.parse_args(argv)
    epoch_n = args.epoch_n or (10**6 if args.quick else 10**7)
    plan_n = args.plan_n or (10**7 if args.quick else 10**8)

    epoch_cases = [
        "RandomSampler (baseline)",
        "InfoBatch pruned epoch",
        "InfoBatch annealing epoch",
        "RS2 r=0.5",
        "PrunedSampler keep=0.5",
    ]
    epoch_rows = {}
    for _ in range(args.repeats):  # interleave cases so machine load hits them alike
        for case in epoch_cases:
            r = _in_child(_epoch_child, case, epoch_n)
            row = epoch_rows.setdefault(case, {"runs": [], "ids": r["ids"], "peak_bytes": 0})
            row["runs"].append(r["seconds"])
            row["peak_bytes"] = max(row["peak_bytes"], r["peak_bytes"])
    base = float(np.median(epoch_rows["RandomSampler (baseline)"]["runs"]))
    print(f"\nEpoch at N = {epoch_n:.0e}, batch {BATCH} (median of {args.repeats})")
    print(f"{'case':28s} {'ids':>10s} {'seconds':>8s} {'ratio':>6s} {'peak MB':>8s} {'B/ex':>6s}")
    for case, row in epoch_rows.items():
        row["seconds"] = float(np.median(row["runs"]))
        row["ratio_to_random_sampler"] = row["seconds"] / base
        row["bytes_per_example"] = row["peak_bytes"] / epoch_n
        print(
            f"{case:28s} {row['ids']:10d} {row['seconds']:8.3f} "
            f"{row['ratio_to_random_sampler']:6.2f} {row['peak_bytes'] / 2**20:8.0f} "
            f"{row['bytes_per_example']:6.1f}"
        )

    plan_rows: dict[str, dict] = {}
    for _ in range(args.repeats):
        for case in ("torch.randperm (baseline)", "InfoBatch set_epoch (pruned)"):
            r = _in_child(_plan_child, case, plan_n)
            row = plan_rows.setdefault(case, {"runs": [], "peak_bytes": 0})
            row["runs"].append(r["seconds"])
            row["peak_bytes"] = max(row["peak_bytes"], r["peak_bytes"])
    for row in plan_rows.values():
        row["seconds"] = float(np.median(row["runs"]))
        row["bytes_per_example"] = row["peak_bytes"] / plan_n
    ratio = (
        plan_rows["InfoBatch set_epoch (pruned)"]["seconds"]
        / plan_rows["torch.randperm (baseline)"]["seconds"]
    )
    plan_rows["InfoBatch set_epoch (pruned)"]["ratio_to_randperm"] = ratio
    print(f"\nPlanning at N = {plan_n:.0e} (median of {args.repeats})", end="")
    print(f"; InfoBatch / randperm = {ratio:.2f}")
    print(f"{'case':30s} {'seconds':>8s} {'peak MB':>8s} {'B/ex':>6s}")
    for case, r in plan_rows.items():
        print(
            f"{case:30s} {r['seconds']:8.2f} {r['peak_bytes'] / 2**20:8.0f} "
            f"{r['bytes_per_example']:6.1f}"
        )

    steps = -(-epoch_n // BATCH)
    feedback = _feedback(min(steps, 20_000))
    print(f"\nFeedback per step, batch {BATCH}, CPU tensors (median of 5 x {min(steps, 20_000)})")
    mean_us = feedback["losses.mean() (baseline)"]
    for case, us in feedback.items():
        print(f"{case:28s} {us:8.2f} us   {us / mean_us:5.2f}x mean()")

    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "epoch_n": epoch_n,
        "plan_n": plan_n,
        "batch_size": BATCH,
        "epoch": epoch_rows,
        "planning": plan_rows,
        "feedback_us_per_step": feedback,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
