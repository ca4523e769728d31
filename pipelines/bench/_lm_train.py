"""The language-model data-mixing benchmark's data, training loop and accounting.

Data (``winnow.pipelines.toylm``, generated, no download): a training corpus in the natural
proportions, a held-out corpus of the same languages for the reference model, and a validation
corpus with an equal number of documents per domain. Every method trains a fresh
``TinyCausalLM`` for the same number of steps with the same recipe (AdamW, linear warm-up then
cosine decay), on batches of ``batch_size`` documents padded to the batch's longest document;
a document's loss is its mean next-token loss (``winnow.selection.lm``, the scoring job's
``nll``), the batch loss the mean over its documents. Methods differ only in which documents
each step sees (docs/odm.md):

- a fixed mixture (``MixtureBatches``): each step draws the batch's domain counts from a
  multinomial over the mixture, then the next documents of each domain's own shuffled stream
  (mixed batches, as a pretraining mixture is usually drawn);
- ODM: ``winnow.samplers.ODMSampler``, one domain per batch, fed the batch's per-document
  losses after every step.

Validation loss per domain is measured every ``eval_every`` steps (not timed). The time of
drawing batches and feeding losses back is measured apart from the training step, so the
sampler's overhead per step can be compared with the step itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from winnow.pipelines.toylm import NATURAL, Corpus, TinyCausalLM, make_corpus
from winnow.selection.lm import document_nll

__all__ = ["LMConfig", "LMData", "MixtureBatches", "Run", "make_data", "new_model"]


@dataclass(frozen=True)
class LMConfig:
    """Sizes and the shared recipe. ``reference_steps``: steps of the reference model on the
    held-out corpus; ``learner_frac``: the share of the natural run after which its model is
    the learner checkpoint of the learnability filter; ``keep``: the share of training
    documents the filter keeps."""

    train_docs: int = 20_000
    heldout_docs: int = 10_000
    val_per_domain: int = 200
    vocab_size: int = 32
    min_length: int = 12
    max_length: int = 32
    dim: int = 64
    heads: int = 4
    layers: int = 2
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    eval_every: int = 50
    keep: float = 0.5
    learner_frac: float = 0.2
    reference_steps: int = 1000
    odm_alpha: float = 0.9
    odm_warmup: int = 0
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_docs", "heldout_docs", "val_per_domain", "steps", "batch_size",
                     "eval_every", "reference_steps"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep!r}")
        if not 0.0 < self.learner_frac < 1.0:
            raise ValueError(f"learner_frac must be in (0, 1), got {self.learner_frac!r}")
        if not 0.0 <= self.odm_alpha < 1.0:
            raise ValueError(f"odm_alpha must be in [0, 1), got {self.odm_alpha!r}")

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up over ``warmup_frac`` of ``total`` steps, then cosine to
        ``min_lr_frac * lr``."""
        warm = max(1, round(self.warmup_frac * total))
        if step < warm:
            return self.lr * (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        low = self.lr * self.min_lr_frac
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * p))


