"""Hugging Face adapters: ``transformers.Trainer``, ``accelerate`` and ``datasets``
(docs/frameworks.md).

- :class:`WinnowTrainer`: a ``transformers.Trainer`` that trains on a winnow epoch sampler's plan
  (feeding each example's loss back with ``sampler.reweight``) and/or lets an in-step selector
  pick the rows of every batch (a no-grad scoring forward, then the step on the chosen rows). It
  keeps the sampler's own sharding under the Trainer's accelerate ``prepare``, counts each epoch's
  own steps (the Trainer assumes every epoch is as long as the first: it would size the LR
  schedule, the stopping step and a resumed run's position from it), and puts the sampler, its
  score table and the selector into the Trainer's checkpoints.
- :func:`prepare_loader`: ``accelerator.prepare(loader)`` for a loader with a winnow sampler.
  Accelerate splits every loader's batches across processes (``BatchSamplerShard``); a winnow
  sampler already yields only its rank's share, and plain ``prepare`` is refused when iterated.
- :func:`per_example_loss`: unreduced loss of a classifier, regressor or language model.

transformers, accelerate and datasets are imported inside functions (the Trainer class is
built on first use), never by ``import winnow``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from winnow.samplers._dist import gather_rank_states
from winnow.samplers.epoch import EpochSampler
from winnow.samplers.hardbatch import HardBatchSampler
from winnow.samplers.selector import InStepSelector

__all__ = ["ID_KEY", "WinnowTrainer", "per_example_loss", "prepare_loader"]  # noqa: F822

#: the feature under which WinnowTrainer's batches carry their ``example_id`` s
ID_KEY = "example_id"
#: the file WinnowTrainer adds to each checkpoint folder
STATE_FILE = "winnow_state.pt"
_IGNORE = -100  # transformers' label for "no target here" (padding, prompt tokens)


# ---------------------------------------------------------------------------- accelerate
def prepare_loader(accelerator: Any, loader: DataLoader) -> Any:
    """``accelerator.prepare(loader)``, keeping a winnow sampler's own per-rank shard.

    Accelerate wraps the loader's batch sampler in a ``BatchSamplerShard`` that hands batch
    ``i`` to process ``i % world``; for a loader whose sampler (or batch sampler) is a winnow
    one, this sets that wrapper to pass every batch through (one process, no padding of a
    short last batch), which is how transformers itself neutralises it for its own rank-aware
    batch sampler. Device placement and the rest of ``prepare`` are unchanged. Other loaders
    are prepared as usual. ``dispatch_batches=True`` (rank 0 reads every batch) is refused.
    """
    prepared = accelerator.prepare(loader)
    if not _holds_winnow_sampler(loader):
        return prepared
    if type(prepared).__name__ == "DataLoaderDispatcher":
        raise ValueError(
            "Accelerator(dispatch_batches=True) reads every batch on rank 0 and splits it, which "
            "cannot keep a winnow sampler's per-rank plan; use dispatch_batches=False"
        )
    shard = getattr(prepared, "batch_sampler", None)
    if type(shard).__name__ == "BatchSamplerShard":
        shard.num_processes = 1
        shard.process_index = 0
        # With even_batches, even one process pads a short last batch with ids from the
        # start of the epoch.
        shard.even_batches = False
    return prepared


def _holds_winnow_sampler(loader: Any) -> bool:
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = (loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
    return any(isinstance(c, EpochSampler | HardBatchSampler) for c in candidates)


# ---------------------------------------------------------------------------- losses
def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = False):
    """Unreduced loss per example, float32 ``[B]``, as transformers' heads define it.

    - classification: ``logits [B, C]``, integer ``labels [B]``: cross-entropy;
    - regression (``num_labels=1``): ``logits [B, 1]`` or ``[B]``, float ``labels [B]``: MSE;
    - multi-label: float ``labels`` shaped like ``logits``: BCE with logits, mean over labels;
    - token-level (language models): ``logits [B, T, V]``, ``labels [B, T]``: cross-entropy per
      token, mean over each example's labelled tokens (``-100`` = none; an example with none
      gets 0). ``shift=True`` predicts token ``t+1`` from position ``t`` (causal LMs).
    """
    if labels.dtype.is_floating_point:
        if logits.shape != labels.shape and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        if logits.shape != labels.shape:
            raise ValueError(
                f"float labels {tuple(labels.shape)} must match logits {tuple(logits.shape)}"
            )
        if logits.ndim == 1:
            return F.mse_loss(logits.float(), labels.float(), reduction="none")
        per = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        return per.flatten(1).mean(1)
    if logits.ndim != labels.ndim + 1:
        raise ValueError(
            f"logits {tuple(logits.shape)} must have one dimension more than integer labels "
            f"{tuple(labels.shape)} (the classes)"
        )
    if logits.ndim == 2:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    tokens = F.cross_entropy(
        logits.float().flatten(0, -2), labels.flatten(), reduction="none", ignore_index=_IGNORE
    ).view(labels.shape)
    counted = (labels != _IGNORE).flatten(1).sum(1)
    return tokens.flatten(1).sum(1) / counted.clamp_min(1)


def _is_causal_lm(model: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # the Trainer's own test for shifting labels (its label smoother does the same)
    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


# ---------------------------------------------------------------------------- data
class _WithIds(Dataset):
    """Dict rows with their ``example_id`` under :data:`ID_KEY` (collators want dicts)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _with_id(self.dataset[index], index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # datasets.Dataset reads a whole batch from Arrow at once.
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(indices) if getitems else [self.dataset[i] for i in indices]
        return [_with_id(row, i) for row, i in zip(rows, indices, strict=True)]


def _with_id(row: Any, index: int) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise TypeError(
            f"WinnowTrainer needs dict examples (like datasets.Dataset rows), got "
            f"{type(row).__name__}"
        )
    if ID_KEY in row:
        raise ValueError(f"the examples already have a {ID_KEY!r} feature; rename it")
    return {**row, ID_KEY: index}


class _CollateWithIds:
    """The Trainer's collator on the rows without their ids, then the ids as int64 ``[B]``."""

    def __init__(self, collate: Callable[[list], Any]):
        self.collate = collate

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        ids = torch.tensor([row[ID_KEY] for row in rows], dtype=torch.int64)
        batch = self.collate([{k: v for k, v in row.items() if k != ID_KEY} for row in rows])
        batch[ID_KEY] = ids
        return batch


def _is_hf_dataset(dataset: Any) -> bool:
    from transformers.utils import is_datasets_available

    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)


