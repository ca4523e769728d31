"""The built-in metric functions of the scoring job, one per registry entry.

Each is ``fn(outputs, targets, ctx) -> Tensor [B] | {column: Tensor}`` (see
``pipelines.metric_registry``): ``outputs`` ``[B, C]`` logits, ``targets`` ``[B]`` labels,
``ctx`` a ``MetricContext``. The math lives in ``winnow.selection``; this module only adapts it
to that signature. torch is imported by ``selection`` when a function first runs.

For token documents ``ctx`` is a ``TokenContext`` (``pipelines.token_context``): its ``loss``,
``reference_loss`` and ``grad_norms`` are per document, so ``loss``/``nll``, ``perplexity``,
``learnability`` and ``grad_norm`` are the same functions for both kinds of data.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "domain",
    "el2n",
    "embedding",
    "entropy",
    "grad_norm",
    "learnability",
    "loss",
    "margin",
    "perplexity",
]


def loss(outputs: Any, targets: Any, ctx: Any) -> Any:
    """The learner's per-example loss ``[B]`` (higher = harder); a token document's mean
    next-token loss (``nll``)."""
    return ctx.loss(outputs, targets)


def perplexity(outputs: Any, targets: Any, ctx: Any) -> Any:
    """``exp(nll)`` of each token document, ``[B]`` (higher = less predictable)."""
    return ctx.loss(outputs, targets).float().exp()


def domain(outputs: Any, targets: Any, ctx: Any) -> Any:
    """The ``[B]`` domain codes of the job's ``--domain-column``."""
    return ctx.domain


def el2n(outputs: Any, targets: Any, ctx: Any) -> Any:
    """``||softmax(z) - onehot(y)||_2``, ``[B]`` (higher = harder)."""
    from winnow.selection.scores import el2n as _el2n

    return _el2n(outputs, targets)


def entropy(outputs: Any, targets: Any, ctx: Any) -> Any:
    """Predictive entropy ``[B]`` in nats (higher = less certain); needs no labels."""
    from winnow.selection.scores import entropy as _entropy

    return _entropy(outputs)


def margin(outputs: Any, targets: Any, ctx: Any) -> Any:
    """Probability margin ``[B]`` (lower = closer to the decision boundary)."""
    from winnow.selection.scores import margin as _margin

    return _margin(outputs, targets)


def grad_norm(outputs: Any, targets: Any, ctx: Any) -> Any:
    """Exact per-example gradient norm ``[B]`` over all parameters (one backward pass)."""
    return ctx.grad_norms(targets)


def learnability(outputs: Any, targets: Any, ctx: Any) -> dict[str, Any]:
    """``loss``, ``ref_loss`` (reference model) and ``learnability = loss - ref_loss``, each
    ``[B]`` (higher learnability = learnable and not yet learnt)."""
    # float32 before subtracting: a half-precision loss would otherwise be cast to the other
    # operand's dtype, and a reference loss rounded to bf16 loses the ~0.01 differences.
    learner = ctx.loss(outputs, targets).float()
    reference = ctx.reference_loss(targets).float()
    return {"loss": learner, "ref_loss": reference, "learnability": learner - reference}


def embedding(outputs: Any, targets: Any, ctx: Any) -> dict[str, Any]:
    """The ``[B, d]`` embedding (stored float16) and its L2 norm ``embedding_norm`` ``[B]``."""
    return {"embedding": ctx.embedding, "embedding_norm": ctx.embedding.float().norm(dim=1)}