@dataclass
class LMData:
    """The three corpora as tensors: ``tokens`` int64 ``[D, T]``, ``lengths`` ``[D]``,
    ``domain`` numpy int64 ``[D]``."""

    train: Corpus
    heldout: Corpus
    val: Corpus
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def batch(self, split: str, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[b, T_b]`` (cut to the longest document of the batch) and lengths ``[b]``."""
        tokens, lengths = self.tensors[split]
        idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        lens = lengths[idx]
        return tokens[idx, : int(lens.max())], lens


def make_data(cfg: LMConfig) -> LMData:
    """The training, held-out and validation corpora (one grammar, three seeds)."""
    shape = {"vocab_size": cfg.vocab_size, "min_length": cfg.min_length,
             "max_length": cfg.max_length}  # fmt: skip
    k = len(NATURAL)
    data = LMData(
        train=make_corpus(cfg.train_docs, seed=cfg.data_seed, **shape),
        heldout=make_corpus(cfg.heldout_docs, seed=cfg.data_seed + 1, **shape),
        val=make_corpus(cfg.val_per_domain * k, proportions=(1 / k,) * k,
                        seed=cfg.data_seed + 2, **shape),  # fmt: skip
    )
    for split in ("train", "heldout", "val"):
        corpus = getattr(data, split)
        data.tensors[split] = (torch.from_numpy(corpus.tokens), torch.from_numpy(corpus.lengths))
    return data


def new_model(cfg: LMConfig, seed: int) -> TinyCausalLM:
    """A fresh ``TinyCausalLM``; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCausalLM(cfg.vocab_size, cfg.max_length, dim=cfg.dim, heads=cfg.heads,
                            layers=cfg.layers)  # fmt: skip


class MixtureBatches:
    """Batches of ``batch_size`` ids drawn from a fixed mixture over domains.

    ``domains`` int ``[N]`` (domain of each id), ``weights`` float ``[K]`` (normalised here),
    ``pool`` an optional bool mask of the ids allowed. Each step: domain counts ~
    Multinomial(batch_size, weights) (``one_domain``: one domain ~ weights takes the whole
    batch, as ODM draws), then the next ids of each domain's shuffled stream (a fresh
    permutation when one runs out). A pure function of ``seed``.
    """

    def __init__(self, domains: np.ndarray, weights: np.ndarray, batch_size: int, seed: int,
                 pool: np.ndarray | None = None, *, one_domain: bool = False):  # fmt: skip
        keep = np.ones(len(domains), dtype=bool) if pool is None else np.asarray(pool, bool)
        k = len(weights)
        self.members = [np.flatnonzero((domains == d) & keep) for d in range(k)]
        w = np.asarray(weights, dtype=np.float64)
        w = np.where([len(m) > 0 for m in self.members], w, 0.0)
        if w.sum() <= 0:
            raise ValueError(f"no domain with weight holds a document: weights {weights}")
        self.weights = w / w.sum()
        self.batch_size, self.one_domain = batch_size, one_domain
        self._gen = np.random.default_rng([seed, 0x417])
        self._perm: list[np.ndarray] = [self._gen.permutation(m) for m in self.members]
        self._pos = [0] * k

    def _take(self, domain: int, count: int) -> np.ndarray:
        out = []
        while count:
            perm = self._perm[domain]
            part = perm[self._pos[domain] : self._pos[domain] + count]
            out.append(part)
            count -= len(part)
            self._pos[domain] += len(part)
            if self._pos[domain] == len(perm):
                self._perm[domain] = self._gen.permutation(self.members[domain])
                self._pos[domain] = 0
        return np.concatenate(out)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            if self.one_domain:
                counts = np.zeros(len(self.weights), dtype=np.int64)
                counts[self._gen.choice(len(self.weights), p=self.weights)] = self.batch_size
            else:
                counts = self._gen.multinomial(self.batch_size, self.weights)
            yield np.concatenate([self._take(d, int(c)) for d, c in enumerate(counts) if c])


@dataclass
class Run:
    """One model trained under the recipe: steps, clocks, validation curve, domain counts."""

    cfg: LMConfig
    data: LMData
    seed: int
    split: str = "train"
    total_steps: int | None = None
    model: TinyCausalLM = field(init=False)
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_s: float = 0.0  # forward + backward + optimiser, CPU time of this process
    sampler_s: float = 0.0  # drawing batches and feeding losses back, CPU time
    sampler_wall_s: float = 0.0
    train_wall_s: float = 0.0
    domain_docs: np.ndarray | None = None  # documents trained on, per domain

    def __post_init__(self) -> None:
        self.model = new_model(self.cfg, self.seed)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.total_steps = self.total_steps or self.cfg.steps
        self.domain_docs = np.zeros(len(NATURAL), dtype=np.int64)

    def step(self, ids: np.ndarray) -> torch.Tensor:
        """One optimiser step on documents ``ids``; returns their detached losses ``[b]``."""
        started = _clocks()
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr_at(self.steps, self.total_steps)
        tokens, lengths = self.data.batch(self.split, ids)
        losses = document_nll(self.model, tokens, lengths)
        self.opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        self.opt.step()
        wall, cpu = _since(started)
        self.train_wall_s += wall
        self.train_s += cpu
        self.steps += 1
        corpus = getattr(self.data, self.split)
        self.domain_docs += np.bincount(corpus.domain[ids], minlength=len(NATURAL))
        return losses.detach()

    @torch.no_grad()
    def validation_loss(self) -> np.ndarray:
        """Mean document nll per domain on the validation corpus, float64 ``[K]``."""
        self.model.eval()
        val = self.data.val
        nll = torch.cat([
            document_nll(self.model, *self.data.batch("val", ids))
            for ids in np.array_split(np.arange(len(val)), max(1, len(val) // 500))
        ]).numpy()  # fmt: skip
        self.model.train()
        return np.bincount(val.domain, weights=nll, minlength=len(NATURAL)) / np.bincount(
            val.domain, minlength=len(NATURAL)
        )

    def record(self) -> None:
        per_domain = self.validation_loss()
        self.history.append({
            "step": self.steps,
            "cpu_s": self.train_s + self.sampler_s,
            "per_domain": per_domain.tolist(),
            "mean": float(per_domain.mean()),
            "natural": float(np.dot(NATURAL, per_domain)),
        })  # fmt: skip

    def train(
        self,
        batches: Iterator[np.ndarray],
        steps: int,
        *,
        feedback: Callable[[np.ndarray, torch.Tensor], None] | None = None,
        evaluate: bool = True,
        on_step: Callable[[Run], None] | None = None,
    ) -> None:
        """``steps`` steps on the ids ``batches`` yields; ``feedback(ids, losses)`` after each
        (timed with the draw as sampler overhead); validation every ``eval_every`` steps."""
        if evaluate and not self.history:
            self.record()
        it = iter(batches)
        for _ in range(steps):
            started = _clocks()
            ids = np.asarray(next(it), dtype=np.int64)
            self._charge_sampler(started)
            losses = self.step(ids)
            if feedback is not None:
                started = _clocks()
                feedback(ids, losses)
                self._charge_sampler(started)
            if evaluate and (self.steps % self.cfg.eval_every == 0 or self.steps == steps):
                self.record()
            if on_step is not None:
                on_step(self)

    def _charge_sampler(self, started: tuple[float, float]) -> None:
        wall, cpu = _since(started)
        self.sampler_wall_s += wall
        self.sampler_s += cpu

    def result(self) -> dict:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "train_cpu_s": self.train_s,
            "train_wall_s": self.train_wall_s,
            "sampler_cpu_s": self.sampler_s,
            "sampler_wall_s": self.sampler_wall_s,
            "domain_docs": self.domain_docs.tolist(),
            "history": self.history,
        }


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(started: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - started[0], cpu - started[1]
