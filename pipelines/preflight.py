"""What the scoring job checks on the driver before it writes anything or starts Ray.

Starting Ray and its actors costs seconds to minutes; an actor that then fails on a typo costs
all of it and leaves a failed run behind. So everything that can be known on the driver is
checked first, each with a one-line ``ValueError``/``TypeError``:

- the data: columns exist and have usable types, ids (``source.plan()``); a dataset factory
  imports and builds; the metrics' needs (labels, a reference) are met;
- the models: factories import (module and attribute) and build on the ``meta`` device (no
  memory for the weights); checkpoint keys and shapes fit (``--checkpoint-key``,
  ``--strip-prefix``); ``--embed-layer`` names a layer, or the model has ``embed()``;
- token documents: the token ids (their range, from ``source.plan()``) are ``>= 0`` and below
  each model's vocabulary (the last size of its logits for a 2-token input on ``meta``, else its
  first ``nn.Embedding``'s size);
- the actor pool of a local Ray the job will start: it must fit its CPUs (with
  ``--device cuda`` only when ``--actors`` is given; otherwise it is one actor per GPU).

See docs/scoring-job.md.
"""

from __future__ import annotations

from typing import Any

from winnow.pipelines.executors import local_ray_cpus, plan_actors
from winnow.pipelines.jobspec import ScoreJob
from winnow.pipelines.models import ModelSpec, check_model
from winnow.pipelines.source_base import SourcePlan

__all__ = ["check_job", "vocab_size"]


def check_job(job: ScoreJob, data_plan: SourcePlan | None = None) -> None:
    """Check ``job``'s models, its token ids against them (given the data's ``plan()``, which
    checked the data itself) and its local actor pool."""
    needs_embedding = any(m.needs_embedding for m in job.entries)
    token_range = None if data_plan is None else data_plan.token_range
    if job.token_column is not None and token_range is not None and token_range[0] < 0:
        raise ValueError(
            f"token column {job.token_column!r} holds token id {token_range[0]}; token ids "
            "must be >= 0"
        )
    model = check_model(job.model, embed_layer=job.embed_layer, needs_embedding=needs_embedding)
    models = [(job.model, model, "model")]
    if job.reference is not None:
        models.append((job.reference, check_model(job.reference), "reference"))
    if job.token_column is not None and token_range is not None:
        for spec, built, what in models:
            _check_vocab(job.token_column, token_range[1], spec, built, what)
    # With --device cuda and no --actors, the pool's size is the GPU count, known once Ray runs.
    if job.executor == "ray" and (job.device == "cpu" or job.actors is not None):
        cpus = local_ray_cpus(job)
        if cpus is not None:
            plan_actors(float(cpus), None, job.actors, job.cpus_per_actor, job.device)


def vocab_size(model: Any) -> int | None:
    """The vocabulary of a causal LM: the last size of its logits for one 2-token input (run
    on the model's device, ``meta`` when built there), else the size of its first
    ``nn.Embedding``; None if neither is known. The global RNG is left as it was."""
    import torch
    from torch import nn

    from winnow.selection.lm import lm_logits

    try:
        device = next(model.parameters()).device
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            output = model(torch.zeros((1, 2), dtype=torch.int64, device=device))
        return int(lm_logits(output).shape[-1])
    except Exception:  # not a plain [B, T] -> [B, T, V] forward on this device: fall back
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                return int(module.num_embeddings)
    return None


def _check_vocab(column: str, largest: int, spec: ModelSpec, model: Any, what: str) -> None:
    vocab = vocab_size(model)
    if vocab is not None and largest >= vocab:
        raise ValueError(
            f"token column {column!r} holds token id {largest}, but the {what} of "
            f"{spec.factory!r} has a vocabulary of {vocab} (ids 0..{vocab - 1})"
        )
