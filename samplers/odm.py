"""Online Data Mixing (Albalak et al. 2023) as a ``batch_sampler``: one domain per batch, drawn
from an EXP3 mixture that follows the training loss (docs/odm.md).

Each of ``K`` domains is an arm of a bandit whose reward is the training loss on a batch of that
domain. Step ``t`` draws a domain ``i ~ pi_t``, yields ``batch_size`` ids of domain ``i`` (without
replacement inside the domain, reshuffled when exhausted), and the loop reports the batch's
per-example losses with :meth:`ODMSampler.update`. With ``n`` rewards applied so far::

    eps_n  = min(1/K, sqrt(ln K / (K n)))         (eps_0 = 1/K)
    pi     = (1 - K eps_n) * softmax(eps_{n-1} * R) + eps_n
    R_i   <- alpha * R_i + (1 - alpha) * L / pi(i)      (the sampled arm only; R starts at 0)

where ``L`` is the batch's mean loss (over all ranks) and ``pi(i)`` the probability the batch was
drawn with. During ``warmup_steps`` draws follow the natural proportions ``|D_i| / N``; rewards
are still recorded, weighted by the probability actually used. The official code's variants are
options: ``reward="exp_loss"`` (``exp(L)``, no ``1/pi``) and ``normalize="linear"``
(``R_i / sum R``).

Prefetch: a domain is drawn when the DataLoader asks for the batch, from the mixture as it is
then. With ``p`` batches prefetched, a draw has seen the rewards of all but the last ``p``
steps. Feedback is matched to the oldest batch still awaiting losses (the loop trains batches in
the order the loader yields them).

DDP: every rank draws the same domain (the draw for step ``t`` is a pure function of
``(seed, t)`` and the mixture, which every rank holds identically) and yields its slice
``batch[rank::world]``; each :meth:`update` all-reduces the batch's loss sum and count (one
small collective per step, started asynchronously and waited for at the next draw, which needs
the reward). No host sync happens inside :meth:`update`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from winnow.samplers._dist import is_distributed, resolve_rank_world, shard
from winnow.samplers._trace import StepTrace
from winnow.samplers.epoch import check_int
from winnow.selection._state import check_state, make_state

__all__ = ["ODMSampler"]

_VERSION = 1
_REWARDS = ("loss_over_pi", "exp_loss", "loss")
_NORMALIZE = ("softmax", "linear")
_STREAM_DRAW = 0xD0
_STREAM_PERM = 0xD1


class ODMSampler(Sampler[list[int]]):
    """Batches of one domain each, mixed online by EXP3 on the training loss.

    Args:
        domains: int ``[N]``: the domain of each ``example_id``, in ``[0, K)``; every domain
            must hold at least one example (``K = max + 1`` unless ``num_domains`` is given).
        batch_size: global batch size (divisible by the world size).
        num_steps: steps of the run; one ``iter()`` yields the steps still to go.
        alpha: smoothing of the reward (the paper's alpha; official scripts 0.9 or 0.5).
        warmup_steps: steps drawn from the natural proportions before the bandit takes over.
        reward: ``"loss_over_pi"`` (paper), ``"exp_loss"`` (official code) or ``"loss"``.
        normalize: ``"softmax"`` (paper, EXP3) or ``"linear"`` (official ``group_update``).
        seed: draws and per-domain shuffles are pure functions of it.
        rank, world_size: default from ``torch.distributed``, else ``(0, 1)``.
        trace, trace_every: a trace writer recording every step's batch as :meth:`update`
            receives it (ids, per-example losses, score = the probability its domain was
            drawn with) and the mixture ``pi``, 1 step in ``trace_every`` (docs/traces.md).
    """

    def __init__(
        self,
        domains: Any,
        batch_size: int,
        num_steps: int,
        *,
        alpha: float = 0.9,
        warmup_steps: int = 0,
        reward: str = "loss_over_pi",
        normalize: str = "softmax",
        num_domains: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        trace: Any = None,
        trace_every: int = 1,
    ):
        self._domain_of = _check_domains(domains, num_domains)
        self.num_examples = int(self._domain_of.shape[0])
        self.num_domains = int(num_domains or int(self._domain_of.max()) + 1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        if isinstance(alpha, bool) or not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if reward not in _REWARDS:
            raise ValueError(f"reward must be one of {_REWARDS}, got {reward!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        self.alpha, self.reward, self.normalize = float(alpha), reward, normalize
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by world_size {self.world_size} "
                "(each rank takes an equal slice of every batch)"
            )
        order = np.argsort(self._domain_of, kind="stable")
        counts = np.bincount(self._domain_of, minlength=self.num_domains)
        self._members = np.split(order.astype(np.int64), np.cumsum(counts)[:-1])
        self.natural = counts / counts.sum()
        self._rewards = np.zeros(self.num_domains)
        self._applied = 0  # rewards applied: the n of eps_n
        self._drawn = 0  # batches drawn (global steps)
        self._cycle = np.zeros(self.num_domains, dtype=np.int64)
        self._pos = np.zeros(self.num_domains, dtype=np.int64)
        self._perm: dict[int, np.ndarray] = {}
        # Drawn batches awaiting losses: (step, domain, probability, global ids).
        self._awaiting: deque[tuple[int, int, float, np.ndarray]] = deque()
        self._replay: deque[tuple[int, int, float, np.ndarray]] = deque()
        # Fed back but not yet applied: (step, domain, probability, loss sum, work handle).
        self._unapplied: deque[tuple[int, int, float, torch.Tensor, Any]] = deque()
        self._history: list[np.ndarray] = []
        self._trace = None if trace is None else StepTrace(trace, every=trace_every, owner=self)

    @classmethod
    def from_store(
        cls, store: Any, run: str, batch_size: int, num_steps: int, **kwargs: Any
    ) -> ODMSampler:
        """An ``ODMSampler`` over the domains a scoring run stored (``--domain-column``).

        ``store`` is a ``winnow.store.ScoreStore`` (or anything with its ``read(run, metric)``
        and ``manifest(run)``; samplers never import the store); the run's ``domain`` score
        gives each ``example_id``'s domain, and every id in ``[0, N)`` must have one.
        ``num_domains`` defaults to the number of the run's ``config.domain_names`` when it
        recorded names (string domains), so a domain with no example is refused rather than
        silently dropped.
        Other keywords as for the constructor.
        """
        if not (
            callable(getattr(store, "read", None)) and callable(getattr(store, "manifest", None))
        ):
            raise TypeError(
                f"store must be a ScoreStore (winnow.store.ScoreStore(root)), got {store!r}"
            )
        values, present = store.read(run, "domain")
        if not present.all():
            missing = np.flatnonzero(~present)
            raise ValueError(
                f"run {run!r} has no domain for {missing.shape[0]} of {present.shape[0]} "
                f"example_ids (first {missing[:5].tolist()}); score every example with "
                "--domain-column"
            )
        codes = values.astype(np.int64)
        if not np.array_equal(codes, values):
            raise ValueError(f"run {run!r} metric 'domain' holds non-integer values")
        names = store.manifest(run).get("config", {}).get("domain_names")
        if names and "num_domains" not in kwargs:
            kwargs["num_domains"] = len(names)
        return cls(codes, batch_size, num_steps, **kwargs)

    # -- the mixture ----------------------------------------------------------------------------
    def _eps(self, n: int) -> float:
        k = self.num_domains
        if n <= 0 or k == 1:
            return 1.0 / k
        return min(1.0 / k, math.sqrt(math.log(k) / (k * n)))

    def _mixture(self) -> np.ndarray:
        if self._drawn < self.warmup_steps:
            return self.natural.copy()
        k, n = self.num_domains, self._applied
        eps, eps_prev = self._eps(n), self._eps(n - 1)
        if self.normalize == "softmax":
            logits = eps_prev * self._rewards
            weights = np.exp(logits - logits.max())
        else:
            weights = np.maximum(self._rewards, 0.0)
            if weights.sum() <= 0.0:
                weights = np.ones(k)
        return (1.0 - k * eps) * weights / weights.sum() + eps

    @property
    def domain_weights(self) -> np.ndarray:
        """``pi`` for the next draw, float64 ``[K]`` (applies the rewards fed back so far)."""
        self._apply_rewards()
        return self._mixture()

    def mixture_history(self) -> np.ndarray:
        """float64 ``[steps drawn, K]``: the mixture each drawn batch was drawn from."""
        if not self._history:
            return np.zeros((0, self.num_domains))
        return np.stack(self._history)

    def _apply_rewards(self) -> None:
        while self._unapplied:
            step, domain, prob, total, work = self._unapplied.popleft()
            if work is not None:
                work.wait()
            loss = float(total) / self.batch_size
            if not math.isfinite(loss):
                raise ValueError(
                    f"the losses fed back for step {step} (domain {domain}) are NaN/inf"
                )
            if self.reward == "loss_over_pi":
                value = loss / prob
            elif self.reward == "exp_loss":
                value = math.exp(loss)
            else:
                value = loss
            self._rewards[domain] = self.alpha * self._rewards[domain] + (1 - self.alpha) * value
            self._applied += 1

    # -- drawing batches ------------------------------------------------------------------------
    def _take(self, domain: int) -> np.ndarray:
        """``batch_size`` ids of ``domain``, continuing its current permutation."""
        members = self._members[domain]
        out, need = [], self.batch_size
        while need:
            perm = self._perm.get(domain)
            if perm is None:
                gen = np.random.default_rng([self.seed, _STREAM_PERM, domain, self._cycle[domain]])
                perm = self._perm[domain] = members[gen.permutation(members.shape[0])]
            start = int(self._pos[domain])
            part = perm[start : start + need]
            out.append(part)
            need -= part.shape[0]
            self._pos[domain] += part.shape[0]
            if self._pos[domain] == perm.shape[0]:
                self._cycle[domain] += 1
                self._pos[domain] = 0
                del self._perm[domain]
        return np.concatenate(out)

    def _draw(self) -> tuple[int, int, float, np.ndarray]:
        self._apply_rewards()
        pi = self._mixture()
        gen = np.random.default_rng([self.seed, _STREAM_DRAW, self._drawn])
        domain = int(np.searchsorted(np.cumsum(pi), gen.random() * pi.sum(), side="right"))
        domain = min(domain, self.num_domains - 1)
        batch = (self._drawn, domain, float(pi[domain]), self._take(domain))
        self._history.append(pi)
        self._drawn += 1
        return batch

    def __len__(self) -> int:
        """Steps still to yield in this run."""
        return self.num_steps - self._steps_out()

    def _steps_out(self) -> int:
        return self._drawn - len(self._replay)

    def __iter__(self) -> Iterator[list[int]]:
        while self._steps_out() < self.num_steps:
            batch = self._replay.popleft() if self._replay else self._draw()
            self._awaiting.append(batch)
            yield shard(batch[3], self.rank, self.world_size, drop_last=True).tolist()

    def total_steps(
        self, batch_size: int | None = None, num_epochs: int | None = None, *, drop_last=False
    ) -> int:
        """Steps of the run, ``num_steps`` (every sampler's signature; the batch size is fixed
        at construction and ``num_epochs`` is not used by a step-based sampler)."""
        if batch_size is not None and batch_size != self.batch_size:
            raise ValueError(
                f"ODMSampler yields batches of {self.batch_size} (global); got {batch_size!r}"
            )
        return self.num_steps

    # -- feedback -------------------------------------------------------------------------------
    def update(self, ids: Any, losses: torch.Tensor) -> None:
        """Report the per-example losses ``[b / world]`` of the oldest batch awaiting them.

        ``ids`` are this rank's ids of that batch, as the loader yielded them (checked when on
        the CPU). ``losses`` on any device; under DDP every rank calls this for every batch.
        """
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
            raise ValueError(f"losses must be per-example, shape [batch], got {shape}")
        if not self._awaiting:
            raise ValueError("update() called but no batch is awaiting losses")
        step, domain, prob, global_ids = self._awaiting[0]
        local = shard(global_ids, self.rank, self.world_size, drop_last=True)
        ids_t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
        if ids_t.shape[0] != local.shape[0] or losses.shape[0] != local.shape[0]:
            raise ValueError(
                f"step {step}: got {ids_t.shape[0]} ids and {losses.shape[0]} losses for a slice "
                f"of {local.shape[0]}"
            )
        if ids_t.device.type == "cpu" and not np.array_equal(ids_t.numpy(), local):
            raise ValueError(
                f"the ids given are not the batch of step {step} (domain {domain}) that awaits "
                f"losses; report batches in the order the loader yields them"
            )
        if losses.device.type == "cpu" and not bool(torch.isfinite(losses).all()):
            raise ValueError(f"losses of step {step} (domain {domain}) contain NaN/inf")
        # Only the sum travels: every rank's slice holds batch_size / world losses.
        total = losses.detach().double().sum().reshape(1)
        work = None
        if is_distributed() and self.world_size > 1:
            if dist.get_backend() != "nccl":
                total = total.cpu()
            work = dist.all_reduce(total, async_op=True)
        self._awaiting.popleft()
        self._unapplied.append((step, domain, prob, total, work))
        if self._trace is not None and self._trace.wants(step):
            self._trace.record_batch(step, local, losses, score=prob)
            self._trace.record_mixture(step, self._history[step], domain)

    # -- state ----------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "num_domains": self.num_domains,
            "domain_counts": [int(m.shape[0]) for m in self._members],
            "batch_size": self.batch_size,
            "num_steps": self.num_steps,
            "alpha": self.alpha,
            "warmup_steps": self.warmup_steps,
            "reward": self.reward,
            "normalize": self.normalize,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def state_dict(self) -> dict[str, Any]:
        """The mixture's state, the per-domain cursors, and the batches drawn but not yet fed
        back (yielded again first on resume, so the run continues exactly). Flushes the trace."""
        self._apply_rewards()
        if self._trace is not None:
            self._trace.flush()
        in_flight = list(self._awaiting) + list(self._replay)
        fed = self._drawn - len(in_flight)
        return make_state(
            "ODMSampler",
            _VERSION,
            self.config(),
            rewards=torch.from_numpy(self._rewards.copy()),
            applied=self._applied,
            drawn=self._drawn,
            fed=fed,
            cycle=torch.from_numpy(self._cycle.copy()),
            pos=torch.from_numpy(self._pos.copy()),
            in_flight=[
                {"step": s, "domain": d, "prob": p, "ids": torch.from_numpy(i.copy())}
                for s, d, p, i in in_flight
            ],
            history=torch.from_numpy(self.mixture_history()),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; refuses another configuration, naming what differs."""
        check_state(
            state,
            kind="ODMSampler",
            version=_VERSION,
            config=self.config(),
            required=("rewards", "applied", "drawn", "cycle", "pos", "in_flight", "history"),
        )
        self._rewards = np.asarray(state["rewards"], dtype=np.float64).copy()
        self._applied = int(state["applied"])
        self._drawn = int(state["drawn"])
        self._cycle = np.asarray(state["cycle"], dtype=np.int64).copy()
        self._pos = np.asarray(state["pos"], dtype=np.int64).copy()
        self._perm = {}
        self._awaiting.clear()
        self._unapplied.clear()
        self._replay = deque(
            (int(b["step"]), int(b["domain"]), float(b["prob"]), np.asarray(b["ids"]).copy())
            for b in state["in_flight"]
        )
        self._history = list(np.asarray(state["history"], dtype=np.float64))
        if self._trace is not None:
            self._trace.resume(self._drawn - len(self._replay))

    def close(self) -> None:
        """Write what the trace holds and close its writer (finishing the run's manifest)."""
        if self._trace is not None:
            self._trace.close()


def _check_domains(domains: Any, num_domains: int | None) -> np.ndarray:
    if isinstance(domains, torch.Tensor):
        domains = domains.detach().cpu().numpy()
    arr = np.asarray(domains)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"domains must be a non-empty 1-D array [N], got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"domains must be integers in [0, K), got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"domains must be in [0, K), got {int(arr.min())}")
    k = int(arr.max()) + 1
    if num_domains is not None:
        num_domains = check_int("num_domains", num_domains, minimum=1)
        if k > num_domains:
            raise ValueError(f"domains must be in [0, {num_domains}), got {k - 1}")
        k = num_domains
    empty = np.flatnonzero(np.bincount(arr, minlength=k) == 0)
    if empty.shape[0]:
        raise ValueError(
            f"domains {empty[:10].tolist()} have no examples; every domain in [0, {k}) needs one"
        )
    return arr.astype(np.int64, copy=False)
