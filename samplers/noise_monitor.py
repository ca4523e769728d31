"""The gradient noise scale measured during training (docs/noise-scale.md, "During training").

:class:`NoiseScaleMonitor` plugs into a plain loop and into framework callbacks. Two ways in:

- **hooks** (``attach(model, estimator=...)`` once, then ``step()`` after each optimiser step's
  last backward and before ``optimizer.step()`` / ``zero_grad()``):

  - ``"two_batch"``: a tensor hook on every trainable parameter sees each backward's own
    gradient before it is accumulated into ``.grad`` and before DDP all-reduces it, so
    ``|G_small|^2`` is one micro-batch's gradient on one rank, and ``|G_big|^2`` is ``.grad``
    as the backward leaves it: accumulated and all-reduced. Needs DDP or gradient accumulation
    (``b_small < b_big``); costs one norm per parameter per backward, twice.
  - ``"per_example"``: ghost norms from the training backward itself (the layer rules of
    docs/gradient-norms.md, applied to the output gradients the backward computes anyway), so
    ``b_small = 1``. Every trainable parameter must sit in a layer with a ghost rule, used once
    per forward; anything else is refused (use ``"two_batch"``, or compute the norms yourself
    and call :meth:`NoiseScaleMonitor.observe_per_example`).

- **explicit** norms: :meth:`NoiseScaleMonitor.observe` ``(small_sq, big_sq, b_small, b_big)``
  or :meth:`NoiseScaleMonitor.observe_per_example` ``(per_example_norms, mean_grad_sq)``.

``.grad`` is read when each backward ends (an autograd final callback queued behind DDP's own,
which writes the all-reduced gradient), so gradient clipping or AMP unscaling between the
backward and ``step()`` does not change what is measured. Nothing here syncs with the device
during a step: norms stay on their device until
``flush_steps`` steps are pending (or ``state_dict``/``close``/``estimate``), then one copy
settles them (``samplers._noise_log``). With ``trace=`` the smoothed estimate is logged into the
store's ``noise_scale`` view every ``log_every`` steps.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from winnow.samplers._dist import is_distributed
from winnow.samplers._grad_hooks import ghost_modules, norm_sq, stack_on_one_device
from winnow.samplers._noise_log import NoiseLog
from winnow.samplers._trace import check_trace_writer
from winnow.selection._ghost import rule_for
from winnow.selection._state import check_state, make_state
from winnow.selection.noise_scale import NoiseScaleEstimate

__all__ = ["NoiseScaleMonitor"]

# autograd's engine: its final callbacks run when a backward pass ends (DDP and FSDP use it too)
_ENGINE = torch.autograd.Variable._execution_engine

_VERSION = 1
_ESTIMATORS = ("two_batch", "per_example")
_REDUCTIONS = ("mean", "sum")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _scalar(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


class NoiseScaleMonitor:
    """Measures ``B_simple`` (the critical batch size's estimate) while the model trains.

    Args:
        beta: EMA factor of the two smoothed parts (:class:`NoiseScaleTracker`, GPT-NeoX 0.99).
        every: measure 1 optimiser step in ``every`` (the steps divisible by it); the hooks do
            nothing on the other steps.
        log_every: log the smoothed estimate once per ``log_every`` steps (and at ``close``).
        trace: a trace writer (``ScoreStore(root).trace_writer(run)``); rows go to the
            ``noise_scale`` view. Under DDP give only rank 0 one (every rank sees the same
            all-reduced gradient and its own local one).
        world_size: ranks averaging the gradient (default: ``torch.distributed``'s, else 1).

    Read :attr:`estimate` / :attr:`b_simple` (settles pending steps: one host copy) or
    :meth:`history` (every logged row).
    """

    def __init__(
        self,
        *,
        beta: float = 0.99,
        every: int = 1,
        log_every: int = 100,
        trace: Any = None,
        world_size: int | None = None,
    ):
        if trace is not None:
            check_trace_writer(trace, "write_noise_scale")
        self.every = _positive_int(every, "every")
        self._log = NoiseLog(
            beta=beta, log_every=_positive_int(log_every, "log_every"), writer=trace
        )
        if world_size is None:
            world_size = torch.distributed.get_world_size() if is_distributed() else 1
        self.world_size = _positive_int(world_size, "world_size")
        self.steps = 0
        self._model: nn.Module | None = None
        self._handles: list[Any] = []
        self._mode: str | None = None
        self._reduction = "mean"
        self._params: list[torch.Tensor] = []
        # what the hooks saw this step: per parameter and backward its gradient's norm
        # (two_batch), or per layer call the summed squared per-example norms (per_example)
        self._sq: list[torch.Tensor] = []
        self._calls: dict[nn.Module, int] = {}
        self._sizes: list[int] = []  # rows of each forward with grad this step
        self._backwards = 0
        self._big: torch.Tensor | None = None  # |.grad|^2 as the last backward left it
        self._queued = False
        self._problem: str | None = None
        weakref.finalize(self, self._log.flush)

    @property
    def beta(self) -> float:
        return self._log.tracker.beta

    @property
    def log_every(self) -> int:
        return self._log.log_every

    @property
    def measuring(self) -> bool:
        """Whether the current step is measured (compute explicit norms only then)."""
        return self.steps % self.every == 0

    # ------------------------------------------------------------------------- explicit
    def observe(self, small_sq: Any, big_sq: Any, b_small: int, b_big: int) -> None:
        """One step from two squared gradient norms at the same parameters: ``|G_small|^2`` of
        the mean gradient over ``b_small`` examples, ``|G_big|^2`` over ``b_big > b_small``
        (0-d tensors on any device, or floats). Advances the step count."""
        if not 0 < b_small < b_big:
            raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
        if self.measuring:
            pair = torch.stack([_scalar(small_sq, "small_sq"), _scalar(big_sq, "big_sq")])
            self._log.add(self.steps, pair, b_small, b_big, "two_batch")
        self.steps += 1

    def observe_per_example(
        self, per_example_norms: torch.Tensor, mean_grad_sq: Any, *, batch_size: int | None = None
    ) -> None:
        """One step from per-example gradient norms ``[B]`` (not squared; e.g.
        ``per_example_grad_norms``) and ``|g_mean|^2``, the squared norm of the mean gradient
        (``grad_sq_norm(model.parameters())`` after ``loss.mean().backward()``) over
        ``batch_size`` examples (default ``B``; under DDP the global batch, when the norms are
        this rank's). Advances the step count."""
        if not isinstance(per_example_norms, torch.Tensor) or per_example_norms.dim() != 1:
            raise ValueError("per_example_norms must be a 1-D tensor [B] of gradient norms")
        b_big = per_example_norms.shape[0] if batch_size is None else batch_size
        if b_big < 2:
            raise ValueError(f"the per-example estimator needs a batch of >= 2, got {b_big}")
        if self.measuring:
            small = per_example_norms.detach().double().square().mean()
            pair = torch.stack([small, _scalar(mean_grad_sq, "mean_grad_sq").to(small.device)])
            self._log.add(self.steps, pair, 1, b_big, "per_example")
        self.steps += 1

    # ------------------------------------------------------------------------- hooks
    def attach(
        self, model: nn.Module, *, estimator: str = "two_batch", loss_reduction: str = "mean"
    ) -> NoiseScaleMonitor:
        """Hook ``model`` (or its DDP wrapper) for :meth:`step`; returns ``self``.

        ``loss_reduction`` says how each backward's loss was reduced: ``"mean"`` =
        ``loss.mean() / accumulation_steps`` (the Lightning, Hugging Face and Accelerate
        convention), ``"sum"`` = ``loss.sum()``. The two-batch ``B_simple`` holds for either if
        every micro-batch has the same size; the per-example one needs the right value.
        """
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        if loss_reduction not in _REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {_REDUCTIONS}, got {loss_reduction!r}")
        if self._handles:
            raise ValueError("the monitor is attached already; detach() first")
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("model has no parameters with requires_grad=True")
        self._model, self._mode, self._reduction = model, estimator, loss_reduction
        self._handles.append(
            model.register_forward_pre_hook(self._forward_pre_hook, with_kwargs=True)
        )
        if estimator == "two_batch":
            for p in self._params:
                self._handles.append(p.register_hook(self._param_hook))
        else:
            for module in ghost_modules(model):
                self._handles.append(module.register_forward_hook(self._ghost_forward_hook))
        return self

    def detach(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._model, self._mode, self._params = [], None, None, []
        self._reset_step()

    def _reset_step(self) -> None:
        self._sq, self._sizes, self._backwards, self._problem = [], [], 0, None
        self._big = None
        self._calls = {}

    def _forward_pre_hook(self, module, args, kwargs):
        if not (self.measuring and torch.is_grad_enabled()):
            return
        first = next(
            (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim()),
            None,
        )
        if first is not None:
            self._sizes.append(int(first.shape[0]))
        self._calls = {}

    def _param_hook(self, grad: torch.Tensor) -> None:
        if self.measuring:
            self._backward_seen()
            self._sq.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))

    def _backward_seen(self) -> None:
        """Count this backward once, and read ``.grad`` when it ends. Final callbacks run in
        order, and one may queue another: ours queues the read, so the read runs after every
        callback queued during the backward, DDP's (which waits for the all-reduce and writes
        the averaged gradient into ``.grad``) among them."""
        if not self._queued:
            self._queued = True
            self._backwards += 1
            _ENGINE.queue_callback(lambda: _ENGINE.queue_callback(self._read_grad))

    def _read_grad(self) -> None:
        self._queued = False
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            self._big = norm_sq(grads)

    def _ghost_forward_hook(self, module, args, output):
        if not (self.measuring and torch.is_grad_enabled()):
            return
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        calls = self._calls
        calls[module] = calls.get(module, 0) + 1
        if calls[module] > 1:
            self._problem = f"{type(module).__name__} is called more than once per forward"
            return
        x = args[0].detach()
        batch, version = x.shape[0], x._version
        rule = rule_for(module)
        if output.shape[0] != batch:
            self._problem = f"{type(module).__name__} does not keep the batch on dim 0"
            return

        def hook(grad: torch.Tensor) -> None:
            self._backward_seen()
            if x._version != version:
                self._problem = f"the input of a {type(module).__name__} was modified in place"
                return
            sq = rule(module, x, grad.detach())
            total = torch.stack([v.sum() for v in sq.values()]).double()
            scale = float(batch) ** 2 if self._reduction == "mean" else 1.0
            self._sq.append(total.sum() * scale)

        output.register_hook(hook)

    def step(self, *, batch_size: int | None = None, accumulation_steps: int | None = None) -> None:
        """Record this optimiser step (hooks mode). Call it once per step, anywhere between the
        step's last backward and the next step's first: the norms were taken during the
        backwards, so clipping, unscaling, ``optimizer.step()`` or ``zero_grad()`` in between
        change nothing. ``batch_size``: rows per backward on this rank (default: dim 0 of the
        model's first tensor input); ``accumulation_steps``: backwards per step (default:
        counted). Advances the step count."""
        if self._mode is None:
            raise ValueError("attach(model) first, or use observe()/observe_per_example()")
        try:
            if self.measuring:
                self._measure(batch_size, accumulation_steps)
        finally:
            self._reset_step()
            self.steps += 1

    def _measure(self, batch_size: int | None, accumulation_steps: int | None) -> None:
        if self._problem is not None:
            raise ValueError(
                f"the {self._mode} estimator cannot measure this model: {self._problem}"
            )
        if self._big is None or not self._sq:
            raise ValueError("step() saw no backward since the last step: call it after backward()")
        m = accumulation_steps or self._backwards
        sizes = self._sizes[-m:] if self._sizes else []
        if batch_size is None:
            if not sizes:
                raise ValueError("pass batch_size=: the model's inputs showed no batch dimension")
            micro = sum(sizes) / len(sizes)
        else:
            micro = float(_positive_int(batch_size, "batch_size"))
        big = self._big
        total = stack_on_one_device(self._sq).double().to(big.device)
        if self._mode == "two_batch":
            total = total.square().sum()
            # mean: each backward's gradient is G_j / m; sum: it is micro * G_j
            small = total * m if self._reduction == "mean" else total / (m * micro * micro)
            b_small, b_big = micro, micro * m * self.world_size
            if b_big <= b_small:
                raise ValueError(
                    "the two_batch estimator needs DDP or gradient accumulation (one backward "
                    "on one rank gives one batch size); use estimator='per_example'"
                )
        else:
            n = float(sum(sizes)) if batch_size is None else micro * m
            scale = m * m if self._reduction == "mean" else 1.0  # (micro * m)^2, micro^2 in hook
            small = total.sum() * scale / n
            b_small, b_big = 1, n * self.world_size
        if self._reduction == "sum":
            big = big / (micro * m) ** 2
        self._log.add(self.steps, torch.stack([small, big]), b_small, b_big, self._mode)

    # ------------------------------------------------------------------------- reading
    @property
    def estimate(self) -> NoiseScaleEstimate:
        """The smoothed ``|G|^2`` and ``tr(Sigma)`` (settles pending steps: a host copy)."""
        self._log.settle()
        return self._log.tracker.estimate

    @property
    def b_simple(self) -> float:
        """``tr(Sigma) / |G|^2``: the critical batch size's estimate (NaN before a step)."""
        return self.estimate.b_simple

    @property
    def skipped(self) -> int:
        """Measured steps skipped because their norms were not finite."""
        self._log.settle()
        return self._log.tracker.skipped

    def history(self):
        """Every row logged so far: dict of host arrays ``step``, ``b_simple``, ``grad_sq``,
        ``trace_cov``, ``batch_size``, ``estimator``."""
        self._log.settle()
        return self._log.history()

    # ------------------------------------------------------------------------- checkpoints
    def flush(self) -> None:
        """Settle pending steps and write the logged rows."""
        self._log.flush()

    def close(self) -> None:
        """Flush (logging the last step if it was not), then close the trace writer."""
        self._log.flush(final=True)
        close = getattr(self._log.writer, "close", None)
        if callable(close):
            close()

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta, "every": self.every, "log_every": self.log_every}

    def state_dict(self) -> dict[str, Any]:
        """The smoothed parts and step counters (docs/conventions.md); flushes first."""
        self._log.flush()
        return make_state(
            "NoiseScaleMonitor",
            _VERSION,
            self.config(),
            steps=self.steps,
            next_log=self._log.next_log,
            tracker=self._log.tracker.state_dict(),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; rows this monitor's run logged after ``state``'s step are replaced."""
        check_state(
            state,
            kind="NoiseScaleMonitor",
            version=_VERSION,
            config=self.config(),
            required=("steps", "next_log", "tracker"),
        )
        self._log.tracker.load_state_dict(state["tracker"])
        self.steps = int(state["steps"])
        self._log.next_log = int(state["next_log"])
        self._log.pending, self._log.unwritten = [], 0
        self._log.stale_from = self.steps
        self._log.last_step = self._log.last_logged = self.steps - 1
        self._reset_step()
