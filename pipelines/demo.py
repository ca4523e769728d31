"""``winnow demo``: MNIST-1D -> learner + reference -> Ray scoring job -> answers in SQL.

1. Generate MNIST-1D locally, flip 10 % of the training labels and add 100 near-duplicate
   copies (1 % jitter), so the questions below have known answers.
2. RHO-LOSS split by parity: the even ids are the training pool, the odd ids the holdout. The
   learner (a small CNN) trains on the pool for a few epochs (early in training, as when
   scoring for selection); the reference (irreducible-loss) model trains on the holdout.
3. Score the pool with the Ray job: loss, el2n, grad_norm, learnability (learner loss -
   reference loss) and embeddings (faiss clusters, prototype distance, SemDeDup).
4. Ask the store a few questions in SQL: the hardest examples, how often each metric's top
   picks are mislabelled, learnability quantiles, and the clusters with the most duplicates.

Runs in about a minute on 2 CPUs. Each run gets a fresh run name (``demo-<UTC time>``), so
re-running adds a run and never clashes with an old one; the ground truth (``label_noise``,
``injected_pair``) is stored as run ``<run>-truth`` so SQL can join it.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["run_demo", "DEMO_METRICS"]

DEMO_METRICS = ("loss", "el2n", "grad_norm", "learnability", "embedding")
_NOISE, _DUPLICATES, _EPOCHS, _REF_EPOCHS, _EPS = 0.1, 100, 5, 30, 0.001


def _inject_duplicates(
    x: np.ndarray, y: np.ndarray, flipped: np.ndarray, pool: np.ndarray, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Append ``count`` near-copies (1 % Gaussian jitter) of random pool rows.

    Returns ``(x, y, flipped, pair)`` for all rows; ``pair[i]`` is ``j >= 0`` when row ``i`` is
    the copy or the source of injected pair ``j``, else -1. The copies carry their source's
    label (and flip flag).
    """
    rng = np.random.default_rng(seed)
    source = rng.choice(pool, size=count, replace=False)
    jitter = 0.01 * x[source].std() * rng.standard_normal(x[source].shape).astype(np.float32)
    pair = np.full(len(x) + count, -1, dtype=np.int64)
    pair[source] = np.arange(count)
    pair[len(x) :] = np.arange(count)
    return (
        np.concatenate([x, x[source] + jitter]),
        np.concatenate([y, y[source]]),
        np.concatenate([flipped, flipped[source]]),
        pair,
    )


def _train(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, out: IO[str], name: str) -> Any:
    """A SmallCNN trained with Adam on ``(x, y)``; returns the module in eval mode.

    Deterministic in ``seed`` (initial weights and batch order); never touches the global RNG.
    """
    import torch
    import torch.nn.functional as F

    from winnow.pipelines.toydata import SmallCNN

    gen = torch.Generator().manual_seed(seed)
    # The layers draw their initial weights from the global RNG. Build them on a forked copy of
    # it that starts from our generator's state, so the weights depend only on `seed` and the
    # caller's global RNG is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(gen.get_state())
        model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # Batches of 64 through a tiny CNN: one thread is fastest, and on a busy 2-core machine
    # two threads can be 20x slower (they wait on each other).
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for rows in torch.randperm(len(xt), generator=gen).split(64):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xt[rows]), yt[rows]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    print(
        f"  {name}: {len(x)} examples, {epochs} epochs, train accuracy {acc:.1%} "
        f"({time.perf_counter() - t0:.1f} s)",
        file=out,
    )
    return model


def _write_parquet(path: Path, ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "example_id": pa.array(ids.astype(np.int64)),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
            "label": pa.array(y),
        }
    )
    pq.write_table(table, path / "train.parquet", row_group_size=1024)
    return path


def _queries(run: str, truth: str) -> list[tuple[str, str]]:
    def noisy_share(metric: str) -> str:
        return (
            f"SELECT '{metric}' AS metric, round(avg(t.value), 3) AS mislabelled_share "
            f"FROM (SELECT example_id FROM scores WHERE run = '{run}' AND metric = '{metric}' "
            f"ORDER BY value DESC LIMIT 200) AS top "
            f"JOIN scores t ON t.example_id = top.example_id "
            f"AND t.run = '{truth}' AND t.metric = 'label_noise'"
        )

    return [
        (
            "The 8 hardest examples by learner loss (and whether their label was flipped)",
            f"SELECT s.example_id, round(s.value, 3) AS loss, "
            f"round(l.value, 3) AS learnability, t.value = 1 AS flipped_label "
            f"FROM scores s "
            f"JOIN scores l ON l.example_id = s.example_id AND l.run = s.run "
            f"AND l.metric = 'learnability' "
            f"JOIN scores t ON t.example_id = s.example_id AND t.run = '{truth}' "
            f"AND t.metric = 'label_noise' "
            f"WHERE s.run = '{run}' AND s.metric = 'loss' ORDER BY s.value DESC LIMIT 8",
        ),
        (
            "Share of flipped labels among each metric's top 200 (10 % of the pool)",
            " UNION ALL ".join(
                noisy_share(m) for m in ("loss", "el2n", "grad_norm", "learnability")
            ),
        ),
        (
            "Learnability quantiles (learner loss - reference loss)",
            f"SELECT count(*) AS examples, "
            f"round(quantile_cont(value, 0.1), 3) AS q10, "
            f"round(quantile_cont(value, 0.5), 3) AS median, "
            f"round(quantile_cont(value, 0.9), 3) AS q90, "
            f"round(quantile_cont(value, 0.99), 3) AS q99 "
            f"FROM scores WHERE run = '{run}' AND metric = 'learnability'",
        ),
        (
            f"Clusters with the most SemDeDup duplicates (eps {_EPS:g}), and how many of those "
            "belong to an injected pair",
            f"SELECT CAST(c.value AS INTEGER) AS cluster, count(*) AS members, "
            f"CAST(sum(d.value) AS INTEGER) AS duplicates, "
            f"CAST(sum(CASE WHEN t.value >= 0 THEN d.value ELSE 0 END) AS INTEGER) AS injected "
            f"FROM scores c "
            f"JOIN scores d ON d.example_id = c.example_id AND d.run = c.run "
            f"AND d.metric = 'dup_eps{_EPS:g}' "
            f"JOIN scores t ON t.example_id = c.example_id AND t.run = '{truth}' "
            f"AND t.metric = 'injected_pair' "
            f"WHERE c.run = '{run}' AND c.metric = 'cluster' "
            f"GROUP BY 1 ORDER BY duplicates DESC, cluster LIMIT 5",
        ),
        (
            f"SemDeDup (eps {_EPS:g}) over the pool: injected pairs found (one member flagged) "
            f"and other examples flagged",
            f"SELECT count(DISTINCT t.value) FILTER (WHERE t.value >= 0) AS pairs_found, "
            f"{_DUPLICATES} AS pairs_injected, "
            f"count(*) FILTER (WHERE t.value < 0) AS others_flagged "
            f"FROM scores d JOIN scores t ON t.example_id = d.example_id "
            f"AND t.run = '{truth}' AND t.metric = 'injected_pair' "
            f"WHERE d.run = '{run}' AND d.metric = 'dup_eps{_EPS:g}' AND d.value = 1",
        ),
    ]


