"""Per-example gradient norms: winnow's ghost norms vs a plain training step vs Opacus.

    python -m benchmarks.bench_gradnorm            # batch 256, one thread, 30 rounds
    python -m benchmarks.bench_gradnorm --quick    # fewer rounds

Needs Opacus (``pip install -e .[bench]``). Per model (benchmarks/_gradnorm_models.py), each on
its own ``copy.deepcopy`` (Opacus attaches hooks to the model it wraps), timed round-robin so
that load from other processes hits every case alike (benchmarks/_timing.py):

- plain: ``zero_grad``, forward, ``loss.mean().backward()`` (a training step without the
  optimiser);
- winnow: ``selection.per_example_grad_norms(..., method="ghost")``;
- opacus: ``GradSampleModuleFastGradientClipping`` (ghost clipping, ``loss_reduction="sum"``):
  ``zero_grad``, forward, ``loss.sum().backward()``, ``get_norm_sample()``;
- walk: the walk of the autograd graph of one forward that finds parameters used outside
  their layer's call (``selection._uses``), on a graph built once, to show what that
  detection costs.

Times are this process's CPU time by default (``--clock cpu``): with one torch thread that is
the work each case does, and other processes on a busy shared machine do not inflate it the way
they inflate elapsed time (``--clock wall``). Reported: medians and minimums, the ratios
winnow/plain and winnow/opacus computed from the same run, the walk's cost as a share of a
plain step, and the maximum relative difference of the norms, winnow vs Opacus and winnow vs
the exact ``torch.func`` reference.
Targets from the issue: winnow <= 1.3x plain and faster than Opacus. Results:
benchmarks/results/bench_gradnorm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import time
import warnings
from pathlib import Path

import torch

from benchmarks._gradnorm_models import CASES
from benchmarks._timing import interleaved_times
from winnow.selection import per_example_grad_norms
from winnow.selection._uses import accumulator_edges

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_gradnorm.json"
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _opacus_wrapper(model: torch.nn.Module):
    try:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
    except ImportError as err:
        raise SystemExit(
            "bench_gradnorm compares against Opacus: pip install -e '.[bench]'"
        ) from err
    # Opacus registers full backward hooks; on the first layer they warn that the input needs
    # no gradient. Harmless here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    return GradSampleModuleFastGradientClipping(
        copy.deepcopy(model), batch_first=True, loss_reduction="sum"
    )


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-12)).max().item()


def _bench_model(name: str, batch: int, repeats: int, clock) -> dict:
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make()
    x, y = case.batch(batch, torch.Generator().manual_seed(1))
    loss_fn = case.loss_fn
    plain_model, winnow_model = copy.deepcopy(model), copy.deepcopy(model)
    opacus_model = _opacus_wrapper(model)
    tracked = {id(p) for p in winnow_model.parameters()}

    def plain() -> None:
        plain_model.zero_grad(set_to_none=True)
        loss_fn(plain_model(x), y).mean().backward()

    def winnow() -> torch.Tensor:
        return per_example_grad_norms(winnow_model, loss_fn, x, y, method="ghost")

    def opacus() -> torch.Tensor:
        opacus_model.zero_grad(set_to_none=True)
        loss_fn(opacus_model(x), y).sum().backward()
        return opacus_model.get_norm_sample()

    graph = loss_fn(winnow_model(x), y).sum().grad_fn

    def walk() -> None:
        accumulator_edges(graph, tracked)

    fns = {"plain": plain, "winnow": winnow, "opacus": opacus, "walk": walk}
    times = interleaved_times(fns, repeats, clock=clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    ours = winnow()
    with warnings.catch_warnings():  # vmap over SDPA: "There is a performance drop"
        warnings.simplefilter("ignore", UserWarning)
        exact = per_example_grad_norms(winnow_model, loss_fn, x, y, method="vmap")

    def ratios(t: dict[str, float]) -> dict[str, float]:
        return {
            "winnow/plain": round(t["winnow"] / t["plain"], 2),
            "winnow/opacus": round(t["winnow"] / t["opacus"], 2),
            "walk/plain": round(t["walk"] / t["plain"], 4),
        }

    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "min_ms": {k: round(v * 1e3, 3) for k, v in low.items()},
        "median": ratios(med),
        "min": ratios(low),
        "max_rel_diff_vs_opacus": _max_rel(ours, opacus()),
        "max_rel_err_vs_exact": _max_rel(ours, exact),
    }


def _print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':42s} {'plain ms':>9s} {'winnow ms':>9s} {'opacus ms':>9s} "
        f"{'w/plain':>13s} {'w/opacus':>13s} {'walk':>6s} {'vs opacus':>9s} {'vs exact':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        m, q, lo = r["median_ms"], r["median"], r["min"]
        print(
            f"{r['model']:42s} {m['plain']:9.2f} {m['winnow']:9.2f} {m['opacus']:9.2f} "
            f"{q['winnow/plain']:6.2f} ({lo['winnow/plain']:4.2f}) "
            f"{q['winnow/opacus']:6.2f} ({lo['winnow/opacus']:4.2f}) {q['walk/plain']:6.1%} "
            f"{r['max_rel_diff_vs_opacus']:9.1e} {r['max_rel_err_vs_exact']:8.1e}"
        )
    print(
        "times: medians; ratios: median (min) from the same run; walk = graph walk / plain; "
        "vs opacus / vs exact: max relative difference of the norms"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(CASES)}")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this process's CPU time (default; steady on a shared machine, and with one "
        "torch thread it is the work done); wall: elapsed time",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 30)
    names = args.models or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(CASES)}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = [_bench_model(name, args.batch, repeats, clock) for name in names]
    _print_table(rows)
    result = {
        "benchmark": "bench_gradnorm",
        "batch": args.batch,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
        "opacus": _opacus_version(),
        "machine": platform.machine(),
        # Raised glibc thresholds keep freed memory in the heap (no page faults on reuse), as
        # the scoring job's actors run; the default allocator pays faults on large temporaries.
        "glibc_malloc_env": {k: os.environ.get(k) for k in _MALLOC_ENV},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _opacus_version() -> str:
    from importlib.metadata import version

    return version("opacus")


if __name__ == "__main__":
    main()