def _take_rows(inputs: dict[str, Any], rows: torch.Tensor, size: int) -> dict[str, Any]:
    """The chosen rows of every per-example input (dim 0 of length ``size``)."""
    return {
        k: v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim and len(v) == size else v
        for k, v in inputs.items()
    }


# ---------------------------------------------------------------------------- the Trainer
class _TrainerHooks:
    """A ``transformers.Trainer`` that trains on a winnow sampler's plan (module docstring).

    Args (besides the Trainer's own):
        sampler: a winnow epoch sampler over ``train_dataset`` (N = its length). Its loss
            weights apply (``sampler.reweight``); its ``set_epoch`` is driven by the Trainer.
        selector: an in-step selector; every batch of ``per_device_train_batch_size`` rows is
            scored without gradients and the step trains on the rows it keeps, weighted.
        loss_fn: ``(outputs, inputs) -> [B]`` unreduced loss; default :func:`per_example_loss`
            of ``outputs["logits"]`` and ``inputs["labels"]`` (shifted for causal LMs).
        score_fn: ``(outputs, inputs) -> [B]`` the selector's score; default ``loss_fn``.

    ``train_dataset`` rows must be dicts (``datasets.Dataset`` rows, tokenizer outputs); batches
    carry the ids under :data:`ID_KEY`, which is removed before the model sees them. Under DDP
    each rank trains on its own shard of the plan, as the sampler cuts it.
    """

    def __init__(
        self,
        *args: Any,
        sampler: EpochSampler | None = None,
        selector: InStepSelector | None = None,
        loss_fn: Callable[[Any, dict[str, Any]], torch.Tensor] | None = None,
        score_fn: Callable[[Any, dict[str, Any]], torch.Tensor] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if sampler is not None and not isinstance(sampler, EpochSampler):
            raise TypeError(
                f"sampler must be a winnow EpochSampler (InfoBatchSampler, RS2Sampler, "
                f"PrunedSampler, ...), got {type(sampler).__name__}"
            )
        if selector is not None and not isinstance(selector, InStepSelector):
            raise TypeError(f"selector must be an InStepSelector, got {type(selector).__name__}")
        if sampler is not None and self.train_dataset is not None:
            if len(self.train_dataset) != sampler.num_examples:
                raise ValueError(
                    f"the sampler plans over {sampler.num_examples} examples but train_dataset "
                    f"has {len(self.train_dataset)}"
                )
        run = None if sampler is None else sampler.policy.num_epochs
        epochs = math.ceil(self.args.num_train_epochs)
        if run is not None and self.args.max_steps <= 0 and epochs != run:
            raise ValueError(
                f"{type(sampler).__name__} plans a run of num_epochs={run} but the Trainer runs "
                f"num_train_epochs={self.args.num_train_epochs}; make them equal"
            )
        self.winnow_sampler = sampler
        self.winnow_selector = selector
        self.loss_fn = loss_fn
        self.score_fn = score_fn
        # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps
        self.loss_is_scaled_for_ga = False
        self._winnow_max_steps: int | None = None

    # ----------------------------------------------------------------- data
    def get_train_dataloader(self) -> Any:
        """The train loader over ``(row + example_id)`` with the winnow sampler, prepared so
        that each rank keeps its own shard (:func:`prepare_loader`)."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        from transformers.trainer_utils import seed_worker

        dataset, collate = self.train_dataset, self.data_collator
        if _is_hf_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collate = self._get_collator_with_removed_columns(collate, description="training")
        args = self.args
        sampler = self.winnow_sampler
        if sampler is None:
            sampler = self._get_train_sampler(dataset)
        workers = args.dataloader_num_workers
        options: dict[str, Any] = {}
        if workers > 0:
            options["persistent_workers"] = args.dataloader_persistent_workers
            if args.dataloader_prefetch_factor is not None:
                options["prefetch_factor"] = args.dataloader_prefetch_factor
        loader = DataLoader(
            _WithIds(dataset),
            batch_size=self._train_batch_size,
            sampler=sampler,
            collate_fn=_CollateWithIds(collate),
            drop_last=args.dataloader_drop_last,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            worker_init_fn=functools.partial(
                seed_worker, num_workers=workers, rank=args.process_index
            ),
            **options,
        )
        return prepare_loader(self.accelerator, loader)

    # ----------------------------------------------------------------- the step
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if ID_KEY not in inputs:  # evaluation and prediction: the Trainer's own loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        ids = inputs.pop(ID_KEY)
        weights = None
        if self.winnow_selector is not None:
            inputs, ids, weights = self._select(model, inputs, ids)
        outputs = model(**inputs)
        losses = self._losses(outputs, inputs, model)
        if self.winnow_sampler is not None and weights is None:
            loss = self.winnow_sampler.reweight(ids, losses)
        elif self.winnow_sampler is not None:
            # Both: the selector's row weights times the plan's loss weights of those rows.
            self.winnow_sampler.update(ids, losses)
            plan = self.winnow_sampler.weights_of(ids.cpu().numpy())
            loss = (weights * torch.as_tensor(plan, device=losses.device) * losses).mean()
        elif weights is not None:
            loss = (weights * losses).mean()
        else:
            loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    def _losses(self, outputs: Any, inputs: dict[str, Any], model: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(outputs, inputs)
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                "WinnowTrainer needs a loss per example: the batch has no 'labels'; pass "
                "loss_fn=(outputs, inputs) -> [B]"
            )
        shift = _is_causal_lm(self.accelerator.unwrap_model(model))
        return per_example_loss(outputs["logits"], labels, shift=shift)

    def _select(self, model: Any, inputs: dict[str, Any], ids: torch.Tensor):
        """Score the batch without gradients; keep the selector's rows and their weights."""
        size = len(ids)
        plain = self.accelerator.unwrap_model(model)  # no DDP collectives for a no-grad pass
        with torch.no_grad():
            outputs = plain(**inputs)
            score = self.score_fn or (lambda out, inp: self._losses(out, inp, plain))
            scores = score(outputs, inputs).detach()
        rows, weights = self.winnow_selector.select(ids.cpu(), scores)
        return _take_rows(inputs, rows, size), ids[rows.to(ids.device)], weights

    # ----------------------------------------------------------------- step counts
    def _epoch_updates(self, num_epochs: int) -> list[int]:
        """Optimiser steps of each epoch on this rank (the last accumulation may be short)."""
        steps = self.winnow_sampler.epoch_steps(
            self._train_batch_size, num_epochs, drop_last=self.args.dataloader_drop_last
        )
        accumulate = self.args.gradient_accumulation_steps
        return [max(1, math.ceil(n / accumulate)) for n in steps]

    def _counts_epochs(self) -> bool:
        return self.winnow_sampler is not None and self.args.max_steps <= 0

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        values = list(super().set_initial_training_values(args, dataloader))
        if not self._counts_epochs():
            return tuple(values)
        updates = self._epoch_updates(values[0])
        # (num_train_epochs, updates per epoch, examples, samples, total batch, batches per
        # epoch, max_steps): the loop runs up to the longest epoch (a shorter one ends when its
        # loader does) and the LR schedule spans the run's own total.
        values[1] = max(updates)
        values[6] = self._winnow_max_steps or sum(updates)
        return tuple(values)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs,
                             resume_from_checkpoint, trial):  # fmt: skip
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None or not self._counts_epochs():
            return epochs_trained, steps_in_epoch
        # The Trainer divides the step by a constant epoch length; walk the real ones instead.
        done = self.state.global_step
        for epoch, updates in enumerate(self._epoch_updates(num_train_epochs)):
            if done < updates:
                skip = 0 if self.args.ignore_data_skip else done
                return epoch, skip * self.args.gradient_accumulation_steps
            done -= updates
        return num_train_epochs, 0

    def _run_epoch(self, **kwargs: Any) -> Any:
        if self._counts_epochs():
            epoch = kwargs["epoch"]
            self.winnow_sampler.set_epoch(epoch)  # planned now, so its length is known
            batches = self.winnow_sampler.steps_per_epoch(
                self._train_batch_size, drop_last=self.args.dataloader_drop_last
            )
            kwargs["steps_in_epoch"] = batches
            kwargs["num_update_steps_per_epoch"] = max(
                1, math.ceil(batches / self.args.gradient_accumulation_steps)
            )
            # A pruned epoch's length is an estimate until planned: never stop a run early.
            total = sum(self._epoch_updates(math.ceil(self.args.num_train_epochs)))
            self.state.max_steps = max(self.state.max_steps, total)
        return super()._run_epoch(**kwargs)

    # ----------------------------------------------------------------- checkpoints
    def _inner_training_loop(self, *args: Any, **kwargs: Any) -> Any:
        checkpoint = kwargs.get("resume_from_checkpoint")
        if checkpoint is not None:
            self._load_winnow_state(checkpoint)
        return super()._inner_training_loop(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        state = self._winnow_state()  # collectives: every rank takes part
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
            torch.save(state, path)

    def _winnow_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"max_steps": int(self.state.max_steps)}
        if self.winnow_sampler is not None:
            # Position 0: on resume the Trainer replays the epoch from its start and skips the
            # batches already trained; their feedback is in the score table, still pending.
            state["sampler"] = self.winnow_sampler.state_dict(position=0)
            state["scores"] = self.winnow_sampler.scores.state_dict()
        if self.winnow_selector is not None:
            state["selector"] = gather_rank_states(self.winnow_selector.state_dict())
        return state

    def _load_winnow_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if self.winnow_sampler is None and self.winnow_selector is None:
            return
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {STATE_FILE}: it was not written by a WinnowTrainer, so the "
                "sampler's plan cannot be resumed"
            )
        state = torch.load(path)
        if self.winnow_sampler is not None:
            self.winnow_sampler.scores.load_state_dict(state["scores"])
            self.winnow_sampler.load_state_dict(state["sampler"])
            self._winnow_max_steps = int(state["max_steps"])
        if self.winnow_selector is not None:
            states = state["selector"]
            rank = self.winnow_selector.rank
            if rank >= len(states):
                raise ValueError(
                    f"{path} holds selector states of {len(states)} ranks; this is rank {rank}"
                )
            self.winnow_selector.load_state_dict(states[rank])


