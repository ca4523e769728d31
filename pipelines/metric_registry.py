"""The scoring job's metrics: one registry entry per metric name, and how users add their own.

A ``Metric`` says what a metric needs (labels, the model's outputs, a reference model, a backward
pass, the example's embedding), which columns it stores (float32 scalars per example; optional
float16 vectors) and how it is computed::

    fn(outputs, targets, ctx) -> Tensor [B] | {column: Tensor [B] or [B, ...]}

``outputs`` is the model's output for the mini-batch (``[B, C]`` logits for a classifier; None
unless ``needs_logits``), ``targets`` the ``[B]`` labels (None unless the source has labels) and
``ctx`` a ``MetricContext`` (inputs, models, per-example loss functions, embedding). A function
returning one tensor stores it under the metric's single column.

Token documents (``--token-column``, docs/scoring-job.md): the ``B`` documents are cut into
``M`` windows; ``outputs`` are the windows' ``[M, W, V]`` logits, ``targets`` their next tokens
``[M, W]`` (-100 where nothing is predicted), ``ctx`` a ``TokenContext`` whose ``windows`` map
windows to documents, and a metric still returns one value per *document*, ``[B]``. A metric
declares the kinds of data it applies to (``kinds``: ``"features"``, ``"tokens"``).

The job validation, the stored columns, ``BatchScorer`` and ``winnow score --help`` all read
this registry; ``register_metric`` adds to it::

    from winnow import pipelines

    @pipelines.register_metric("confidence", help="max softmax probability (lower = harder)",
                               needs_labels=False)
    def confidence(logits, targets, ctx):
        return logits.softmax(1).amax(1)

    pipelines.score(data, model, metrics=["loss", "confidence"], store=..., run=...)

On Ray, the resolved entries travel inside the job sent to each actor (Ray pickles them with
cloudpickle: an importable function by reference, a lambda or closure by value), so an actor
never looks a name up in its own registry. ``winnow score --import mypkg.metrics`` imports the
module that registers them before the job is built. See docs/scoring-job.md.

This module imports neither torch nor Ray; built-in metric functions import what they need when
they are called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EMBEDDING",
    "KINDS",
    "NAME_PATTERN",
    "Metric",
    "MetricContext",
    "get_metric",
    "register_metric",
    "registered_metrics",
    "resolve_metrics",
    "scalar_outputs",
    "unregister_metric",
    "validate_metrics",
    "vector_outputs",
]

EMBEDDING = "embedding"
# Metric and column names become store directory names: the store's rule
# (winnow.store.layout.NAME_PATTERN, which a test keeps equal), repeated so that building the
# `winnow` parser does not import the store and DuckDB (about a second).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Columns the driver writes after scoring (faiss metrics of `embedding`, see pipelines.embed) or
# the store uses as its key: a metric must not claim them.
_RESERVED_COLUMNS = frozenset({"example_id", "cluster", "proto_dist"})
_RESERVED_PREFIX = "dup_eps"

KINDS = ("features", "tokens")
"""The kinds of data a metric may apply to: feature rows (``--feature-columns``, a Dataset) and
token documents (``--token-column``)."""

MetricFn = Callable[[Any, Any, "MetricContext"], Any]


@dataclass
class MetricContext:
    """What a metric function may use besides the model's outputs and the targets.

    ``x``: the mini-batch inputs ``[B, ...]`` on the scoring device. ``model``: the learner in
    eval mode; ``loss_fn(outputs, targets) -> [B]`` its per-example loss. ``reference`` /
    ``reference_loss_fn``: the reference model and its loss (None without ``--reference``).
    ``embedding``: ``[B, d]`` (``model.embed(x)`` or the ``--embed-layer`` output) when a
    requested metric ``needs_embedding``, else None. ``domain``: float32 ``[B]`` domain codes
    when the job has a ``--domain-column``, else None. Everything except ``needs_grad`` metrics
    runs under ``torch.inference_mode``.
    """

    x: Any
    model: Any
    loss_fn: Callable[[Any, Any], Any]
    reference: Any | None = None
    reference_loss_fn: Callable[[Any, Any], Any] | None = None
    embedding: Any | None = None
    domain: Any | None = None
    _loss: Any | None = field(default=None, init=False, repr=False)

    def loss(self, outputs: Any, targets: Any) -> Any:
        """The learner's per-example loss ``[B]``, computed once per mini-batch and shared
        (``loss`` and ``learnability`` both need it)."""
        if self._loss is None:
            self._loss = self.loss_fn(outputs, targets)
        return self._loss

    def reference_loss(self, targets: Any) -> Any:
        """The reference model's per-example loss ``[B]`` (one forward of ``reference``)."""
        return self.reference_loss_fn(self.reference(self.x), targets)

    def grad_norms(self, targets: Any) -> Any:
        """Exact per-example gradient norms ``[B]`` of the learner's loss (one backward)."""
        from winnow.selection.gradnorm import per_example_grad_norms

        return per_example_grad_norms(self.model, self.loss_fn, self.x, targets)


