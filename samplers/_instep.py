"""Shared plumbing of the in-step selectors (JEST, RHO-LOSS, top-loss, importance sampling).

Input checks in one place, the lookup of stored per-example scores by ``example_id``, and the
per-device ``torch.Generator`` each selector owns (so selection on a GPU draws its noise on the
GPU and never synchronises with the host). The public base that uses them is
:class:`winnow.samplers.selector.InStepSelector`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "DeviceGenerators",
    "IdTable",
    "check_losses",
    "default_rank",
    "as_score_table",
    "check_fraction",
    "check_pair_losses",
    "ids_to_numpy",
    "lookup_scores",
    "resolve_batch_size",
]

_SHOW_IDS = 10  # how many offending ids an error message lists


def default_rank(rank: int | None) -> int:
    """``rank`` if given, else the ``torch.distributed`` rank (0 when not initialised)."""
    if rank is not None:
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank!r}")
        return int(rank)
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ids_to_numpy(ids, expected: int | None = None) -> np.ndarray:
    """``example_id`` values as int64 numpy ``[B]``.

    Tensors on an accelerator are copied to the host (one sync): keep the ids the loader yields
    on the CPU and move only the inputs to the device.
    """
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point():
            raise TypeError(f"ids must be integers, got a {ids.dtype} tensor")
        arr = ids.detach().cpu().numpy()
    else:
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D [B], got shape {arr.shape}")
    if expected is not None and arr.shape[0] != expected:
        raise ValueError(f"got {arr.shape[0]} ids for a super-batch of {expected} rows")
    return arr.astype(np.int64, copy=False)


def _show(ids: np.ndarray) -> str:
    head = ", ".join(str(int(i)) for i in ids[:_SHOW_IDS])
    return f"[{head}{', ...' if ids.shape[0] > _SHOW_IDS else ''}]"


def lookup_scores(table: np.ndarray, ids: np.ndarray, *, what: str, source: str) -> np.ndarray:
    """``table[ids]`` for a dense score array indexed by ``example_id`` (NaN = missing).

    Raises ``ValueError`` naming how many ids are out of range or have no score, some of them,
    and ``source`` (e.g. ``"store run 'il-v1'"``).
    """
    bad = (ids < 0) | (ids >= table.shape[0])
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {ids.shape[0]} ids are outside [0, {table.shape[0]}) of the "
            f"{what} from {source}: {_show(ids[bad])}"
        )
    values = table[ids]
    missing = np.isnan(values)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {ids.shape[0]} ids have no {what} in {source}: "
            f"{_show(ids[missing])}; score them first or drop them from the loader"
        )
    return values


def as_score_table(values, *, what: str) -> np.ndarray:
    """Validate a dense per-``example_id`` score array (1-D float, NaN = missing)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array indexed by example_id, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must be a float array (NaN = missing), got dtype {arr.dtype}")
    infinite = np.isinf(arr)
    if infinite.any():
        bad = np.flatnonzero(infinite)
        raise ValueError(
            f"{what} has {bad.shape[0]} infinite values (example ids {_show(bad)}); expected "
            "finite values, or NaN for examples without a score"
        )
    return arr


