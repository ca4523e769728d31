"""The methods of the time-to-accuracy benchmark: one small function per method.

Each method trains ``run.learner`` through ``MethodRun.step`` under the shared recipe and
decides only *which* examples each step sees (and their loss weights) and how the learning rate
progresses, exactly as its page in docs/ says:

- epoch methods keep the recipe's epochs over whatever each epoch plans (InfoBatch's LR follows
  epoch progress; static subsets keep the epochs over the smaller set; RS2 runs ``epochs``
  rounds of ``keep * N`` with the cosine compressed into its reduced step total);
- in-step selectors (RHO-LOSS, JEST, importance sampling) and hard-batch keep the full-data step
  count; the selectors pay their scoring forwards on super-batches.

Setups that several methods share at one seed (EL2N scores, used with and without calibration;
the twin irreducible-loss models that are both RHO-LOSS's IL and JEST's reference) are computed
once and their measured cost is charged to every method that uses them, so each method's
time-to-target includes its whole overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from winnow.pipelines.bench._engine import Cost, MethodRun

__all__ = ["MethodConfig", "SharedSetups", "METHODS", "method_names"]


@dataclass(frozen=True)
class MethodConfig:
    """Method hyper-parameters (defaults from the methods' pages in docs/ unless noted)."""

    keep: float = 0.3  # RS2 / static random / EL2N: the share of the data trained on
    infobatch_prune: float = 0.5
    infobatch_delta: float = 0.875
    el2n_runs: int = 3  # Data Diet averages >= 10 runs; 3 keeps the benchmark short
    el2n_epochs: int = 2  # "early": Data Diet scores at 10 % of training
    mix_alpha: float = 0.5  # random-mix calibration: share of the budget drawn uniformly
    hard_delta: float = 0.5
    rho_keep: float = 0.1
    jest_filter: float = 0.8
    il_epochs: int = 10
    is_presample: int = 3

    @classmethod
    def for_recipe(cls, epochs: int, **overrides) -> MethodConfig:
        """Scoring lengths scaled to the recipe: EL2N at 10 % of the epochs, IL models 50 %.

        IL models trained for a quarter of the epochs reached only ~80 % test accuracy on the
        CNN, and RHO-LOSS then plateaued near them (92 % vs 97.8 % for full data); half the
        epochs gives RHO-LOSS 96.5 % at a larger setup cost (benchmarks/results/outcomes_il10.md).
        """
        scaled = {"el2n_epochs": max(1, round(0.1 * epochs)), "il_epochs": max(1, epochs // 2)}
        return cls(**{**scaled, **overrides})


class SharedSetups:
    """Setups computed once per (model, seed) and charged to each method that uses them."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[object, Cost]] = {}

    def get(self, key: tuple, run: MethodRun, compute: Callable[[MethodRun], object]):
        if key in self._cache:
            value, cost = self._cache[key]
            run.charge(cost)
            return value
        before = Cost(**vars(run.clock()))
        value = compute(run)
        after = run.clock()
        cost = Cost(**{k: getattr(after, k) - v for k, v in vars(before).items()})
        self._cache[key] = (value, cost)
        return value

    def cached(self, key: tuple):
        """The value computed under ``key`` (None if no method needed it)."""
        return self._cache[key][0] if key in self._cache else None


def _batches(ids: np.ndarray, b: int, *, drop_last: bool = False) -> list[np.ndarray]:
    stop = len(ids) - len(ids) % b if drop_last else len(ids)
    return [ids[i : min(i + b, stop)] for i in range(0, stop, b)]


def _plan(sampler) -> np.ndarray:
    """The sampler's current epoch as int64 ids, through its public iterator."""
    return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))


def _train_static(run: MethodRun, sampler) -> None:
    """The recipe's epochs over a static subset; cosine over the subset's step total."""
    b, epochs = run.recipe.batch_size, run.recipe.epochs
    total = sampler.total_steps(b, epochs)
    done = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in _batches(_plan(sampler), b):
            run.step(batch, done / total)
            done += 1


def full_data(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    rng = np.random.default_rng(run.seed + 1)
    n, b, epochs = run.task.num_examples, run.recipe.batch_size, run.recipe.epochs
    total = epochs * math.ceil(n / b)
    run.begin_training()
    done = 0
    for epoch in range(epochs):
        first, ids, losses = done, [], []
        for batch in _batches(rng.permutation(n), b):
            losses.append(run.step(batch, done / total))
            ids.append(batch)
            done += 1
        if run.trace is not None:  # no sampler: every batch of the epoch, trained whole
            steps = np.repeat(np.arange(first, done), [len(i) for i in ids])
            kept = np.ones(len(steps), dtype=bool)
            loss = torch.cat(losses).numpy()
            run.trace.write_steps(steps, np.concatenate(ids), kept, loss=loss, epoch=epoch)


def static_random(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    from winnow.samplers.pruned import PrunedSampler

    # alpha = 1: the whole budget drawn uniformly, i.e. a static random subset
    sampler = PrunedSampler(
        np.zeros(run.task.num_examples, dtype=np.float32),
        cfg.keep,
        alpha=1.0,
        seed=run.seed,
        trace=run.trace,
    )
    run.begin_training()
    _train_static(run, sampler)


def infobatch(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    """InfoBatch: LR on epoch progress (``schedule_progress``), loss via ``reweight``."""
    from winnow.samplers.infobatch import InfoBatchSampler

    sampler = InfoBatchSampler(
        run.task.num_examples,
        run.recipe.epochs,
        prune_ratio=cfg.infobatch_prune,
        delta=cfg.infobatch_delta,
        seed=run.seed,
        trace=run.trace,
    )
    b = run.recipe.batch_size
    run.begin_training()
    for epoch in range(run.recipe.epochs):
        sampler.set_epoch(epoch)
        for i, batch in enumerate(_batches(_plan(sampler), b)):
            idx = torch.from_numpy(batch)
            run.step(
                batch,
                sampler.schedule_progress(i, b),
                reduce=lambda losses, idx=idx: sampler.reweight(idx, losses),
            )


def rs2(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    """RS2 without replacement: ``epochs`` rounds of ``keep * N``; the cosine is compressed into
    the reduced step total (``progress = step / total_steps``), not truncated."""
    from winnow.samplers.rs2 import RS2Sampler

    sampler = RS2Sampler(
        run.task.num_examples, cfg.keep, replacement=False, seed=run.seed, trace=run.trace
    )
    b, rounds = run.recipe.batch_size, run.recipe.epochs
    total = sampler.total_steps(b, rounds, drop_last=True)
    run.begin_training()
    done = 0
    for r in range(rounds):
        sampler.set_epoch(r)
        for batch in _batches(_plan(sampler), b, drop_last=True):
            run.step(batch, done / total)
            done += 1


def _el2n_scores(run: MethodRun, cfg: MethodConfig) -> np.ndarray:
    """EL2N ``||softmax - onehot||_2`` after ``el2n_epochs`` of training, averaged over runs.

    float32 [N]; higher = harder. Every scoring run's steps and forwards count as cost.
    """
    n = run.task.num_examples
    ids = np.arange(n)
    total = np.zeros(n, dtype=np.float64)
    for k in range(cfg.el2n_runs):
        helper = run.train_helper(ids, cfg.el2n_epochs, seed=10_000 + 97 * run.seed + k)
        probs = torch.softmax(run.logits(ids, helper), dim=1)
        onehot = F.one_hot(run.task.y, probs.shape[1]).to(probs.dtype)
        total += torch.linalg.vector_norm(probs - onehot, dim=1).numpy()
    return (total / cfg.el2n_runs).astype(np.float32)


def _el2n_pruned(run: MethodRun, cfg: MethodConfig, shared: SharedSetups, alpha: float) -> None:
    from winnow.samplers.pruned import PrunedSampler

    scores = shared.get(("el2n",), run, lambda r: _el2n_scores(r, cfg))
    sampler = PrunedSampler(
        scores, cfg.keep, largest=True, alpha=alpha, seed=run.seed, trace=run.trace
    )
    run.begin_training()
    _train_static(run, sampler)


def el2n(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    _el2n_pruned(run, cfg, shared, 0.0)


def el2n_mix(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    _el2n_pruned(run, cfg, shared, cfg.mix_alpha)


def _super_batches(n: int, size: int, steps: int, rng: np.random.Generator):
    """``steps`` super-batches of ``size`` ids from reshuffled passes (remainders dropped)."""
    perm, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + size > n:
            perm, pos = rng.permutation(n), 0
        yield perm[pos : pos + size]
        pos += size


def _full_steps(run: MethodRun) -> int:
    return run.recipe.epochs * math.ceil(run.task.num_examples / run.recipe.batch_size)


def _twin_irreducible(run: MethodRun, cfg: MethodConfig) -> np.ndarray:
    """Twin IL losses (docs/rho-loss.md, no holdout): two models of the learner's architecture,
    each trained ``il_epochs`` on one half (even / odd ids), score the other half.

    float32 [N]. Trained with the benchmark's own counted loop rather than
    ``samplers.rho.train_twin_irreducible`` so that every IL step and forward is accounted.
    """
    ids = np.arange(run.task.num_examples)
    il = np.empty(len(ids), dtype=np.float32)
    halves = (ids[0::2], ids[1::2])
    for h, (train_on, score_on) in enumerate((halves, halves[::-1])):
        model = run.train_helper(train_on, cfg.il_epochs, seed=20_000 + 97 * run.seed + h)
        il[score_on] = run.losses(score_on, model).numpy()
    return il


def _train_selected(run: MethodRun, super_batch: int, selector) -> None:
    """Full-data step count; each step scores a super-batch and trains the rows the selector
    returns as ``(rows, weights)`` for the learner's losses."""
    total = _full_steps(run)
    rng = np.random.default_rng(run.seed + 1)
    run.begin_training()
    for step, ids in enumerate(_super_batches(run.task.num_examples, super_batch, total, rng)):
        rows, weights = selector.select(ids, run.losses(ids))
        run.step(ids[rows.numpy()], step / total, weights=weights)
    selector.close()  # writes what its trace holds


def rho_loss(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    from winnow.samplers.rho import RhoLossSelector

    il = shared.get(("twin_il",), run, lambda r: _twin_irreducible(r, cfg))
    selector = RhoLossSelector(
        il, keep=cfg.rho_keep, seed=run.seed, source="twin IL models", trace=run.trace
    )
    super_batch = round(run.recipe.batch_size / cfg.rho_keep)
    _train_selected(run, super_batch, selector)


def jest(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    from winnow.samplers.jest import JESTSelector

    reference = shared.get(("twin_il",), run, lambda r: _twin_irreducible(r, cfg))
    selector = JESTSelector(
        reference,
        filter_ratio=cfg.jest_filter,
        seed=run.seed,
        source="twin IL models",
        trace=run.trace,
    )
    super_batch = round(run.recipe.batch_size / (1.0 - cfg.jest_filter))
    _train_selected(run, super_batch, selector)


def importance(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    from winnow.samplers.importance import ImportanceSelector
    from winnow.selection import last_layer_bound

    selector = ImportanceSelector(batch_size=run.recipe.batch_size, seed=run.seed, trace=run.trace)
    y = run.task.y
    total = _full_steps(run)
    rng = np.random.default_rng(run.seed + 1)
    super_batch = cfg.is_presample * run.recipe.batch_size
    run.begin_training()
    # Upstream's loop: the super-batch is scored (a counted forward) only while the gate is
    # open; while closed, a uniform batch trains and tau is estimated from its own logits.
    for step, ids in enumerate(_super_batches(run.task.num_examples, super_batch, total, rng)):
        if selector.sampling:
            rows, w = selector.select_logits(ids, run.logits(ids), y[torch.from_numpy(ids)])
            run.step(ids[rows.numpy()], step / total, weights=w)
            continue
        rows, w = selector.uniform(len(ids), ids=ids)
        chosen = ids[rows.numpy()]
        targets = y[torch.from_numpy(chosen)]
        run.step(
            chosen,
            step / total,
            weights=w,
            on_logits=lambda z, t=targets: selector.observe(last_layer_bound(z, t)),
        )
    selector.close()


def hard_batch(run: MethodRun, cfg: MethodConfig, shared: SharedSetups) -> None:
    from winnow.samplers.hardbatch import HardBatchSampler

    sampler = HardBatchSampler(
        run.task.num_examples,
        run.recipe.batch_size,
        cfg.hard_delta,
        run.recipe.epochs,
        seed=run.seed + 1,
        trace=run.trace,
    )
    total = sampler.total_steps()
    run.begin_training()
    done = 0
    for epoch in range(run.recipe.epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            ids = np.asarray(batch, dtype=np.int64)
            sampler.update(ids, run.step(ids, done / total))
            done += 1
    sampler.close()


METHODS: dict[str, tuple[Callable[[MethodRun, MethodConfig, SharedSetups], None], str]] = {
    "full": (full_data, "full data, every epoch (baseline)"),
    "infobatch": (infobatch, "InfoBatch r = 0.5, delta = 0.875, rescaled losses"),
    "rs2": (rs2, "RS2 without replacement at `keep`, cosine compressed to its steps"),
    "static_random": (static_random, "static random subset at `keep`, same epochs"),
    "el2n": (el2n, "static EL2N pruning, keep the hardest `keep` share"),
    "el2n_mix": (el2n_mix, "static EL2N with random-mix calibration (alpha)"),
    "hard_batch": (hard_batch, "DyBAT hard batches, top-delta of a fixed partition"),
    "rho_loss": (rho_loss, "RHO-LOSS top-10 % of a 10x super-batch, twin IL models"),
    "jest": (jest, "per-example JEST, learnability sampling, f = 0.8"),
    "importance": (importance, "importance sampling, last-layer bound, presample 3, tau gate"),
}


def method_names() -> list[str]:
    return list(METHODS)