# The Trainer methods WinnowTrainer extends (transformers 5.25). Were one renamed, the Trainer
# would silently skip winnow's step counts or resume position, so a missing one is refused.
_TRAINER_HOOKS = (
    "get_train_dataloader",
    "compute_loss",
    "set_initial_training_values",
    "_init_training_state",
    "_run_epoch",
    "_inner_training_loop",
    "_save_checkpoint",
    "_remove_unused_columns",
    "_get_collator_with_removed_columns",
)


@functools.cache
def _trainer_class() -> type:
    try:
        import transformers
        from transformers import Trainer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "winnow.samplers.huggingface needs transformers: pip install 'winnow[hf]'"
        ) from err
    missing = [name for name in _TRAINER_HOOKS if not hasattr(Trainer, name)]
    if missing:
        raise ImportError(
            f"WinnowTrainer extends transformers.Trainer's {missing}, which transformers "
            f"{transformers.__version__} lacks; it is tested with transformers 5.25"
        )
    return type(
        "WinnowTrainer",
        (_TrainerHooks, Trainer),
        {"__module__": __name__, "__qualname__": "WinnowTrainer", "__doc__": _TrainerHooks.__doc__},
    )


def __getattr__(name: str) -> Any:
    # The Trainer subclass needs transformers' base class; build it on first use so that
    # importing this module (and winnow) never imports transformers.
    if name == "WinnowTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
