"""How many rows SemDeDup flags at each ``eps``: the measurements behind ``--dedup-eps``.

    python -m benchmarks.dedup_eps                       # 1.5 min on 2 cores
    python -m benchmarks.dedup_eps --num-samples 25000   # MNIST-1D with 20000 training rows

Each embedding set gets 300 planted duplicates: rows copied, a third exactly, a third with a
small perturbation ("near") and a third with a larger one ("loose"), of the *input* for the
model embeddings (Gaussian noise of 1 % / 5 % of each feature's standard deviation) and of the
vector for the synthetic ones (relative noise 0.02 / 0.1: cosine to the original about 0.9998 /
0.995). The job's pipeline then runs as in ``winnow embed``: float16 vectors, spherical k-means
with ``round(sqrt(n))`` clusters, SemDeDup ``keep="hard"``. Reported per ``eps``:

- ``flagged``: share of all rows flagged as duplicates;
- ``false``: share of the rows outside any planted pair that are flagged (on MNIST-1D these are
  distinct generated examples, so every flag there is a false duplicate);
- ``exact`` / ``near`` / ``loose``: share of those planted pairs of which one row is flagged.

Embedding sets: MNIST-1D (4000 training rows) through ``toydata.MLP`` (100-d, post-ReLU) and
``toydata.SmallCNN`` (64-d, post-ReLU), untrained and after 10 epochs of Adam; and 5000
synthetic 384-d vectors in 50 Gaussian clusters (within-cluster cosine ~0.5), as they are and
after a ReLU. Results: ``benchmarks/results/dedup_eps.json``; docs/embeddings.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

EPS = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005)
PLANTED = 300  # a third each: exact, near, loose
_KINDS = ("exact", "near", "loose")


def _plant(
    x: np.ndarray, rng: np.random.Generator, noise: tuple[float, float], scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` with ``PLANTED`` copies appended: exact, then ``noise[0] * scale`` and
    ``noise[1] * scale`` Gaussian perturbations; ``pairs`` ``[PLANTED, 2]`` (original, copy)."""
    rows = rng.choice(len(x), size=PLANTED, replace=False)
    copies = x[rows].astype(np.float64)
    third = PLANTED // 3
    for k, level in enumerate(noise, start=1):
        part = slice(k * third, (k + 1) * third)
        copies[part] += rng.normal(size=copies[part].shape) * level * scale[rows[part]]
    pairs = np.stack([rows, np.arange(len(x), len(x) + PLANTED)], axis=1)
    return np.concatenate([x, copies.astype(x.dtype)]), pairs


def _measure(vectors: np.ndarray, pairs: np.ndarray) -> dict[str, dict[str, float]]:
    from winnow.pipelines.embed import default_num_clusters
    from winnow.selection import embed

    vectors = vectors.astype(np.float16)  # as the store keeps them
    km = embed.spherical_kmeans(vectors, default_num_clusters(len(vectors)), seed=1234)
    dedup = embed.semdedup(vectors, km.assignment, EPS, distance=km.distance)
    in_pair = np.zeros(len(vectors), bool)
    in_pair[pairs.ravel()] = True
    third = PLANTED // 3
    out = {}
    for eps in EPS:
        flags = dedup.duplicates[eps]
        found = flags[pairs[:, 0]] | flags[pairs[:, 1]]
        out[f"{eps:g}"] = {
            "flagged": float(flags.mean()),
            "false": float(flags[~in_pair].mean()),
            **{kind: float(found[k * third : (k + 1) * third].mean())
               for k, kind in enumerate(_KINDS)},  # fmt: skip
        }
    return out


def _train(model, x: np.ndarray, y: np.ndarray, epochs: int = 10) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()


def _model_sets(
    rng: np.random.Generator, num_samples: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch

    from winnow.pipelines.toydata import MLP, SmallCNN, make_mnist1d

    data = make_mnist1d(num_samples, seed=42)
    scale = np.broadcast_to(data["x"].std(0), data["x"].shape)  # per feature
    x, pairs = _plant(data["x"], rng, (0.01, 0.05), scale)
    sets = {}
    for name, cls in (("MLP", MLP), ("SmallCNN", SmallCNN)):
        torch.manual_seed(0)
        model = cls().eval()
        for state in ("untrained", "trained"):
            if state == "trained":
                _train(model.train(), data["x"], data["y"])
                model.eval()
            with torch.no_grad():
                emb = model.embed(torch.from_numpy(x)).numpy()
            sets[f"MNIST-1D {name} {state}"] = (emb, pairs)
    return sets


def _synthetic_sets(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    centres = rng.normal(size=(50, 384))
    members = centres[rng.integers(0, 50, 5000)] + rng.normal(size=(5000, 384))
    sets = {}
    for name, v in (("synthetic 384-d", members), ("synthetic 384-d ReLU", np.maximum(members, 0))):
        v = v.astype(np.float32)
        scale = np.linalg.norm(v, axis=1, keepdims=True) / np.sqrt(v.shape[1])  # per row
        sets[name] = _plant(v, rng, (0.02, 0.1), np.broadcast_to(scale, v.shape))
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/dedup_eps.json")
    parser.add_argument("--num-samples", type=int, default=5000, help="MNIST-1D (80%% train)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    results = {}
    sets = {**_model_sets(rng, args.num_samples), **_synthetic_sets(rng)}
    for name, (vectors, pairs) in sets.items():
        results[name] = _measure(vectors, pairs)
    header = "set".ljust(28) + "".join(f"{e:>19g}" for e in EPS)
    print("flagged / false (% of rows) | exact / near / loose (% of planted pairs found)")
    print(header)
    for name, per_eps in results.items():
        cells = [
            "{flagged:.0f}/{false:.0f}|{exact:.0f}/{near:.0f}/{loose:.0f}".format(
                **{k: 100 * v for k, v in per_eps[f"{e:g}"].items()}
            )
            for e in EPS
        ]
        print(name.ljust(28) + "".join(f"{c:>19}" for c in cells))
    print(f"({time.perf_counter() - t0:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = {"eps": list(EPS), "planted": PLANTED, "mnist1d_samples": args.num_samples,
               "results": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
