"""In-step selector overhead next to the learner's scoring forward, in one process.

    python -m benchmarks.bench_selectors            # contrastive B=4096, per-example B=40960
    python -m benchmarks.bench_selectors --quick    # B=1024 / B=8192

Per-example (classification): the scoring forward is ``SmallCNN`` on a ``[B, 40]`` MNIST-1D-shaped
super-batch under ``no_grad`` plus per-example cross-entropy; selection is
``JESTSelector.select`` (reference losses looked up by id in a dense 10^7 table, Gumbel-top-b),
``RhoLossSelector.select`` and ``TopLossSelector.select``. Goal: JEST selection <= 0.1 of the
scoring forward.

Contrastive (SigLIP): the scoring forward is a two-tower MLP on the super-batch plus the learner's
``[B, B]`` sigmoid pair losses; selection is ``JESTSelector.select_pairwise`` with the reference
pair matrix rebuilt from stored (float16) reference embeddings, and, separately, the chunked
sampler alone (16 chunks, f = 0.8). Ratios are seconds(selection) / seconds(scoring forward);
each timing is the median of interleaved repeats, so load from other processes hits both alike.
Torch runs single-threaded by default (``--threads``): on a shared, loaded machine extra threads
make every op's time swing by 10x. Results go to ``benchmarks/results/bench_selectors.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks._timing import interleaved_times
from winnow.pipelines.toydata import MLP, SmallCNN
from winnow.samplers.jest import JESTSelector, score_super_batch
from winnow.samplers.rho import RhoLossSelector
from winnow.samplers.toploss import TopLossSelector
from winnow.selection.jest import jest_scores, joint_sample
from winnow.selection.losses import per_example_cross_entropy, sigmoid_pair_losses

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_selectors.json"
NUM_IDS = 10_000_000  # size of the dense reference table the ids index into


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, round-robin, after one warm-up call each."""
    times = interleaved_times(fns, repeats)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_per_example(big: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(big, 40, generator=gen)
    y = torch.randint(0, 10, (big,), generator=gen)
    ids = torch.from_numpy(rng.choice(NUM_IDS, big, replace=False))
    table = rng.random(NUM_IDS, dtype=np.float32)
    jest = JESTSelector(table, filter_ratio=0.8, source="benchmark table")
    rho = RhoLossSelector(table, keep=0.1)
    top = TopLossSelector(keep=0.1)
    losses = score_super_batch(model, x, y, loss_fn=per_example_cross_entropy)

    times = _interleaved(
        {
            "scoring_forward": lambda: score_super_batch(
                model, x, y, loss_fn=per_example_cross_entropy
            ),
            "jest_select": lambda: jest.select(ids, losses),
            "rho_select": lambda: rho.select(ids, losses),
            "toploss_select": lambda: top.select(ids, losses),
        },
        repeats,
    )
    fwd = times["scoring_forward"]
    return {
        "case": "per_example",
        "super_batch": big,
        "selected": jest.selected_size(big),
        "seconds": times,
        "ratio_to_forward": {k: v / fwd for k, v in times.items() if k != "scoring_forward"},
    }


class TwoTower(nn.Module):
    """A tiny SigLIP-style learner: two MLP towers to normalised 64-d embeddings."""

    def __init__(self):
        super().__init__()
        self.image, self.text = MLP(40, 256, 64), MLP(40, 256, 64)

    def forward(self, batch):
        img, txt = batch
        return (
            nn.functional.normalize(self.image(img), dim=1),
            nn.functional.normalize(self.text(txt), dim=1),
        )


def bench_contrastive(big: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    model = TwoTower().eval()
    img, txt = torch.randn(big, 40, generator=gen), torch.randn(big, 40, generator=gen)
    n_ref = 4 * big
    ref_ids = np.arange(n_ref)
    ref_img = rng.standard_normal((n_ref, 64)).astype(np.float16)
    ref_txt = rng.standard_normal((n_ref, 64)).astype(np.float16)
    ids = torch.from_numpy(rng.choice(n_ref, big, replace=False))
    jest = JESTSelector(
        filter_ratio=0.8,
        n_chunks=16,
        reference_image=(ref_ids, ref_img),
        reference_text=(ref_ids, ref_txt),
        reference_temperature=10.0,
        reference_bias=-10.0,
        source="benchmark embeddings",
    )

    def pair_loss(out):
        return sigmoid_pair_losses(*out, temperature=10.0, bias=-10.0)

    def forward():
        return score_super_batch(model, (img, txt), loss_fn=pair_loss)

    learner = forward()
    reference = jest.reference_pair_losses(ids)
    scores = jest_scores(learner, reference)
    b = jest.selected_size(big)
    sampler_gen = torch.Generator().manual_seed(2)
    times = _interleaved(
        {
            "scoring_forward": forward,
            "jest_select_pairwise": lambda: jest.select_pairwise(ids, learner),
            "reference_rebuild": lambda: jest.reference_pair_losses(ids),
            "chunked_sampler_only": lambda: joint_sample(scores, b, generator=sampler_gen),
        },
        repeats,
    )
    fwd = times["scoring_forward"]
    return {
        "case": "contrastive",
        "super_batch": big,
        "selected": b,
        "seconds": times,
        "ratio_to_forward": {k: v / fwd for k, v in times.items() if k != "scoring_forward"},
    }


def _print(result: dict) -> None:
    print(f"\n{result['case']}: B={result['super_batch']}, b={result['selected']}")
    print(f"  {'step':<24}{'ms':>10}{'ratio to forward':>20}")
    for name, sec in result["seconds"].items():
        ratio = result["ratio_to_forward"].get(name)
        print(f"  {name:<24}{sec * 1e3:>10.2f}{'' if ratio is None else f'{ratio:>20.3f}'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller super-batches")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a loaded machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    contrastive_b, per_example_b = (1024, 8192) if args.quick else (4096, 40960)
    repeats = args.repeats or (5 if args.quick else 7)
    results = [bench_per_example(per_example_b, repeats), bench_contrastive(contrastive_b, repeats)]
    for r in results:
        _print(r)
    report = {
        "benchmark": "bench_selectors",
        "quick": args.quick,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