@dataclass(frozen=True)
class Metric:
    """One registry entry: a metric's name, needs, stored columns, help and function.

    ``outputs``: float32 ``[B]`` columns stored as scores (default ``(name,)``); ``vectors``:
    float16 ``[B, d]`` columns stored as vectors. A metric with vectors must also store a scalar:
    a shard counts as committed when its scalar files exist, and vectors are written first.
    ``needs_grad``: ``fn`` runs outside ``inference_mode`` (it may call backward).
    ``needs_domain``: reads ``ctx.domain`` (the job's ``--domain-column``). ``kinds``: the kinds
    of data (``KINDS``) it applies to; labels are not needed for token documents (the tokens
    are their own targets).
    """

    name: str
    fn: MetricFn
    help: str
    outputs: tuple[str, ...] = ()
    vectors: tuple[str, ...] = ()
    needs_labels: bool = True
    needs_logits: bool = True
    needs_reference: bool = False
    needs_grad: bool = False
    needs_embedding: bool = False
    needs_domain: bool = False
    kinds: tuple[str, ...] = ("features",)

    def __post_init__(self) -> None:
        _check_name(self.name, "metric")
        kinds = self.kinds
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
            raise TypeError(f"metric {self.name!r}: kinds must be a non-empty sequence of {KINDS}")
        if any(kind not in KINDS for kind in kinds):
            raise ValueError(f"metric {self.name!r}: kinds must be among {KINDS}, got {kinds!r}")
        object.__setattr__(self, "kinds", tuple(kinds))
        if not callable(self.fn):
            raise TypeError(f"metric {self.name!r}: fn must be callable, got {self.fn!r}")
        if not isinstance(self.help, str) or not self.help.strip():
            raise ValueError(f"metric {self.name!r}: help must be a non-empty string")
        for attr in ("outputs", "vectors"):
            value = getattr(self, attr)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise TypeError(
                    f"metric {self.name!r}: {attr} must be a sequence of column names, "
                    f"got {value!r}"
                )
            object.__setattr__(self, attr, tuple(_check_name(c, "column") for c in value))
        if not self.outputs and not self.vectors:
            object.__setattr__(self, "outputs", (self.name,))
        if not self.outputs:
            raise ValueError(
                f"metric {self.name!r} stores only vectors {list(self.vectors)}; it must also "
                "store a scalar column (it marks the shard as committed)"
            )
        columns = self.outputs + self.vectors
        if len(set(columns)) != len(columns):
            raise ValueError(f"metric {self.name!r} names a column twice: {list(columns)}")
        flags = (
            "needs_labels", "needs_logits", "needs_reference", "needs_grad", "needs_embedding",
            "needs_domain",
        )  # fmt: skip
        for flag in flags:
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(
                    f"metric {self.name!r}: {flag} must be a bool, got {getattr(self, flag)!r}"
                )

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column ``fn`` returns: the scalar outputs, then the vectors."""
        return self.outputs + self.vectors


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} name must be a str, got {type(value).__name__} {value!r}")
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {what} name {value!r}: expected 1-128 characters of letters, digits, "
            f"'_', '.', '-', starting with a letter or digit"
        )
    return value


_REGISTRY: dict[str, Metric] = {}
_BUILTIN: frozenset[str] = frozenset()


def _same_definition(a: Callable, b: Callable) -> bool:
    """True for two function objects of one module-level definition (a module imported again);
    never for lambdas or nested functions, which share a qualified name with others."""
    qualname = getattr(b, "__qualname__", "<")
    same = all(getattr(a, k, None) == getattr(b, k, None) for k in ("__module__", "__qualname__"))
    return same and "<" not in qualname


def _add(metric: Metric, *, replace: bool, builtin: bool = False) -> Metric:
    old = _REGISTRY.get(metric.name)
    if old is not None and not replace and not _same_definition(old.fn, metric.fn):
        raise ValueError(
            f"metric {metric.name!r} is already registered (by {_where(old.fn)}); "
            "pass replace=True to replace it"
        )
    if old is not None and metric.name in _BUILTIN:
        raise ValueError(f"metric {metric.name!r} is built in and cannot be replaced")
    for column in () if builtin else metric.columns:
        if column in _RESERVED_COLUMNS or column.startswith(_RESERVED_PREFIX):
            raise ValueError(f"metric {metric.name!r}: column {column!r} is reserved")
        for other in _REGISTRY.values():
            if other.name != metric.name and column in other.columns:
                raise ValueError(
                    f"metric {metric.name!r}: column {column!r} is already stored by metric "
                    f"{other.name!r}; choose another column name"
                )
    _REGISTRY[metric.name] = metric
    return metric


def _where(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_metric(
    name: str,
    fn: MetricFn | None = None,
    *,
    help: str,
    outputs: Sequence[str] = (),
    vectors: Sequence[str] = (),
    needs_labels: bool = True,
    needs_logits: bool = True,
    needs_reference: bool = False,
    needs_grad: bool = False,
    needs_embedding: bool = False,
    needs_domain: bool = False,
    kinds: Sequence[str] = ("features",),
    replace: bool = False,
) -> Any:
    """Register metric ``name`` computed by ``fn(outputs, targets, ctx)``; returns ``fn``.

    Without ``fn``, returns a decorator. The fields are those of ``Metric``. Registering a name
    twice raises ``ValueError`` unless ``replace=True`` (or the same definition is imported
    again); built-in metrics cannot be replaced, and no two metrics may store the same column.
    """

    def decorate(function: MetricFn) -> MetricFn:
        metric = Metric(
            name=name,
            fn=function,
            help=help,
            outputs=outputs,
            vectors=vectors,
            needs_labels=needs_labels,
            needs_logits=needs_logits,
            needs_reference=needs_reference,
            needs_grad=needs_grad,
            needs_embedding=needs_embedding,
            needs_domain=needs_domain,
            kinds=tuple(kinds) if not isinstance(kinds, str) else kinds,
        )
        _add(metric, replace=replace)
        return function

    return decorate if fn is None else decorate(fn)


def unregister_metric(name: str) -> None:
    """Remove user metric ``name`` from the registry (built-in metrics stay)."""
    if name in _BUILTIN:
        raise ValueError(f"metric {name!r} is built in and cannot be removed")
    if name not in _REGISTRY:
        raise ValueError(f"metric {name!r} is not registered")
    del _REGISTRY[name]


def registered_metrics() -> tuple[Metric, ...]:
    """Every registered metric: the built-ins, then user metrics in registration order."""
    return tuple(_REGISTRY.values())


def get_metric(name: str) -> Metric:
    """The registry entry of ``name``; ``ValueError`` listing the registered names if unknown."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown metric {name!r}; registered metrics: {list(_REGISTRY)}"
        ) from None


