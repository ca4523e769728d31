"""JEST as an in-step selector (docs/jest.md): pick ``b`` of a super-batch of ``B`` rows.

The loader yields a super-batch ``B = b / (1 - f)`` with its ``example_id`` s; inside the step the
learner scores it without gradients (:func:`score_super_batch`), the selector combines the learner
scores with the frozen reference's (read from the store by id, so no reference forward runs at
train time) and returns which rows to train on. The learner then trains on those rows alone
(selected examples are each other's in-batch negatives), with a plain mean loss: the weights
returned are all ones and exist so every in-step selector has the same ``(rows, weights)`` shape.

Two reference sources, both dense by ``example_id`` as the store hands them out:

* per-example losses (classification, regression, per-sequence LM): ``reference_losses[N]``
  (NaN = not scored), e.g. ``ScoreStore(root).read("ref-v1", "loss")[0]``;
* contrastive (SigLIP): the reference's image and text embeddings, ``(ids, vectors)`` as
  ``ScoreStore.read_vectors`` returns them, plus its temperature and bias; the reference's
  ``[B, B]`` pair-loss matrix is rebuilt from them on the learner's device.

DDP: each rank selects from its own super-batch (the loader's shard); nothing is gathered. Ranks
draw independent noise (the generator is seeded from ``(seed, rank)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from winnow.samplers._instep import (
    IdTable,
    as_score_table,
    check_pair_losses,
    ids_to_numpy,
    lookup_scores,
)
from winnow.samplers.selector import InStepSelector
from winnow.selection.jest import (
    LEARNABILITY_MODES,
    frozen_pair_losses,
    jest_scores,
    joint_sample,
    sample_per_example,
)

__all__ = ["JESTSelector", "score_super_batch"]


class JESTSelector(InStepSelector):
    """Select ``b = floor(B (1 - filter_ratio))`` rows of each super-batch by learnability.

    Args:
        reference_losses: float ``[N]`` reference loss per ``example_id`` (NaN = missing), for
            :meth:`select`. Not needed in ``mode="hard_learner"``.
        filter_ratio: the JEST paper's ``f`` in ``(0, 1)``, the fraction of the super-batch
            filtered out (default 0.8); the share trained on is ``keep = 1 - f``. Pass one of
            ``filter_ratio``, ``keep`` or ``batch_size``.
        n_chunks: chunks of the joint sampler (:meth:`select_pairwise`).
        temperature: logits are divided by it; 0 = greedy top-b, ``inf`` = uniform.
        mode: ``"learnability"`` (learner - reference), ``"easy_reference"`` (-reference) or
            ``"hard_learner"`` (learner).
        first_chunk: ``"softmax"`` of the diagonal (paper) or ``"uniform"`` (public port).
        normalize_logits: divide chunk logits by ``2 |selected| + 1`` (public port; off).
        reference_image / reference_text: ``(ids, vectors)`` of the reference's normalised
            embeddings, for :meth:`select_pairwise` without a reference matrix.
        reference_temperature / reference_bias: the reference's SigLIP ``t`` and ``b``.
        source: names where reference scores came from, for error messages.
        keep, batch_size, seed, rank, check_finite: see :class:`InStepSelector`.

    Scores are computed in float32 whatever the learner's dtype: learnability differences of
    about 0.01 do not survive a bf16 subtraction.
    """

    default_keep = 1.0 - 0.8
    input_name = "learner_losses"

    def __init__(
        self,
        reference_losses: np.ndarray | None = None,
        *,
        filter_ratio: float | None = None,
        keep: float | None = None,
        n_chunks: int = 16,
        temperature: float = 1.0,
        mode: str = "learnability",
        first_chunk: str = "softmax",
        normalize_logits: bool = False,
        reference_image: tuple[Any, Any] | None = None,
        reference_text: tuple[Any, Any] | None = None,
        reference_temperature: float | None = None,
        reference_bias: float | None = None,
        source: str = "the reference scores",
        **options: Any,
    ):
        if mode not in LEARNABILITY_MODES:
            raise ValueError(f"mode must be one of {LEARNABILITY_MODES}, got {mode!r}")
        if filter_ratio is not None:
            if keep is not None:
                raise ValueError(
                    f"filter_ratio={filter_ratio!r} and keep={keep!r} are alternatives "
                    "(keep = 1 - filter_ratio); pass one"
                )
            if not 0.0 < filter_ratio < 1.0:
                raise ValueError(f"filter_ratio must be in (0, 1), got {filter_ratio!r}")
            keep = 1.0 - float(filter_ratio)
        if not isinstance(n_chunks, int) or n_chunks < 1:
            raise ValueError(f"n_chunks must be a positive int, got {n_chunks!r}")
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if first_chunk not in ("softmax", "uniform"):
            raise ValueError(f"first_chunk must be 'softmax' or 'uniform', got {first_chunk!r}")
        super().__init__(keep=keep, **options)
        self.n_chunks = n_chunks
        self.temperature = float(temperature)
        self.mode = mode
        self.first_chunk = first_chunk
        self.normalize_logits = bool(normalize_logits)
        self.source = source
        self.reference_losses = (
            None
            if reference_losses is None
            else as_score_table(reference_losses, what="reference_losses")
        )
        self._ref_embed = self._embedding_tables(reference_image, reference_text)
        if self._ref_embed is not None and (
            reference_temperature is None or reference_bias is None
        ):
            raise ValueError(
                "reference embeddings need the reference's reference_temperature and "
                "reference_bias to rebuild its pair losses"
            )
        self.reference_temperature = reference_temperature
        self.reference_bias = reference_bias

    @property
    def filter_ratio(self) -> float:
        """The paper's ``f = 1 - keep``."""
        return 1.0 - self.keep

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "n_chunks": self.n_chunks,
            "temperature": self.temperature,
            "mode": self.mode,
            "first_chunk": self.first_chunk,
            "normalize_logits": self.normalize_logits,
        }

    def _embedding_tables(self, image, text) -> tuple[IdTable, IdTable] | None:
        if image is None and text is None:
            return None
        if image is None or text is None:
            raise ValueError("pass both reference_image and reference_text, or neither")
        return (
            IdTable(*image, what="reference image embedding", source=self.source),
            IdTable(*text, what="reference text embedding", source=self.source),
        )

    def reference_scores(self, ids, device: torch.device | str = "cpu") -> torch.Tensor:
        """Reference losses of ``ids`` as float32 ``[B]`` on ``device`` (async host copy)."""
        if self.reference_losses is None:
            raise ValueError(
                f"mode {self.mode!r} needs reference_losses (per example_id), got None"
            )
        values = lookup_scores(
            self.reference_losses, ids_to_numpy(ids), what="reference loss", source=self.source
        )
        return torch.from_numpy(values.astype(np.float32)).to(device, non_blocking=True)

    def reference_pair_losses(self, ids, device: torch.device | str = "cpu") -> torch.Tensor:
        """The reference's ``[B, B]`` SigLIP pair losses rebuilt from its stored embeddings."""
        if self._ref_embed is None:
            raise ValueError(
                "no reference pair losses: pass reference_pair_losses, or build the selector "
                "with reference_image/reference_text embeddings"
            )
        ids_np = ids_to_numpy(ids)
        img, txt = (table.gather(ids_np, device) for table in self._ref_embed)
        return frozen_pair_losses(
            img, txt, temperature=self.reference_temperature, bias=self.reference_bias
        )

    def selection_scores(self, ids: Any, scores: torch.Tensor) -> torch.Tensor:
        """Learnability (or the mode's score) of each row, float32 ``[B]``."""
        if self.mode == "hard_learner":
            return jest_scores(scores.float(), None, self.mode)
        if ids is None:
            raise ValueError(f"JEST mode {self.mode!r} needs the example ids of the super-batch")
        return jest_scores(scores.float(), self.reference_scores(ids, scores.device), self.mode)

    def choose(
        self, scores: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example JEST: ``k`` rows drawn ∝ ``exp(s_i / temperature)`` without replacement;
        weights are ones (the selected rows train with a plain mean)."""
        rows = sample_per_example(scores, k, temperature=self.temperature, generator=generator)
        return rows, torch.ones(k, dtype=torch.float32, device=scores.device)

    def select_pairwise(
        self,
        ids,
        learner_pair_losses: torch.Tensor,
        reference_pair_losses: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint JEST on ``[B, B]`` pair-loss matrices with the chunked sampler.

        ``reference_pair_losses`` defaults to the matrix rebuilt from the stored reference
        embeddings. Returns ``(rows, weights)`` as :meth:`select`.
        """
        ids_np = ids_to_numpy(ids)
        n = ids_np.shape[0]
        learner = check_pair_losses(
            learner_pair_losses, n, name="learner_pair_losses", check_finite=self.check_finite
        ).float()
        reference = None
        if self.mode != "hard_learner":
            if reference_pair_losses is None:
                reference = self.reference_pair_losses(ids_np, learner.device)
            else:
                reference = check_pair_losses(
                    reference_pair_losses,
                    n,
                    name="reference_pair_losses",
                    check_finite=self.check_finite,
                )
                if reference.device != learner.device:
                    raise ValueError(
                        f"reference_pair_losses on {reference.device} but learner_pair_losses "
                        f"on {learner.device}; expected one device"
                    )
            reference = reference.float()
        b = self.selected_size(n)
        scores = jest_scores(learner, reference, self.mode)
        rows = joint_sample(
            scores,
            b,
            n_chunks=self.n_chunks,
            temperature=self.temperature,
            first_chunk=self.first_chunk,
            normalize_logits=self.normalize_logits,
            generator=self.generator(learner.device),
        )
        weights = torch.ones(b, dtype=torch.float32, device=learner.device)
        # traced per row: the matched pair's score and the learner's matched-pair loss
        self._record(ids_np, scores.diagonal(), rows, weights, learner.diagonal())
        self.steps += 1
        return rows, weights


def score_super_batch(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    *,
    loss_fn: Callable[..., torch.Tensor],
    train_mode: bool | None = None,
    micro_batch_size: int | None = None,
) -> torch.Tensor:
    """The learner's no-grad scoring forward on a super-batch.

    Runs ``model(inputs)`` under ``torch.no_grad`` (in chunks of ``micro_batch_size`` rows
    along dim 0 to bound activation memory; inputs and outputs may be a tensor or a tuple of
    tensors, and the outputs are concatenated), then returns ``loss_fn(outputs, targets)``
    (or ``loss_fn(outputs)`` without targets) detached: per-example ``[B]`` for
    :meth:`JESTSelector.select`, or a ``[B, B]`` pair-loss matrix for
    :meth:`JESTSelector.select_pairwise` (e.g. ``lambda out: sigmoid_pair_losses(*out,
    temperature=t, bias=b)``).

    ``train_mode``: ``True``/``False`` sets ``model.train()``/``model.eval()`` for the forward
    and restores the previous mode after; ``None`` leaves it as is. RHO-LOSS scores in train
    mode (BatchNorm then updates its running statistics even under no_grad).
    """
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size!r}")
    was_training = model.training
    if train_mode is not None:
        model.train(train_mode)
    try:
        with torch.no_grad():
            if micro_batch_size is None:
                outputs = model(inputs)
            else:
                parts = [model(chunk) for chunk in _split(inputs, micro_batch_size)]
                outputs = _concat(parts)
            losses = loss_fn(outputs) if targets is None else loss_fn(outputs, targets)
    finally:
        model.train(was_training)
    if not isinstance(losses, torch.Tensor) or losses.dim() not in (1, 2):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
        raise ValueError(
            f"loss_fn must return per-example [B] or pairwise [B, B] losses, got {shape}"
        )
    return losses.detach()


def _split(inputs: Any, size: int) -> list[Any]:
    """Row chunks of a tensor, or of every tensor of a tuple/list (e.g. image and text)."""
    if isinstance(inputs, torch.Tensor):
        return list(torch.split(inputs, size))
    if isinstance(inputs, tuple | list):
        columns = [torch.split(t, size) for t in inputs]
        return [type(inputs)(chunk) for chunk in zip(*columns, strict=True)]
    raise TypeError(
        f"micro-batched inputs must be a tensor or a tuple of tensors, got {type(inputs)}"
    )


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], tuple | list):
        return type(parts[0])(torch.cat(group) for group in zip(*parts, strict=True))
    raise TypeError(
        f"micro-batched outputs must be tensors or tuples of tensors, got {type(parts[0])}"
    )
