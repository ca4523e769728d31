"""The mixing methods of the language-model benchmark: one function per method.

Each trains a fresh model for ``cfg.steps`` steps (``_lm_train.Run``) and differs only in the
documents each step sees (docs/odm.md, "Benchmark"):

- ``natural``: the training corpus's own domain proportions (mixed batches);
- ``uniform``: every domain equally often (mixed batches);
- ``odm``: ``ODMSampler`` (one domain per batch, EXP3 on the training loss);
- ``uniform_batches``: every domain equally often, one domain per batch: ODM's batching
  without its bandit, which tells the two apart;
- ``learnability``: documents filtered offline. A learner checkpoint (the ``natural`` run
  after ``learner_frac`` of its steps) and a reference model trained on the held-out corpus
  score every training document through the scoring job (``pipelines.score`` with the inline
  executor: ``nll`` of each model, ``learnability = learner nll - reference nll``, the very
  code of ``winnow score --token-column``); the top ``keep`` share by learnability is kept,
  and the model trains on it in its natural proportions. Its setup (the reference model's
  steps, the learner checkpoint's steps, the scoring) is reported apart.

``natural`` runs first at each seed: its checkpoint is the learner the filter scores with.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from winnow.pipelines.bench._lm_train import LMConfig, LMData, MixtureBatches, Run
from winnow.pipelines.toylm import DOMAINS

__all__ = ["METHODS", "SeedState", "method_names"]


class SeedState:
    """What the methods of one seed share: the natural run's learner checkpoint (and the CPU
    seconds it took to get there)."""

    def __init__(self) -> None:
        self.learner_state: dict[str, torch.Tensor] | None = None
        self.learner_steps = 0
        self.learner_cpu_s = 0.0


def _natural_weights(domains: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
    kept = domains if pool is None else domains[pool]
    return np.bincount(kept, minlength=len(DOMAINS)) / len(kept)


def natural(cfg: LMConfig, data: LMData, seed: int, state: SeedState) -> dict:
    domains = data.train.domain
    run = Run(cfg, data, seed)
    at = max(1, round(cfg.learner_frac * cfg.steps))

    def keep_learner(r: Run) -> None:
        if r.steps == at:
            state.learner_state = {k: v.clone() for k, v in r.model.state_dict().items()}
            state.learner_steps = r.steps
            state.learner_cpu_s = r.train_s + r.sampler_s

    batches = MixtureBatches(domains, _natural_weights(domains), cfg.batch_size, seed)
    run.train(batches, cfg.steps, on_step=keep_learner)
    return run.result()


def uniform(cfg: LMConfig, data: LMData, seed: int, state: SeedState) -> dict:
    run = Run(cfg, data, seed)
    weights = np.full(len(DOMAINS), 1.0 / len(DOMAINS))
    run.train(MixtureBatches(data.train.domain, weights, cfg.batch_size, seed), cfg.steps)
    return run.result()


def uniform_batches(cfg: LMConfig, data: LMData, seed: int, state: SeedState) -> dict:
    run = Run(cfg, data, seed)
    weights = np.full(len(DOMAINS), 1.0 / len(DOMAINS))
    batches = MixtureBatches(data.train.domain, weights, cfg.batch_size, seed, one_domain=True)
    run.train(batches, cfg.steps)
    return run.result()


def odm(cfg: LMConfig, data: LMData, seed: int, state: SeedState) -> dict:
    from winnow.samplers import ODMSampler

    run = Run(cfg, data, seed)
    sampler = ODMSampler(
        data.train.domain, cfg.batch_size, cfg.steps, alpha=cfg.odm_alpha,
        warmup_steps=cfg.odm_warmup, num_domains=len(DOMAINS), seed=seed,
    )  # fmt: skip
    run.train(sampler, cfg.steps, feedback=sampler.update)
    result = run.result()
    mixture = sampler.mixture_history()
    every = max(1, cfg.steps // 200)
    result["mixture"] = {"every": every, "pi": mixture[::every].round(5).tolist()}
    result["mixture_mean"] = mixture.mean(0).tolist()
    result["mixture_last_tenth"] = mixture[-max(1, cfg.steps // 10) :].mean(0).tolist()
    return result


def learnability(cfg: LMConfig, data: LMData, seed: int, state: SeedState) -> dict:
    if state.learner_state is None:
        raise ValueError("the learnability filter needs the natural run's checkpoint first")
    setup_started = time.process_time()
    reference = Run(cfg, data, seed + 7919, split="heldout", total_steps=cfg.reference_steps)
    held = data.heldout.domain
    batches = MixtureBatches(held, _natural_weights(held), cfg.batch_size, seed + 7919)
    reference.train(batches, cfg.reference_steps, evaluate=False)
    scores = _score_learnability(cfg, data, state.learner_state, reference.model.state_dict())
    setup_cpu = time.process_time() - setup_started + state.learner_cpu_s
    kept = np.zeros(len(data.train), dtype=bool)
    kept[np.argsort(-scores, kind="stable")[: max(1, round(cfg.keep * len(kept)))]] = True
    domains = data.train.domain
    run = Run(cfg, data, seed)
    batches = MixtureBatches(domains, _natural_weights(domains, kept), cfg.batch_size, seed,
                             pool=kept)  # fmt: skip
    run.train(batches, cfg.steps)
    result = run.result()
    per_domain = np.bincount(domains, minlength=len(DOMAINS))
    result["setup"] = {
        "cpu_s": setup_cpu,
        "reference_steps": cfg.reference_steps,
        "learner_steps": state.learner_steps,
        "kept_share_per_domain": (
            np.bincount(domains[kept], minlength=len(DOMAINS)) / np.maximum(per_domain, 1)
        ).tolist(),
        "mean_learnability_per_domain": (
            np.bincount(domains, weights=scores, minlength=len(DOMAINS))
            / np.maximum(per_domain, 1)
        ).tolist(),
    }
    return result


def _score_learnability(
    cfg: LMConfig, data: LMData, learner: dict, reference: dict
) -> np.ndarray:
    """``learnability`` of every training document, float32 ``[N]`` by document index, from a
    run of the scoring job (inline executor, a temporary store)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow import pipelines
    from winnow.pipelines.models import ModelSpec
    from winnow.store import ScoreStore

    kwargs = {"vocab_size": cfg.vocab_size, "max_length": cfg.max_length, "dim": cfg.dim,
              "heads": cfg.heads, "layers": cfg.layers}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="winnow-bench-lm-") as tmp:
        root = Path(tmp)
        table = pa.table({
            "tokens": pa.array(data.train.documents(), pa.list_(pa.int64())),
            "domain": pa.array([DOMAINS[d] for d in data.train.domain]),
        })  # fmt: skip
        pq.write_table(table, root / "train.parquet")
        torch.save(learner, root / "learner.pt")
        torch.save(reference, root / "reference.pt")
        factory = "winnow.pipelines.toylm:TinyCausalLM"
        pipelines.score(
            str(root / "train.parquet"),
            ModelSpec(factory, str(root / "learner.pt"), kwargs),
            reference=ModelSpec(factory, str(root / "reference.pt"), kwargs),
            token_column="tokens", domain_column="domain", metrics=["nll", "learnability"],
            store=root / "store", run="learnability", executor="inline", batch_size=256,
            progress=False,
        )  # fmt: skip
        values, present = ScoreStore(root / "store").read("learnability", "learnability")
    if not present.all():
        raise RuntimeError(f"{int((~present).sum())} documents have no learnability score")
    return values


METHODS: dict[str, tuple[Callable[[LMConfig, LMData, int, SeedState], dict], str]] = {
    "natural": (natural, "natural proportions (the corpus's own), mixed batches"),
    "uniform": (uniform, "every domain equally often, mixed batches"),
    "odm": (odm, "ODMSampler: one domain per batch, EXP3 on the training loss (paper defaults)"),
    "uniform_batches": (
        uniform_batches,
        "every domain equally often, one domain per batch (ODM's batching without its bandit)",
    ),
    "learnability": (
        learnability,
        "natural proportions over the top share of documents by learnability (learner "
        "checkpoint nll - reference nll, scored by the scoring job)",
    ),
}


def method_names() -> list[str]:
    return list(METHODS)
