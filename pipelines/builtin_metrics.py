"""The built-in metric functions of the scoring job, one per registry entry.

Each is ``fn(outputs, targets, ctx) -> Tensor [B] | {column: Tensor}`` (see
``pipelines.metric_registry``): ``outputs`` ``[B, C]`` logits, ``targets`` ``[B]`` labels,
``ctx`` a ``MetricContext``. The math lives in ``winnow.selection``; this module only adapts it
to that signature. torch is imported by ``selection`` when a function first runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["el2n", "embedding", "entropy", "grad_norm", "learnability", "loss", "margin"]


def loss(outputs: Any, targets: Any, ctx: Any) -> Any:
    """The learner's per-example loss ``[B]`` (higher = harder)."""
    return ctx.loss(outputs, targets)


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
    from winnow.selection.gradnorm import per_example_grad_norms

    return per_example_grad_norms(ctx.model, ctx.loss_fn, ctx.x, targets)


def learnability(outputs: Any, targets: Any, ctx: Any) -> dict[str, Any]:
    """``loss``, ``ref_loss`` (reference model) and ``learnability = loss - ref_loss``, each
    ``[B]`` (higher learnability = learnable and not yet learnt)."""
    # float32 before subtracting: a half-precision loss would otherwise be cast to the other
    # operand's dtype, and a reference loss rounded to bf16 loses the ~0.01 differences.
    learner = ctx.loss(outputs, targets).float()
    reference = ctx.reference_loss_fn(ctx.reference(ctx.x), targets).float()
    return {"loss": learner, "ref_loss": reference, "learnability": learner - reference}


def embedding(outputs: Any, targets: Any, ctx: Any) -> dict[str, Any]:
    """The ``[B, d]`` embedding (stored float16) and its L2 norm ``embedding_norm`` ``[B]``."""
    return {"embedding": ctx.embedding, "embedding_norm": ctx.embedding.float().norm(dim=1)}