class IdTable:
    """Rows of stored vectors looked up by ``example_id`` (as ``ScoreStore.read_vectors`` returns).

    ``ids``: int ``[M]`` unique; ``vectors``: float ``[M, D]``. Keeps one sorted copy of the ids
    (8 bytes per row) and the permutation, so no dense ``[N, D]`` array is ever built.
    """

    def __init__(self, ids, vectors, *, what: str, source: str):
        ids = ids_to_numpy(ids)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
            raise ValueError(
                f"{what}: vectors must be [M, D] with M = {ids.shape[0]} ids, "
                f"got shape {vectors.shape}"
            )
        order = np.argsort(ids, kind="stable")
        self._sorted = ids[order]
        if self._sorted.shape[0] > 1 and (np.diff(self._sorted) == 0).any():
            raise ValueError(f"{what} from {source} has duplicate ids")
        self._order = order
        self.vectors = vectors
        self.what = what
        self.source = source

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Positions into ``vectors`` for ``ids``; ``ValueError`` naming any missing ids."""
        pos = np.searchsorted(self._sorted, ids)
        pos_c = np.minimum(pos, max(self._sorted.shape[0] - 1, 0))
        found = (pos < self._sorted.shape[0]) & (self._sorted[pos_c] == ids)
        if not found.all():
            raise ValueError(
                f"{int((~found).sum())} of {ids.shape[0]} ids have no {self.what} in "
                f"{self.source}: {_show(ids[~found])}"
            )
        return self._order[pos_c]

    def gather(self, ids: np.ndarray, device: torch.device | str) -> torch.Tensor:
        """``[B, D]`` float32 tensor of the vectors of ``ids`` on ``device`` (async copy)."""
        block = np.ascontiguousarray(self.vectors[self.rows(ids)], dtype=np.float32)
        return torch.from_numpy(block).to(device, non_blocking=True)


def check_losses(
    losses, batch: int | None, *, name: str, check_finite: bool | None
) -> torch.Tensor:
    """Validate per-example (``[B]``) losses; returns them detached.

    A 0-d tensor is refused as an already-reduced loss. ``check_finite=None`` checks NaN/inf
    only on the CPU (free there); on an accelerator the check costs a host sync, so it runs only
    when ``check_finite=True``.
    """
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(losses).__name__}")
    if losses.dim() == 0:
        raise ValueError(
            f"{name} is a scalar: it looks already reduced; pass per-example losses "
            "(reduction='none'), shape [B]"
        )
    if losses.dim() != 1:
        raise ValueError(f"{name} must be per-example, shape [B], got {tuple(losses.shape)}")
    if batch is not None and losses.shape[0] != batch:
        raise ValueError(f"{name} has {losses.shape[0]} values for {batch} ids")
    if not losses.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {losses.dtype}")
    _check_finite(losses, name, check_finite)
    return losses.detach()


def check_pair_losses(losses, batch: int, *, name: str, check_finite: bool | None) -> torch.Tensor:
    """Validate a ``[B, B]`` pair-loss matrix; returns it detached."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(losses).__name__}")
    if losses.shape != (batch, batch):
        raise ValueError(
            f"{name} must be a [B, B] = [{batch}, {batch}] matrix for {batch} ids, "
            f"got shape {tuple(losses.shape)}"
        )
    if not losses.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {losses.dtype}")
    _check_finite(losses, name, check_finite)
    return losses.detach()


def _check_finite(x: torch.Tensor, name: str, check_finite: bool | None) -> None:
    run = check_finite if check_finite is not None else x.device.type == "cpu"
    # One vectorised reduction, no [B, B] bool temporary: the sum is finite unless some term
    # is NaN/inf (or the sum overflows, which the exact count then clears).
    if run and not bool(torch.isfinite(x.sum())):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} NaN/inf values; expected finite losses")


def resolve_batch_size(super_batch: int, *, fraction: float, batch_size: int | None) -> int:
    """Rows to keep from a super-batch: ``batch_size`` if given, else ``floor(B * fraction)``.

    ``fraction`` is in ``(0, 1]``; the result is at least 1 and never above ``super_batch``.
    """
    if batch_size is not None:
        if batch_size > super_batch:
            raise ValueError(
                f"super-batch of {super_batch} rows is smaller than the batch of {batch_size}; "
                "the loader must yield more rows than the selector keeps"
            )
        return batch_size
    return max(1, int(math.floor(super_batch * fraction + 1e-9)))


def check_fraction(value: float, name: str, *, closed_right: bool = True) -> float:
    """``value`` in ``(0, 1]`` (or ``(0, 1)`` when not ``closed_right``), else ``ValueError``."""
    ok = 0.0 < value <= 1.0 if closed_right else 0.0 < value < 1.0
    if not ok:
        bound = "(0, 1]" if closed_right else "(0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return float(value)


class DeviceGenerators:
    """One ``torch.Generator`` per device, seeded from ``(seed, rank)``; checkpointable.

    Ranks get different streams, so data-parallel ranks do not share their selection noise.
    """

    def __init__(self, seed: int, rank: int):
        self.rank = int(rank)
        state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(2, np.uint32)
        self._seed = (int(state[0]) << 31) ^ int(state[1])
        self._gens: dict[str, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator:
        key = str(torch.device(device))
        gen = self._gens.get(key)
        if gen is None:
            gen = torch.Generator(device=key)
            gen.manual_seed(self._seed)
            self._gens[key] = gen
        return gen

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: gen.get_state() for key, gen in self._gens.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # A device absent from the state had not drawn yet: it restarts from the seed.
        self._gens.clear()
        for key, value in state.items():
            self.get(torch.device(key)).set_state(value)
