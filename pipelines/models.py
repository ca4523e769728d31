"""Building the user's model from an importable factory, and loading its weights safely.

A model is named by ``"module:factory"``: an importable callable that returns either an
``nn.Module`` or a pair ``(module, loss_fn)``. ``loss_fn(logits, targets)`` may be per-example
(returns ``[B]``) or any ``torch.nn`` criterion; it is made per-example by
``selection.losses.as_per_example``. Without one, softmax cross-entropy is used.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers
are ever unpickled, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec", "import_object", "load_model", "describe_model"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``factory`` ("module:attr"), optional checkpoint and kwargs."""

    factory: str
    checkpoint: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _split_spec(self.factory, "model factory")
        if self.checkpoint is not None:
            path = os.path.abspath(os.fspath(self.checkpoint))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint {self.checkpoint!r} does not exist")
            # Actors may run in another working directory: keep the path absolute.
            object.__setattr__(self, "checkpoint", path)


def _split_spec(spec: object, what: str) -> tuple[str, str]:
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be a 'module:attr' string, got {type(spec).__name__}")
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} must look like 'package.module:attr', got {spec!r}")
    return module, attr


def import_object(spec: str, what: str = "factory") -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the object."""
    module_name, attr = _split_spec(spec, what)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); it must be "
            "importable on every Ray worker (installed, or in the driver's working directory)"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj


def _state_dict_from(loaded: Any, path: str) -> Mapping[str, Any]:
    if isinstance(loaded, Mapping):
        for key in _STATE_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return loaded[key]
        return loaded
    raise TypeError(
        f"checkpoint {path!r} holds a {type(loaded).__name__}; expected a state_dict "
        f"(or a dict with one of the keys {_STATE_KEYS})"
    )


def load_model(spec: ModelSpec, device: str = "cpu") -> tuple[Any, Callable]:
    """Build the model, load its checkpoint, move it to ``device`` and switch to eval mode.

    Returns ``(module, per_example_loss)`` where ``per_example_loss(logits, targets) -> [B]``.
    """
    import torch
    from torch import nn

    from winnow.selection.losses import as_per_example, per_example_cross_entropy

    factory = import_object(spec.factory, "model factory")
    if not callable(factory):
        raise TypeError(f"model factory {spec.factory!r} is not callable")
    built = factory(**dict(spec.kwargs))
    loss_fn: Callable | None = None
    if isinstance(built, tuple):
        if len(built) != 2:
            raise TypeError(
                f"model factory {spec.factory!r} returned a tuple of {len(built)}; "
                "expected an nn.Module or (nn.Module, loss_fn)"
            )
        built, loss_fn = built
    if not isinstance(built, nn.Module):
        raise TypeError(
            f"model factory {spec.factory!r} returned {type(built).__name__}; expected nn.Module"
        )
    if spec.checkpoint is not None:
        loaded = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
        built.load_state_dict(_state_dict_from(loaded, spec.checkpoint))
    built.to(device).eval()
    per_example = per_example_cross_entropy if loss_fn is None else as_per_example(loss_fn)
    return built, per_example


def _sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_model(spec: ModelSpec | None) -> dict[str, Any] | None:
    """JSON-able identity of a model for the run manifest (factory, checkpoint path and sha256)."""
    if spec is None:
        return None
    out: dict[str, Any] = {"factory": spec.factory, "kwargs": dict(spec.kwargs)}
    if spec.checkpoint is not None:
        out["checkpoint"] = spec.checkpoint
        out["checkpoint_sha256"] = _sha256(spec.checkpoint)
    return out
