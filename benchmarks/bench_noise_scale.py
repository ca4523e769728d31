"""Step overhead of measuring the gradient noise scale during training, on an MLP.

    python -m benchmarks.bench_noise_scale            # MNIST-1D MLP and a wide MLP
    python -m benchmarks.bench_noise_scale --quick

Each case is one training step (forward, backward, AdamW step, ``zero_grad``) timed against the
same step without the monitor, in the same run, interleaved round-robin. A ratio is the median over
rounds of the case's time over its baseline's time in the same round (paired, so load that drifts
between rounds cancels); the milliseconds are medians:

- ``per_example`` (``NoiseScaleMonitor.attach(model, estimator="per_example")``): ghost norms
  from the training backward; against a plain step. Goal <= 1.30x.
- ``two_batch`` (``estimator="two_batch"``, two micro-batches of half the batch accumulated):
  one norm per parameter per backward; against the same accumulated step. Goal <= 1.05x.
- ``per_example_separate``: ``per_example_grad_norms`` in its own forward and backward plus
  ``observe_per_example``, the path without hooks, for comparison.

The host copy that settles pending steps (once per 1000 steps by default) is timed apart and
reported per step. Torch runs single-threaded (``--threads``): on a shared, loaded machine extra
threads make every op's time swing. Results go to ``benchmarks/results/bench_noise_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks._timing import interleaved_times
from winnow.samplers import NoiseScaleMonitor
from winnow.selection import grad_sq_norm, per_example_grad_norms

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_noise_scale.json"
GOALS = {"per_example": 1.30, "two_batch": 1.05}


def _mlp(d_in: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def bench_case(name: str, d_in: int, hidden: int, batch: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    halves = list(zip(x.chunk(2), y.chunk(2), strict=True))

    def learner():
        torch.manual_seed(0)
        model = _mlp(d_in, hidden, 10)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(model, opt, monitor=None):
        _ce(model(x), y).mean().backward()
        if monitor is not None:
            monitor.step()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def accumulated(model, opt, monitor=None):
        for xh, yh in halves:
            (_ce(model(xh), yh).mean() / 2).backward()
        if monitor is not None:
            monitor.step()
        opt.step()
        opt.zero_grad(set_to_none=True)

    plain, plain_opt = learner()
    accum, accum_opt = learner()
    pe, pe_opt = learner()
    pe_monitor = NoiseScaleMonitor().attach(pe, estimator="per_example")
    tb, tb_opt = learner()
    tb_monitor = NoiseScaleMonitor().attach(tb, estimator="two_batch")
    sep, sep_opt = learner()
    sep_monitor = NoiseScaleMonitor()

    def separate():
        norms = per_example_grad_norms(sep, _ce, x, y)
        _ce(sep(x), y).mean().backward()
        sep_monitor.observe_per_example(norms, grad_sq_norm(sep.parameters()))
        sep_opt.step()
        sep_opt.zero_grad(set_to_none=True)

    times = interleaved_times(
        {
            "plain": lambda: step(plain, plain_opt),
            "per_example": lambda: step(pe, pe_opt, pe_monitor),
            "plain_accumulated": lambda: accumulated(accum, accum_opt),
            "two_batch": lambda: accumulated(tb, tb_opt, tb_monitor),
            "per_example_separate": separate,
        },
        repeats,
    )
    medians = {k: statistics.median(v) for k, v in times.items()}

    def paired(case: str, base: str) -> float:
        return statistics.median(c / b for c, b in zip(times[case], times[base], strict=True))

    pending = len(tb_monitor._log.pending)
    start = time.perf_counter()
    tb_monitor.flush()
    settle_per_step = (time.perf_counter() - start) / max(pending, 1)
    ratios = {
        "per_example": paired("per_example", "plain"),
        "two_batch": paired("two_batch", "plain_accumulated"),
        "per_example_separate": paired("per_example_separate", "plain"),
    }
    return {
        "case": name,
        "layers": [d_in, hidden, hidden, 10],
        "batch": batch,
        "seconds": medians,
        "ratio": ratios,
        "settle_seconds_per_step": settle_per_step,
        "goal_met": {k: ratios[k] <= goal for k, goal in GOALS.items()},
    }


def _print(result: dict) -> None:
    print(f"\n{result['case']}: MLP {result['layers']}, batch {result['batch']}")
    print(f"  {'step':<24}{'ms':>9}{'ratio':>9}  against")
    against = {
        "per_example": "plain",
        "two_batch": "plain_accumulated",
        "per_example_separate": "plain",
    }
    for name, sec in result["seconds"].items():
        ratio = result["ratio"].get(name)
        shown = "" if ratio is None else f"{ratio:>9.3f}  {against[name]}"
        goal = GOALS.get(name)
        if goal is not None:
            shown += f" (goal <= {goal:.2f})"
        print(f"  {name:<24}{sec * 1e3:>9.3f}{shown if ratio is not None else ''}")
    print(f"  settling, per step: {result['settle_seconds_per_step'] * 1e6:.2f} us")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a loaded machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (30 if args.quick else 200)
    cases = [("mnist1d_mlp", 40, 100, 128), ("wide_mlp", 512, 1024, 256)]
    results = [bench_case(*case, repeats) for case in cases]
    for r in results:
        _print(r)
    report = {
        "benchmark": "bench_noise_scale",
        "quick": args.quick,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "goals": GOALS,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
