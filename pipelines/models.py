"""Building the user's model from an importable factory, and loading its weights safely.

A model is named by ``"module:factory"``: an importable callable that returns either an
``nn.Module`` or a pair ``(module, loss_fn)``. ``loss_fn(logits, targets)`` may be per-example
(returns ``[B]``) or any ``torch.nn`` criterion; it is made per-example by
``selection.losses.as_per_example``. Without one, softmax cross-entropy is used.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers
are ever unpickled, never arbitrary objects. The state dict is the checkpoint itself, or the dict
under ``checkpoint_key`` (dotted for nested dicts, e.g. ``ema.weights``), or by default under
``state_dict`` / ``model_state_dict`` / ``model``; ``strip_prefix`` keeps the keys that start with
it, without it (``"model."`` for a Lightning checkpoint of a LightningModule holding
``self.model``). Keys and shapes are checked against the model with a message that says which
option fits when one does. ``check_model`` does all of it on the ``meta`` device (no memory for
weights) so the job can refuse a bad model before Ray starts. See docs/scoring-job.md.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec", "check_model", "describe_model", "import_object", "load_model"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``factory`` ("module:attr"), optional checkpoint and kwargs."""

    factory: str
    checkpoint: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_key: str | None = None
    strip_prefix: str | None = None

    def __post_init__(self) -> None:
        _split_spec(self.factory, "model factory")
        for name in ("checkpoint_key", "strip_prefix"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str or None, got {value!r}")
            if value is not None and self.checkpoint is None:
                raise ValueError(f"{name} {value!r} given without a checkpoint")
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


def _shape(value: Any) -> list[int] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else list(shape)


def _fits(expected: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    return set(expected) == set(found)


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _prefix_hint(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """``--strip-prefix P`` if keeping the keys under some prefix ``P`` gives the model's keys."""
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        if _fits(expected, _strip(state, prefix)):
            return f"checkpoint keys start with {prefix!r}; pass --strip-prefix {prefix}"
    return None


def _key_hint(expected: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    """``--checkpoint-key K`` if the dict under some key ``K`` holds the model's state dict."""
    for key, value in loaded.items():
        if not isinstance(value, Mapping):
            continue
        where = f"the checkpoint holds a state_dict under {key!r}; pass --checkpoint-key {key}"
        if _fits(expected, value):
            return where
        prefix = _prefix_hint(expected, value)
        if prefix is not None:
            return f"{where} and {prefix.split('; pass ', 1)[1]}"
    return None


def _select(loaded: Any, spec: ModelSpec) -> Mapping[str, Any]:
    """The state dict ``spec`` names inside the loaded checkpoint (see the module docstring)."""
    path = spec.checkpoint
    if not isinstance(loaded, Mapping):
        raise TypeError(
            f"checkpoint {path!r} holds a {type(loaded).__name__}; expected a state_dict "
            f"(or a dict with one of the keys {_STATE_KEYS})"
        )
    state: Any = loaded
    if spec.checkpoint_key is not None:
        key = spec.checkpoint_key
        if key in loaded:
            state = loaded[key]
        else:
            for part in key.split("."):
                if not isinstance(state, Mapping) or part not in state:
                    shown = list(state)[:20] if isinstance(state, Mapping) else type(state).__name__
                    raise ValueError(f"checkpoint {path!r} has no key {key!r}; its keys: {shown}")
                state = state[part]
        if not isinstance(state, Mapping):
            raise TypeError(
                f"checkpoint {path!r}: {key!r} holds a {type(state).__name__}, not a state_dict"
            )
    else:
        for key in _STATE_KEYS:
            if isinstance(loaded.get(key), Mapping):
                state = loaded[key]
                break
    if spec.strip_prefix is not None:
        stripped = _strip(state, spec.strip_prefix)
        if not stripped:
            starts = sorted({k.split(".", 1)[0] + "." for k in state})[:10]
            raise ValueError(
                f"no key of checkpoint {path!r} starts with {spec.strip_prefix!r}; "
                f"its keys start with {starts}"
            )
        state = stripped
    return state


def _check_state_dict(
    expected: Mapping[str, Any], state: Mapping[str, Any], loaded: Any, spec: ModelSpec
) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly the model's keys and shapes."""
    where = f"checkpoint {spec.checkpoint!r} does not fit the model of {spec.factory!r}"
    if not _fits(expected, state):
        hint = _prefix_hint(expected, state)
        if hint is None and spec.checkpoint_key is None and isinstance(loaded, Mapping):
            hint = _key_hint(expected, loaded)
        if hint is not None:
            raise ValueError(f"{where}: {hint}")
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        raise ValueError(
            f"{where}: {len(missing)} keys missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]} (--checkpoint-key and --strip-prefix choose the state_dict inside "
            "a checkpoint)"
        )
    for key, value in expected.items():
        if _shape(state[key]) != _shape(value):
            raise ValueError(
                f"{where}: {key!r}: checkpoint {_shape(state[key])}, model {_shape(value)}"
            )


def _load_checkpoint(path: str, *, mmap: bool) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if not mmap:
            raise
        # A checkpoint in torch's legacy (non-zip) format cannot be memory-mapped.
        return torch.load(path, map_location="cpu", weights_only=True)


def _build(spec: ModelSpec) -> tuple[Any, Callable | None]:
    """Call the factory: ``(module, loss_fn or None)``, refusing anything else."""
    from torch import nn

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
    return built, loss_fn


def load_model(spec: ModelSpec, device: str = "cpu") -> tuple[Any, Callable]:
    """Build the model, load its checkpoint, move it to ``device`` and switch to eval mode.

    Returns ``(module, per_example_loss)`` where ``per_example_loss(logits, targets) -> [B]``.
    """
    from winnow.selection.losses import as_per_example, per_example_cross_entropy

    built, loss_fn = _build(spec)
    if spec.checkpoint is not None:
        loaded = _load_checkpoint(spec.checkpoint, mmap=False)
        state = _select(loaded, spec)
        _check_state_dict(built.state_dict(), state, loaded, spec)
        built.load_state_dict(state)
    built.to(device).eval()
    per_example = per_example_cross_entropy if loss_fn is None else as_per_example(loss_fn)
    return built, per_example


def check_model(
    spec: ModelSpec, *, embed_layer: str | None = None, needs_embedding: bool = False
) -> Any:
    """Everything ``load_model`` would refuse, checked without allocating the weights; returns
    the model so built (on ``meta``, or the CPU), without its checkpoint.

    Builds the model on the ``meta`` device (falling back to the CPU for a factory that cannot
    build there), compares the checkpoint's keys and shapes (read memory-mapped) with it, and
    checks that ``embed_layer`` names a submodule (or, for ``needs_embedding`` without one,
    that the model has ``embed()``). The global torch RNG is left as it was, although factories
    often seed it. Raises ``ValueError``/``TypeError`` with a one-line message.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model, _ = _build(spec)
        except (ValueError, TypeError):
            raise
        except Exception:  # a factory that cannot build on meta: build it for real
            try:
                model, _ = _build(spec)
            except Exception as exc:  # the user's factory fails: say so in one line
                raise ValueError(
                    f"model factory {spec.factory!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
    if spec.checkpoint is not None:
        loaded = _load_checkpoint(spec.checkpoint, mmap=True)
        _check_state_dict(model.state_dict(), _select(loaded, spec), loaded, spec)
    if embed_layer is not None:
        names = [name for name, _ in model.named_modules() if name]
        if embed_layer not in names:
            raise ValueError(
                f"--embed-layer {embed_layer!r}: the model of {spec.factory!r} has no such "
                f"layer; its layers: {names[:30]}"
            )
    elif needs_embedding and not callable(getattr(model, "embed", None)):
        raise ValueError(
            f"{type(model).__name__} (from {spec.factory!r}) has no embed() method; name a layer "
            "whose output is the embedding (--embed-layer, e.g. 'head')"
        )
    return model


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
    # Only when set, so identities recorded before these options existed still compare equal.
    for name in ("checkpoint_key", "strip_prefix"):
        if getattr(spec, name) is not None:
            out[name] = getattr(spec, name)
    return out