def _split_names(metrics: Sequence[str] | str) -> list[str]:
    if isinstance(metrics, str):
        return [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, Sequence) or not all(isinstance(m, str) for m in metrics):
        raise TypeError(
            f"metrics must be a comma-separated string or a sequence of names, got {metrics!r}"
        )
    return list(metrics)


def resolve_metrics(
    metrics: Sequence[str] | str,
    *,
    has_reference: bool | None = None,
    has_labels: bool | None = None,
    kind: str | None = None,
    has_domain: bool | None = None,
) -> tuple[Metric, ...]:
    """The entries of the requested metric names, in registry order, without repeats.

    ``metrics``: names, or one comma-separated string. ``has_reference`` / ``has_labels`` /
    ``has_domain``: what the job provides; ``kind``: the kind of data (``KINDS``; token
    documents need no labels). None = not known yet, not checked. Raises ``ValueError``
    naming unknown metrics (with the registered names), or metrics whose needs the job does
    not meet.
    """
    names = _split_names(metrics)
    unknown = sorted(set(names) - set(_REGISTRY))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; registered metrics: {list(_REGISTRY)}")
    if not names:
        raise ValueError(f"no metrics requested; registered metrics: {list(_REGISTRY)}")
    entries = tuple(m for m in _REGISTRY.values() if m.name in names)
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        wrong = [m.name for m in entries if kind not in m.kinds]
        if wrong:
            what = "token documents (--token-column)" if kind == "tokens" else "feature rows"
            fitting = [m.name for m in _REGISTRY.values() if kind in m.kinds]
            raise ValueError(
                f"metric(s) {wrong} do not apply to {what}; metrics that do: {fitting}"
            )
        if kind == "tokens":
            has_labels = None  # the tokens are their own targets
    if has_domain is False:
        for m in entries:
            if m.needs_domain:
                raise ValueError(f"metric {m.name!r} needs a domain column (--domain-column)")
    if has_reference is False:
        for m in entries:
            if m.needs_reference:
                raise ValueError(f"metric {m.name!r} needs a reference model (--reference)")
    if has_labels is False:
        labelled = [m.name for m in entries if m.needs_labels]
        if labelled:
            raise ValueError(
                f"metrics {labelled} need labels, but the data source has none "
                "(give --label-column, or items (x, y))"
            )
    return entries


