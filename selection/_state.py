"""One state-dict convention for every sampler, selector and score table.

A state is a plain ``dict`` with named keys:

- ``"kind"``: the class that wrote it (``"InfoBatchSampler"``, ``"ScoreTable"``, ...);
- ``"version"``: an int, bumped when the layout changes;
- ``"config"``: plain values that identify the configuration (N, ratios, epochs, seed...);
- anything else the owner needs, as tensors and plain Python values only.

So ``torch.save(state, path)`` then ``torch.load(path)`` with its default ``weights_only=True``
reads every state back, and ``load_state_dict`` refuses a state written by another kind,
version or configuration with a message that names what differs. See docs/conventions.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["K_CONFIG", "K_KIND", "K_VERSION", "check_state", "make_state", "plain", "state_array"]

K_KIND = "kind"
K_VERSION = "version"
K_CONFIG = "config"


def plain(value: Any) -> Any:
    """``value`` as plain Python (numpy scalars -> int/float/bool, tuples -> lists, recursively).

    Tensors stay tensors; anything else that is not plain raises ``TypeError`` so a state never
    carries an object ``torch.load(weights_only=True)`` refuses.
    """
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    raise TypeError(f"state values must be tensors or plain Python values, got {type(value)}")


def state_array(value: Any, dtype: Any, *, what: str) -> np.ndarray:
    """A state entry (a tensor, or an array-like) as a numpy array of ``dtype``.

    Refuses a value that would lose its kind converting (floats into an int or bool array),
    naming ``what``.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise TypeError(f"{what} has dtype {array.dtype}; expected {np.dtype(dtype)}")
    return array.astype(dtype, copy=False)


def make_state(kind: str, version: int, config: Mapping[str, Any], **payload: Any) -> dict:
    """A state dict in the convention above (payload values made plain)."""
    return {
        K_KIND: kind,
        K_VERSION: int(version),
        K_CONFIG: plain(dict(config)),
        **{key: plain(value) for key, value in payload.items()},
    }


def check_state(
    state: Any, *, kind: str, version: int, config: Mapping[str, Any], required: tuple = ()
) -> None:
    """Refuse ``state`` unless it is a ``kind`` state of ``version`` with an equal ``config``.

    The message names the first configuration keys that differ (stored vs this object), so a
    checkpoint of another N, ratio, epoch count or method is never loaded silently.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{kind} state must be a dict, got {type(state).__name__}")
    missing = [k for k in (K_KIND, K_VERSION, K_CONFIG, *required) if k not in state]
    if missing:
        raise ValueError(f"{kind} state lacks keys {missing} (not a state of this winnow?)")
    if state[K_KIND] != kind:
        raise ValueError(f"this is a {state[K_KIND]!r} state; expected a {kind!r} state")
    if state[K_VERSION] != version:
        raise ValueError(
            f"{kind} state has version {state[K_VERSION]!r}; this winnow reads version {version}"
        )
    stored = state[K_CONFIG]
    mine = plain(dict(config))
    differ = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
    if differ:
        detail = ", ".join(f"{k}: stored {stored.get(k)!r}, here {mine.get(k)!r}" for k in differ)
        raise ValueError(f"{kind} state is for another configuration ({detail})")
