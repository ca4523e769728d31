"""The metric context of token documents: per-document losses and gradient norms over windows.

The scorer cuts a batch of ``B`` token documents into ``M`` windows (``winnow.selection.lm``;
docs/scoring-job.md, "Token documents") and runs the model once on them. A metric then sees the
windows' ``[M, W, V]`` logits and ``[M, W]`` next-token targets, and asks this context for one
value per document: the learner's mean next-token loss (``loss``), the reference model's
(``reference_loss``), or the gradient norm of the learner's loss (``grad_norms``).

``loss_fn`` / ``reference_loss_fn`` are per-token losses here: ``(logits [N, V], targets [N])
-> [N]`` (softmax cross-entropy unless the model's factory returned its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from winnow.pipelines.metric_registry import MetricContext

__all__ = ["TokenContext"]


@dataclass
class TokenContext(MetricContext):
    """``MetricContext`` for token documents. ``x`` is the windows' tokens ``[M, W]``;
    ``windows`` the ``selection.lm.Windows`` they came from; ``max_tokens`` the job's."""

    windows: Any = None
    max_tokens: int | None = None

    def loss(self, outputs: Any, targets: Any) -> Any:
        """Each document's mean next-token loss ``[B]`` (computed once, shared)."""
        from winnow.selection.lm import document_losses, lm_logits, token_losses

        if self._loss is None:
            logits = lm_logits(outputs, self.windows)
            self._loss = document_losses(token_losses(logits, targets, self.loss_fn), self.windows)
        return self._loss

    def reference_loss(self, targets: Any) -> Any:
        """The reference model's mean next-token loss of each document ``[B]``, same windows."""
        from winnow.selection.lm import document_losses, lm_logits, token_losses

        logits = lm_logits(self.reference(self.windows.tokens), self.windows)
        per_token = token_losses(logits, targets, self.reference_loss_fn)
        return document_losses(per_token, self.windows)

    def grad_norms(self, targets: Any) -> Any:
        """Exact gradient norm of each document's mean loss ``[B]``; every document must fit in
        one window (a document's windows are separate rows, whose gradients do not add up in
        the per-example norms)."""
        from winnow.selection.gradnorm import per_example_grad_norms
        from winnow.selection.lm import IGNORE, lm_logits, token_losses

        if not self.windows.one_per_document:
            counts = self.windows.document.bincount()
            row = int(counts.argmax())
            tokens = int(self.windows.new[self.windows.document == row].sum())
            raise ValueError(
                f"grad_norm scores each document in one window, but a document of {tokens} "
                f"tokens is longer than --max-tokens {self.max_tokens}; raise --max-tokens or "
                "score grad_norm separately"
            )
        token_loss = self.loss_fn

        def per_document(outputs: Any, window_targets: Any) -> Any:
            per_token = token_losses(lm_logits(outputs), window_targets, token_loss)
            return per_token.sum(1) / (window_targets != IGNORE).sum(1)

        return per_example_grad_norms(self.model, per_document, self.windows.tokens, targets)