def validate_metrics(
    metrics: Sequence[str] | str, *, has_reference: bool, has_labels: bool
) -> tuple[str, ...]:
    """The requested metric names in registry order, or ``ValueError`` (see resolve_metrics)."""
    entries = resolve_metrics(metrics, has_reference=has_reference, has_labels=has_labels)
    return tuple(m.name for m in entries)


def _entries(metrics: Sequence[str | Metric]) -> list[Metric]:
    return [m if isinstance(m, Metric) else get_metric(m) for m in metrics]


def scalar_outputs(metrics: Sequence[str | Metric]) -> tuple[str, ...]:
    """The float32 score columns a run of ``metrics`` stores, in order, without repeats.

    ``learnability`` stores ``loss``, ``ref_loss`` and ``learnability``; ``embedding`` stores
    ``embedding_norm`` (the L2 norm of each vector), which also marks its vectors as committed.
    """
    out: dict[str, None] = {}
    for metric in _entries(metrics):
        out.update(dict.fromkeys(metric.outputs))
    return tuple(out)


def vector_outputs(metrics: Sequence[str | Metric]) -> tuple[str, ...]:
    """The float16 vector columns a run of ``metrics`` stores (``embedding`` for embeddings)."""
    out: dict[str, None] = {}
    for metric in _entries(metrics):
        out.update(dict.fromkeys(metric.vectors))
    return tuple(out)


def _register_builtins() -> None:
    """The built-in metrics; their functions live in ``builtin_metrics`` (one function each).

    ``learnability`` shares the ``loss`` column with ``loss``: both store the learner's loss.
    For token documents ``loss`` is the document's mean next-token loss, the same as ``nll``.
    """
    global _BUILTIN
    from winnow.pipelines import builtin_metrics as b

    both = KINDS
    for metric in (
        Metric(
            "loss", b.loss,
            "the model's per-example loss (higher = harder); for token documents the mean "
            "next-token loss, as nll",
            kinds=both,
        ),
        Metric("el2n", b.el2n, "||softmax(z) - onehot(y)||_2 (higher = harder)"),
        Metric(
            "grad_norm", b.grad_norm,
            "exact per-example gradient norm over all parameters, one backward "
            "(higher = more influential); for token documents of the document's mean loss, "
            "each document in one window (--max-tokens)",
            needs_logits=False, needs_grad=True, kinds=both,
        ),
        Metric(
            "learnability", b.learnability,
            "learner loss - reference loss (ref_loss, from the --reference model); higher = "
            "learnable and not yet learnt",
            outputs=("loss", "ref_loss", "learnability"), needs_reference=True, kinds=both,
        ),
        Metric(
            "entropy", b.entropy, "predictive entropy in nats (higher = less certain)",
            needs_labels=False,
        ),
        Metric(
            "margin", b.margin,
            "p(true class) - max p(other class) (lower = closer to the decision boundary)",
        ),
        Metric(
            EMBEDDING, b.embedding,
            "float16 vectors (model.embed(x) or --embed-layer; for token documents the mean "
            "over the document's tokens) and their L2 norm; the job then stores faiss cluster, "
            "proto_dist and dup_eps<eps> (SemDeDup)",
            outputs=("embedding_norm",), vectors=(EMBEDDING,),
            needs_labels=False, needs_logits=False, needs_embedding=True, kinds=both,
        ),
        Metric(
            "nll", b.loss,
            "a token document's mean next-token loss in nats, over every next token "
            "(higher = less predictable)",
            needs_labels=False, kinds=("tokens",),
        ),
        Metric(
            "perplexity", b.perplexity, "exp(nll) (higher = less predictable)",
            needs_labels=False, kinds=("tokens",),
        ),
        Metric(
            "domain", b.domain,
            "each example's domain from --domain-column (stored whenever that option is given): "
            "the integer, or the code of a string in the manifest's config.domain_names",
            needs_labels=False, needs_logits=False, needs_domain=True, kinds=both,
        ),
    ):  # fmt: skip
        _add(metric, replace=False, builtin=True)
    _BUILTIN = frozenset(_REGISTRY)


_register_builtins()
