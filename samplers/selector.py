"""The public base of in-step selectors: a method implements only its choice.

The loader yields a super-batch of ``B`` rows with their ``example_id`` s; inside the step the
learner scores it (no grad) and the selector returns which ``k`` rows to train on and their loss
weights. :class:`InStepSelector` owns everything that is not the method: the share kept
(``keep`` or an exact ``batch_size``), input checks, the seed, the rank, one ``torch.Generator``
per device (so selection on a GPU draws its noise there and never waits for the host), the step
counter and checkpoints. A method overrides

- :meth:`InStepSelector.choose` ``(scores [B], k, generator) -> (rows [k], weights [k])``, and,
  when its score is not the input itself,
- :meth:`InStepSelector.selection_scores` ``(ids, scores) -> [B]`` (e.g. RHO-LOSS subtracts the
  irreducible loss it reads by id),
- :meth:`InStepSelector.config` for its own knobs, and the ``extra_state`` pair for mutable state.

See docs/extending.md. DDP: each rank selects from its own super-batch; the generators are seeded
from ``(seed, rank)``, so ranks draw independent noise.

With ``trace=`` every selection is recorded for SQL (candidates, scores, kept rows, weights),
buffered on the device and written in chunks (docs/traces.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from winnow.samplers._instep import (
    DeviceGenerators,
    check_fraction,
    check_losses,
    default_rank,
    ids_to_numpy,
    resolve_batch_size,
)
from winnow.samplers._trace import StepTrace
from winnow.selection._state import check_state, make_state

__all__ = ["InStepSelector"]

_VERSION = 2
_K_STEPS = "steps"
_K_GENERATORS = "generators"
_K_EXTRA = "extra"


class InStepSelector:
    """Base of the in-step selectors (JEST, RHO-LOSS, top-loss, importance sampling, yours).

    Args:
        keep: the share of each super-batch trained on, in ``(0, 1]``: ``k = max(1,
            floor(B * keep))`` rows. Defaults to the method's :attr:`default_keep`.
        batch_size: keep exactly this many rows instead (not with ``keep``).
        seed: seeds the selector's generators (combined with the rank).
        rank: this process's rank (default: from ``torch.distributed`` when the selector first
            draws, so one built before the process group starts follows it; else 0).
        check_finite: NaN/inf check of the scores passed in; ``None`` = only on the CPU (on an
            accelerator it would cost a host sync per step).
        trace: a trace writer (``ScoreStore(root).trace_writer(run)``) that records every
            step's candidates, scores, kept rows and weights (docs/traces.md).
        trace_every: record 1 step in ``trace_every`` (the steps divisible by it).
    """

    #: the share kept when the caller gives neither ``keep`` nor ``batch_size``
    default_keep: ClassVar[float] = 0.1
    #: the name of :meth:`select`'s score argument, in error messages
    input_name: ClassVar[str] = "scores"

    def __init__(
        self,
        *,
        keep: float | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        check_finite: bool | None = None,
        trace: Any = None,
        trace_every: int = 1,
    ):
        if keep is not None and batch_size is not None:
            raise ValueError(
                f"keep={keep!r} and batch_size={batch_size!r} are alternatives; pass one"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.keep = check_fraction(self.default_keep if keep is None else keep, "keep")
        self.batch_size = batch_size
        self.seed = int(seed)
        if rank is not None:
            default_rank(rank)  # checked now, used as given
        self._rank_arg = rank
        self.check_finite = check_finite
        self._gens: DeviceGenerators | None = None
        self.steps = 0
        self._trace = None if trace is None else StepTrace(trace, every=trace_every, owner=self)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def rank(self) -> int:
        """This process's rank: as given, else the process group's (fixed at the first draw)."""
        if self._gens is not None:
            return self._gens.rank
        return default_rank(self._rank_arg)

    @property
    def _generators(self) -> DeviceGenerators:
        if self._gens is None:
            self._gens = DeviceGenerators(self.seed, default_rank(self._rank_arg))
        return self._gens

    # ----------------------------------------------------------------- the method's part
    def choose(
        self, scores: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick ``k`` of the ``B`` rows from float32 ``scores [B]`` (higher = more wanted).

        Returns ``(rows, weights)``: int64 ``[k]`` positions into the super-batch and float32
        ``[k]`` loss weights, on the scores' device. Draw all randomness from ``generator``.
        """
        raise NotImplementedError(f"{self.name} must implement choose(scores, k, generator)")

    def selection_scores(self, ids: Any, scores: torch.Tensor) -> torch.Tensor:
        """The score :meth:`choose` ranks, from the checked input ``scores [B]`` and ``ids``
        (int64 numpy ``[B]``, or None when the caller passed none). Default: the input, in
        float32 (half-precision differences are never rounded away)."""
        return scores.float()

    def config(self) -> dict[str, Any]:
        """Plain values identifying the configuration; extend it with the method's knobs."""
        return {
            "method": self.name,
            "keep": self.keep,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "rank": self.rank,
        }

    def extra_state(self) -> dict[str, Any]:
        """Mutable method state beyond the step count and generators (tensors, plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""
        return None

    # ----------------------------------------------------------------- shared machinery
    def selected_size(self, super_batch: int) -> int:
        """How many rows :meth:`select` keeps from a super-batch of ``super_batch`` rows."""
        return resolve_batch_size(super_batch, fraction=self.keep, batch_size=self.batch_size)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This selector's generator on ``device`` (created from the seed on first use)."""
        return self._generators.get(torch.device(device))

    def select(self, ids: Any, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the super-batch to train on, and their loss weights.

        ``ids``: int ``[B]`` example ids (keep them on the CPU; ``None`` when the method needs
        no ids); ``scores``: float ``[B]`` per-example values on any device (reduction="none").
        Returns ``(rows, weights)`` as :meth:`choose`; train with
        ``(weights * per_example_loss[rows]).mean()``.
        """
        ids_np = None if ids is None else ids_to_numpy(ids)
        checked = check_losses(
            scores,
            None if ids_np is None else ids_np.shape[0],
            name=self.input_name,
            check_finite=self.check_finite,
        )
        if checked.shape[0] == 0:
            raise ValueError(f"{self.name} got an empty super-batch (0 rows); expected >= 1")
        k = self.selected_size(checked.shape[0])
        values = self.selection_scores(ids_np, checked)
        rows, weights = self.choose(values, k, self.generator(values.device))
        loss = checked if self.input_name == "learner_losses" else None
        self._record(ids_np, values, rows, weights, loss)
        self.steps += 1
        return rows, weights

    def _record(self, ids, scores, rows, weights, loss=None) -> None:
        """Trace this step's choice (before ``steps`` counts it); no host sync."""
        if self._trace is not None and self._trace.wants(self.steps):
            self._trace.record(self.steps, ids, scores, rows, weights, loss=loss)

    def close(self) -> None:
        """Write what the trace holds and close its writer (finishing the run's manifest)."""
        if self._trace is not None:
            self._trace.close()

    def state_dict(self) -> dict[str, Any]:
        """Step count, generator states and the method's extra state (no score tables).

        Loadable with ``torch.load``'s defaults (docs/conventions.md). Flushes the trace.
        """
        if self._trace is not None:
            self._trace.flush()
        return make_state(
            self.name,
            _VERSION,
            self.config(),
            **{
                _K_STEPS: self.steps,
                _K_GENERATORS: self._generators.state_dict(),
                _K_EXTRA: self.extra_state(),
            },
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the exact noise stream; refuses a state of another method, seed, rank or
        configuration, naming what differs."""
        check_state(
            state,
            kind=self.name,
            version=_VERSION,
            config=self.config(),
            required=(_K_STEPS, _K_GENERATORS, _K_EXTRA),
        )
        self.load_extra_state(state[_K_EXTRA])
        self._generators.load_state_dict(state[_K_GENERATORS])
        self.steps = int(state[_K_STEPS])
        if self._trace is not None:
            self._trace.resume(self.steps)
