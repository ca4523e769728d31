"""The shared task, recipe and accounting of the time-to-accuracy benchmark.

Every method trains through ``MethodRun.step``, which counts examples and steps, sets the
learning rate from the method's own notion of training progress, and evaluates on the test
split each time another ``eval_every`` backward examples have been spent. Selection overhead
(scoring forwards, scoring or reference-model trainings) goes through the same counters and
the same clock, so time-to-target includes it. Evaluation itself is not timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Recipe", "Task", "Cost", "Learner", "MethodRun", "make_task"]


@dataclass(frozen=True)
class Recipe:
    """The training recipe every method shares (AdamW, cosine decay over the method's plan)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_frac: float = 0.01
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self}")
        if not (self.lr > 0 and 0 <= self.min_lr_frac <= 1):
            raise ValueError(f"lr must be > 0 and min_lr_frac in [0, 1], got {self}")

    def lr_at(self, progress: float) -> float:
        """Cosine from ``lr`` to ``lr * min_lr_frac`` as ``progress`` goes 0 -> 1."""
        p = min(max(progress, 0.0), 1.0)
        low = self.lr * self.min_lr_frac
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * p))


@dataclass
class Task:
    """MNIST-1D tensors (CPU) and the model family. ``y`` may carry label noise; tests are clean."""

    x: torch.Tensor  # float32 [N, 40]
    y: torch.Tensor  # int64 [N]
    x_test: torch.Tensor  # float32 [M, 40]
    y_test: torch.Tensor  # int64 [M]
    model: str  # "cnn" or "mlp"
    noisy: np.ndarray  # bool [N], rows whose label was flipped

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    def new_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same ``seed`` gives the same weights."""
        from winnow.pipelines.toydata import MLP, SmallCNN

        # Layer init draws from torch's global generator; fork_rng restores it afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SmallCNN() if self.model == "cnn" else MLP()


def make_task(
    num_train: int, model: str, *, label_noise: float, data_seed: int, cache_dir: str | None
) -> Task:
    """MNIST-1D with ``num_train`` training rows (80/20 train/test split of the generator)."""
    from winnow.pipelines.toydata import add_label_noise, make_mnist1d

    if model not in ("cnn", "mlp"):
        raise ValueError(f"model must be 'cnn' or 'mlp', got {model!r}")
    if num_train < 100:
        raise ValueError(f"num_train must be >= 100, got {num_train}")
    data = make_mnist1d(round(num_train / 0.8), seed=data_seed, cache_dir=cache_dir)
    y, noisy = add_label_noise(data["y"], label_noise, seed=data_seed)
    return Task(
        x=torch.from_numpy(data["x"]),
        y=torch.from_numpy(y),
        x_test=torch.from_numpy(data["x_test"]),
        y_test=torch.from_numpy(data["y_test"]),
        model=model,
        noisy=noisy,
    )


@dataclass
class Cost:
    """Examples and time spent; ``+=`` accumulates a measured cost into a run."""

    forward: int = 0
    backward: int = 0
    steps: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time: robust to other processes sharing the cores


class Learner:
    """A model with its AdamW optimiser under the shared recipe."""

    def __init__(self, task: Task, recipe: Recipe, seed: int):
        self.model = task.new_model(seed)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        self.recipe = recipe


@dataclass
class MethodRun:
    """Accounting for one method trained once at one seed."""

    task: Task
    recipe: Recipe
    seed: int
    eval_every: int
    learner: Learner = field(init=False)
    cost: Cost = field(default_factory=Cost)
    setup: Cost = field(default_factory=Cost)
    history: list[dict] = field(default_factory=list)
    trace: object | None = None  # a trace writer the method's sampler or selector logs to
    noise: object | None = None  # a NoiseScaleMonitor hooked into the learner (optional)
    noisy_rows: int = 0  # trained rows (learner steps only) whose label was flipped

    def __post_init__(self) -> None:
        self.learner = Learner(self.task, self.recipe, self.seed)
        self._next_eval = self.eval_every
        self._record()
        self._since = _now()

    # --- clock -------------------------------------------------------------------------------
    def clock(self) -> Cost:
        """Charge the time since the last call (or since evaluation ended); returns the cost."""
        wall, cpu = _now()
        self.cost.wall_s += wall - self._since[0]
        self.cost.cpu_s += cpu - self._since[1]
        self._since = (wall, cpu)
        return self.cost

    def _record(self) -> None:
        acc = self.accuracy(self.learner.model)
        self.history.append({**asdict(self.cost), "acc": acc})

    def _maybe_evaluate(self) -> None:
        if self.cost.backward >= self._next_eval:
            self.clock()
            self._record()
            while self._next_eval <= self.cost.backward:
                self._next_eval += self.eval_every
            self._since = _now()

    # --- training and scoring ----------------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        correct = 0
        for start in range(0, len(self.task.y_test), 4096):
            logits = model(self.task.x_test[start : start + 4096])
            correct += int((logits.argmax(1) == self.task.y_test[start : start + 4096]).sum())
        model.train()
        return correct / len(self.task.y_test)

    @torch.no_grad()
    def logits(self, ids: np.ndarray, learner: Learner | None = None) -> torch.Tensor:
        """Forward pass without grad (train mode), counted as selection forwards. ``[len, C]``"""
        model = (learner or self.learner).model
        out = torch.cat([model(self.task.x[torch.from_numpy(c)]) for c in _chunks(ids, 8192)])
        self.cost.forward += len(ids)
        return out

    def losses(self, ids: np.ndarray, learner: Learner | None = None) -> torch.Tensor:
        """Per-example CE ``[len]`` without grad, counted as selection forwards."""
        return F.cross_entropy(self.logits(ids, learner), self.task.y[ids], reduction="none")

    def step(
        self,
        ids: np.ndarray,
        progress: float,
        *,
        weights: torch.Tensor | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learner: Learner | None = None,
        on_logits: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """One optimiser step on ``ids`` (int64 [b]); returns the detached per-example losses.

        The batch loss is ``mean(weights * losses)`` (weights default to 1), or ``reduce(losses)``
        when a sampler owns the reduction; ``on_logits`` sees the training forward's detached
        logits (e.g. to score the rows just trained on). ``progress`` in [0, 1] sets the
        learning rate. Steps of
        a helper ``learner`` (scoring or reference models) count as cost but trigger no evaluation.
        """
        learn = learner or self.learner
        for group in learn.opt.param_groups:
            group["lr"] = self.recipe.lr_at(progress)
        idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        logits = learn.model(self.task.x[idx])
        if on_logits is not None:
            on_logits(logits.detach())
        losses = F.cross_entropy(logits, self.task.y[idx], reduction="none")
        if reduce is not None:
            loss = reduce(losses)
        elif weights is not None:
            loss = (weights * losses).mean()
        else:
            loss = losses.mean()
        learn.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.noise is not None and learner is None:
            self.noise.step()  # after the backward, before the update: both at these parameters
        learn.opt.step()
        self.cost.forward += len(idx)
        self.cost.backward += len(idx)
        self.cost.steps += 1
        if learner is None:
            self.noisy_rows += int(np.count_nonzero(self.task.noisy[np.asarray(ids)]))
            self._maybe_evaluate()
        return losses.detach()

    def train_helper(self, ids: np.ndarray, epochs: int, seed: int) -> Learner:
        """Train a fresh helper model on ``ids`` for ``epochs`` shuffled epochs (counted)."""
        helper = Learner(self.task, self.recipe, seed)
        rng = np.random.default_rng(seed)
        b = self.recipe.batch_size
        total = epochs * math.ceil(len(ids) / b)
        done = 0
        for _ in range(epochs):
            for batch in _chunks(rng.permutation(ids), b):
                self.step(batch, done / total, learner=helper)
                done += 1
        return helper

    def begin_training(self) -> None:
        """Close the setup phase: its cost is kept apart, and the curve restarts from here."""
        self.clock()
        self.setup = Cost(**asdict(self.cost))
        self.history.append({**asdict(self.cost), "acc": self.history[0]["acc"]})
        self._next_eval = self.cost.backward + self.eval_every
        self._since = _now()

    def charge(self, cost: Cost) -> None:
        """Add a cost measured elsewhere (a setup shared by several methods at this seed)."""
        self.cost.forward += cost.forward
        self.cost.backward += cost.backward
        self.cost.steps += cost.steps
        self.cost.wall_s += cost.wall_s
        self.cost.cpu_s += cost.cpu_s

    def finish(self) -> dict:
        self.clock()
        if self.history[-1]["backward"] != self.cost.backward:
            self._record()
        return {
            "seed": self.seed,
            "final_acc": self.history[-1]["acc"],
            "cost": asdict(self.cost),
            "setup": asdict(self.setup),
            # share of label-noisy rows among the rows the learner trained on
            "noisy_trained_frac": self.noisy_rows
            / max(1, self.cost.backward - self.setup.backward),
            "history": self.history,
        }


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _chunks(ids: np.ndarray, size: int):
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
