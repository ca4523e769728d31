"""Per-example gradient norms: ghost norms vs a plain training step vs ``torch.func`` vmap.

    python -m benchmarks.bench_gradnorm            # batch 256, MNIST-1D-sized MLPs and CNN
    python -m benchmarks.bench_gradnorm --quick    # fewer repeats

Three timings per model, interleaved round-robin so that load from other processes hits all
of them alike (median of ``--repeats``):

- plain: ``zero_grad``, forward, ``loss.mean().backward()`` (one ordinary training step
  without the optimiser);
- ghost: ``selection.per_example_grad_norms`` (one forward + one backward to the layer outputs);
- vmap: the same function with ``method="vmap"`` (``torch.func`` per-example grads, whole batch
  in one chunk).

Targets from the issue: ghost <= 1.5x plain, and >= 3x faster than vmap. The maximum relative
error ghost vs vmap is reported too. Results: benchmarks/results/bench_gradnorm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks._timing import interleaved_times
from winnow.pipelines.toydata import MLP, SmallCNN
from winnow.selection import per_example_cross_entropy, per_example_grad_norms

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_gradnorm.json"


def _interleaved(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per function, run round-robin ``repeats`` times.

    On a shared box the minimum is the steadier estimate of the intrinsic cost (load only
    ever adds time); both are reported.
    """
    times = interleaved_times(fns, repeats)  # with a warm-up call (allocator, vmap tracing)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp 40-100-100-10 (toydata.MLP)": MLP(),
        "mlp 40-512-512-10": MLP(hidden=512),
        "cnn 3xConv1d(32)+fc (toydata.SmallCNN)": SmallCNN(),
        "cnn 3xConv1d(64)+fc128": SmallCNN(channels=64, hidden=128),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a busy box)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 50)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 40, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    loss_fn = per_example_cross_entropy
    rows = []
    for name, model in _models().items():

        def plain(model=model) -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).mean().backward()

        def ghost(model=model) -> torch.Tensor:
            return per_example_grad_norms(model, loss_fn, x, y, method="ghost")

        def vmap(model=model) -> torch.Tensor:
            return per_example_grad_norms(
                model, loss_fn, x, y, method="vmap", chunk_size=args.batch
            )

        seconds = _interleaved({"plain": plain, "ghost": ghost, "vmap": vmap}, repeats)
        ref = vmap()
        rel_err = ((ghost() - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
        med = {k: v[0] for k, v in seconds.items()}
        low = {k: v[1] for k, v in seconds.items()}
        row = {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
            "min_ms": {k: round(v * 1e3, 3) for k, v in low.items()},
            "ghost_over_plain": {
                "median": round(med["ghost"] / med["plain"], 2),
                "min": round(low["ghost"] / low["plain"], 2),
            },
            "vmap_over_ghost": {
                "median": round(med["vmap"] / med["ghost"], 1),
                "min": round(low["vmap"] / low["ghost"], 1),
            },
            "max_rel_err_vs_vmap": rel_err,
        }
        rows.append(row)
        print(
            f"{name:40s} min ms: plain {low['plain'] * 1e3:7.2f} ghost {low['ghost'] * 1e3:7.2f} "
            f"vmap {low['vmap'] * 1e3:8.2f} | ghost/plain {row['ghost_over_plain']['min']:4.2f} "
            f"(median {row['ghost_over_plain']['median']:4.2f}) | vmap/ghost "
            f"{row['vmap_over_ghost']['min']:5.1f} (median {row['vmap_over_ghost']['median']:5.1f})"
            f" | rel.err {rel_err:.1e}"
        )
    result = {
        "benchmark": "bench_gradnorm",
        "batch": args.batch,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
