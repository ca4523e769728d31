"""RHO-LOSS as an in-step selector (docs/rho-loss.md), plus its irreducible-loss (IL) helpers.

Each step the loader yields a large batch of ``n_B`` rows with their ``example_id`` s; the learner
scores it without gradients (``samplers.jest.score_super_batch``, train mode as upstream) and
:class:`RhoLossSelector` keeps the ``n_b`` rows with the largest reducible loss
``rho_i = L_i(learner) - IL_i``. The IL values are read by id from a dense ``[N]`` array
(``ScoreStore.read`` of an IL run), never recomputed at train time. The step trains on the kept
rows with a plain mean (the weights returned are ones).

Offline, in this order: :func:`holdout_split` (parity or random), :func:`train_irreducible_model`
on the holdout (keeping the checkpoint with the lowest validation loss, validation rows split off
the data it is given: it has no test-set argument, so it can never select on test data), and
:func:`score_irreducible_losses` for every training id. :func:`train_twin_irreducible` needs no
holdout: two IL models, each trained on one half and scoring the other.

DDP: each rank selects from its own large batch; nothing is gathered.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from winnow.samplers._instep import (
    as_score_table,
    check_fraction,
    check_losses,
    ids_to_numpy,
    lookup_scores,
)
from winnow.samplers.selector import InStepSelector
from winnow.selection.choose_torch import gumbel_top_k_torch
from winnow.selection.losses import per_example_cross_entropy

__all__ = [
    "RhoLossSelector",
    "holdout_split",
    "score_irreducible_losses",
    "train_irreducible_model",
    "train_twin_irreducible",
]

_KINDS = ("top", "stochastic", "boltzmann")


class RhoLossSelector(InStepSelector):
    """Keep the rows of a large batch with the largest reducible loss ``learner - irreducible``.

    Args:
        irreducible_losses: float ``[N]`` IL per ``example_id`` (NaN = not scored; finite
            otherwise).
        keep: the share of the large batch trained on, ``n_b = max(1, floor(keep * n_B))``
            (default 0.1: 32 of 320).
        kind: ``"top"`` (deterministic top-k, upstream default), ``"stochastic"`` (Gumbel-top-k
            with coldness ``beta``: ``p ∝ exp(beta * rho)`` without replacement) or
            ``"boltzmann"`` (``n_b`` draws *with* replacement from ``softmax(rho / temperature)``,
            upstream's fixed-temperature variant; duplicates are trained twice).
        beta, temperature: the coldness / temperature of those variants.
        source: where the IL values came from, for error messages (``"store run 'il-v1'"``).
        batch_size, seed, rank, check_finite: see :class:`InStepSelector`.

    ``select(ids, learner_losses)`` returns ``rows`` int64 ``[n_b]`` (highest ``rho`` first for
    ``kind="top"``) and float32 ones; ``ids`` int ``[n_B]`` (keep on the CPU), losses any device.
    """

    input_name = "learner_losses"

    def __init__(
        self,
        irreducible_losses: np.ndarray,
        keep: float | None = None,
        *,
        kind: str = "top",
        beta: float = 1.0,
        temperature: float = 0.25,
        source: str = "the irreducible losses",
        **options: Any,
    ):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        super().__init__(keep=keep, **options)
        self.irreducible_losses = as_score_table(irreducible_losses, what="irreducible_losses")
        self.kind = kind
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.source = source

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "kind": self.kind,
            "beta": self.beta,
            "temperature": self.temperature,
            "num_examples": int(self.irreducible_losses.shape[0]),
        }

    def selection_scores(self, ids: Any, scores: torch.Tensor) -> torch.Tensor:
        """``rho = learner_losses - IL[ids]`` in float32 on the losses' device."""
        if ids is None:
            raise ValueError("RhoLossSelector needs the example ids to look up irreducible losses")
        il = lookup_scores(
            self.irreducible_losses, ids, what="irreducible loss", source=self.source
        )
        il_t = torch.from_numpy(il.astype(np.float32)).to(scores.device, non_blocking=True)
        return scores.float() - il_t

    def reducible_loss(self, ids, learner_losses: torch.Tensor) -> torch.Tensor:
        """``rho = learner_losses - IL[ids]``, float32 ``[B]`` on the losses' device."""
        ids_np = ids_to_numpy(ids)
        learner = check_losses(
            learner_losses, ids_np.shape[0], name="learner_losses", check_finite=self.check_finite
        )
        return self.selection_scores(ids_np, learner)

    def choose(
        self, scores: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "top":
            rows = torch.topk(scores, k, sorted=True).indices
        elif self.kind == "stochastic":
            rows = gumbel_top_k_torch(scores, k, beta=self.beta, generator=generator)
        else:
            probs = torch.softmax(scores / self.temperature, dim=0)
            rows = torch.multinomial(probs, k, replacement=True, generator=generator)
        return rows, torch.ones(k, dtype=torch.float32, device=scores.device)


def holdout_split(
    num_examples: int, *, method: str = "parity", holdout_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ids ``0..N-1`` into ``(train_ids, holdout_ids)``, int64, each ascending.

    ``"parity"`` (upstream CIFAR): even ids train, odd ids holdout (``holdout_fraction`` unused).
    ``"random"``: a seeded uniform ``holdout_fraction`` of the ids is the holdout.
    """
    if num_examples < 2:
        raise ValueError(f"num_examples must be >= 2, got {num_examples!r}")
    ids = np.arange(num_examples, dtype=np.int64)
    if method == "parity":
        return ids[0::2], ids[1::2]
    if method != "random":
        raise ValueError(f"method must be 'parity' or 'random', got {method!r}")
    check_fraction(holdout_fraction, "holdout_fraction", closed_right=False)
    n_ho = max(1, min(num_examples - 1, int(round(holdout_fraction * num_examples))))
    mask = np.zeros(num_examples, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_examples, n_ho, replace=False)] = True
    return ids[~mask], ids[mask]


def _mean_loss(model, inputs, targets, loss_fn, batch_size) -> float:
    total = 0.0
    with torch.no_grad():
        for xb, yb in zip(
            torch.split(inputs, batch_size), torch.split(targets, batch_size), strict=True
        ):
            total += float(loss_fn(model(xb), yb).sum())
    return total / max(1, inputs.shape[0])


def train_irreducible_model(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    val_inputs: torch.Tensor | None = None,
    val_targets: torch.Tensor | None = None,
    val_fraction: float = 0.1,
    epochs: int = 30,
    batch_size: int = 320,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train the IL model on holdout ``(inputs, targets)``; keep the lowest-validation-loss weights.

    Validation is on ``(val_inputs, val_targets)`` if given (e.g. the target's training set, as
    the upstream tutorial does), else on a seeded ``val_fraction`` of the holdout split off before
    training. There is deliberately no test-set argument: pass test data here and you select on
    it. AdamW, mini-batches of ``batch_size``, ``augment`` applied to training inputs only.
    ``loss_fn(outputs, targets) -> [B]`` defaults to per-example cross-entropy. Returns the model
    (best weights loaded, eval mode) and ``{"train_loss": [...], "val_loss": [...]}`` per epoch.
    """
    loss_fn = loss_fn or per_example_cross_entropy
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    gen = torch.Generator().manual_seed(int(seed))
    if val_inputs is None:
        check_fraction(val_fraction, "val_fraction", closed_right=False)
        perm = torch.randperm(inputs.shape[0], generator=gen)
        n_val = max(1, int(round(val_fraction * inputs.shape[0])))
        val_rows, train_rows = perm[:n_val], perm[n_val:]
        val_inputs, val_targets = inputs[val_rows], targets[val_rows]
        inputs, targets = inputs[train_rows], targets[train_rows]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = (float("inf"), copy.deepcopy(model.state_dict()))
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()
        order = torch.randperm(inputs.shape[0], generator=gen)
        seen = 0.0
        for rows in torch.split(order, batch_size):
            xb = inputs[rows] if augment is None else augment(inputs[rows])
            loss = loss_fn(model(xb), targets[rows]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += float(loss.detach()) * rows.shape[0]
        model.eval()
        val = _mean_loss(model, val_inputs, val_targets, loss_fn, 4 * batch_size)
        history["train_loss"].append(seen / inputs.shape[0])
        history["val_loss"].append(val)
        if val < best[0]:
            best = (val, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    model.eval()
    return model, history


def score_irreducible_losses(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    ids,
    num_examples: int,
    *,
    batch_size: int = 4096,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """IL of each row (eval mode, no grad, no augmentation) in a dense float32 ``[N]`` array.

    Rows not in ``ids`` stay NaN (or keep their value in ``out``, which is filled in place), so
    the result goes straight into ``ScoreStore.write`` or :class:`RhoLossSelector`.
    """
    loss_fn = loss_fn or per_example_cross_entropy
    ids_np = ids_to_numpy(ids, inputs.shape[0])
    if ids_np.shape[0] and (ids_np.min() < 0 or ids_np.max() >= num_examples):
        raise ValueError(
            f"ids must be in [0, {num_examples}), got [{ids_np.min()}, {ids_np.max()}]"
        )
    if out is None:
        out = np.full(num_examples, np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for xb, yb in zip(
            torch.split(inputs, batch_size), torch.split(targets, batch_size), strict=True
        ):
            parts.append(loss_fn(model(xb), yb).float().cpu())
    model.train(was_training)
    out[ids_np] = torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)
    return out


def train_twin_irreducible(
    make_model: Callable[[], nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    ids,
    num_examples: int,
    *,
    seed: int = 0,
    **train_kwargs: Any,
) -> tuple[np.ndarray, list[nn.Module]]:
    """Twin IL without a holdout: split the rows in half (seeded), train one IL model per half
    (:func:`train_irreducible_model`, validating on its own half's split), and score each half with
    the model that did not see it. Returns the dense ``[N]`` IL array and the two models.
    """
    ids_np = ids_to_numpy(ids, inputs.shape[0])
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(ids_np.shape[0]))
    halves = (perm[: perm.shape[0] // 2], perm[perm.shape[0] // 2 :])
    models = []
    for h, rows in enumerate(halves):
        model, _ = train_irreducible_model(
            make_model(), inputs[rows], targets[rows], seed=seed + h, **train_kwargs
        )
        models.append(model)
    out = np.full(num_examples, np.nan, dtype=np.float32)
    for rows, scorer in ((halves[0], models[1]), (halves[1], models[0])):
        score_irreducible_losses(
            scorer, inputs[rows], targets[rows], ids_np[rows.numpy()], num_examples, out=out
        )
    return out, models