def run_demo(
    store: str | os.PathLike | None = None,
    *,
    actors: int | None = None,
    num_samples: int = 5000,
    epochs: int = _EPOCHS,
    seed: int = 0,
    out: IO[str] | None = None,
) -> dict[str, Any]:
    """Run the whole demo; returns ``{"run", "truth_run", "store", "manifest", "answers"}``.

    ``answers`` maps each question to its Arrow table. ``store`` defaults to ``$WINNOW_STORE``
    or ``./winnow-store``.
    """
    from winnow.pipelines.cli_store import default_store_root, format_table
    from winnow.pipelines.job import score
    from winnow.pipelines.toydata import add_label_noise, make_mnist1d
    from winnow.store import ScoreStore

    out = out or sys.stdout
    store_root = os.path.abspath(os.fspath(store or default_store_root()))
    started = time.perf_counter()
    print(f"winnow demo: MNIST-1D ({num_samples} examples generated locally)", file=out)
    data = make_mnist1d(num_samples, seed=42)
    labels, flipped = add_label_noise(data["y"], _NOISE, seed=seed)
    base = np.arange(len(labels))
    pool, holdout = base[base % 2 == 0], base[base % 2 == 1]
    x, y, flipped, pair = _inject_duplicates(data["x"], labels, flipped, pool, _DUPLICATES, seed)
    pool = np.concatenate([pool, np.arange(len(labels), len(x))])  # the copies join the pool
    print(
        f"  pool: {len(pool)} examples (even ids + {_DUPLICATES} injected near-duplicates of "
        f"pool examples), {int(flipped[pool].sum())} with flipped labels; "
        f"holdout: {len(holdout)} odd ids",
        file=out,
    )
    learner = _train(x[pool], y[pool], epochs=epochs, seed=seed, out=out, name="learner (pool)")
    reference = _train(x[holdout], y[holdout], epochs=_REF_EPOCHS, seed=seed + 1, out=out,
                       name="reference (holdout)")  # fmt: skip

    import torch

    run = "demo-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    truth = f"{run}-truth"
    with tempfile.TemporaryDirectory(prefix="winnow-demo-") as tmp:
        tmp_path = Path(tmp)
        parquet = _write_parquet(tmp_path / "data", pool, x[pool], y[pool])
        torch.save(learner.state_dict(), tmp_path / "learner.pt")
        torch.save(reference.state_dict(), tmp_path / "reference.pt")
        print(f"scoring with Ray: {', '.join(DEMO_METRICS)}", file=out)
        manifest = score(
            str(parquet),
            "winnow.pipelines.toydata:SmallCNN",
            checkpoint=str(tmp_path / "learner.pt"),
            reference="winnow.pipelines.toydata:SmallCNN",
            reference_checkpoint=str(tmp_path / "reference.pt"),
            feature_columns="x",
            metrics=DEMO_METRICS,
            store=store_root,
            run=run,
            actors=actors,
            num_clusters=20,
            dedup_eps=(_EPS,),
        )
    scores = ScoreStore(store_root)
    scores.begin_run(truth, config={"demo_run": run}, num_examples=len(x))
    scores.write(truth, "label_noise", pool, flipped[pool].astype(np.float32))
    scores.write(truth, "injected_pair", pool, pair[pool].astype(np.float32))
    scores.finish_run(truth)

    answers = {}
    for question, query in _queries(run, truth):
        table = scores.sql(query)
        answers[question] = table
        print(f"\n-- {question}\n{format_table(table)}", file=out)
    print(
        f"\nwinnow demo: done in {time.perf_counter() - started:.0f} s. Store: {store_root}, "
        f"run {run!r}. Try:\n  winnow sql --store {store_root} "
        f"\"SELECT metric, count(*) FROM scores WHERE run = '{run}' GROUP BY metric\"",
        file=out,
    )
    return {
        "run": run,
        "truth_run": truth,
        "store": store_root,
        "manifest": manifest,
        "answers": answers,
    }
