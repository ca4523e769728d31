"""What the scoring job checks on the driver before it writes anything or starts Ray.

Starting Ray and its actors costs seconds to minutes; an actor that then fails on a typo costs
all of it and leaves a failed run behind. So everything that can be known on the driver is
checked first, each with a one-line ``ValueError``/``TypeError``:

- the data: columns exist and have usable types, ids (``source.plan()``); a dataset factory
  imports and builds; the metrics' needs (labels, a reference) are met;
- the models: factories import (module and attribute) and build on the ``meta`` device (no
  memory for the weights); checkpoint keys and shapes fit (``--checkpoint-key``,
  ``--strip-prefix``); ``--embed-layer`` names a layer, or the model has ``embed()``;
- the actor pool of a local Ray the job will start: it must not claim every CPU (with
  ``--device cuda`` only when ``--actors`` is given; otherwise it is one actor per GPU).

See docs/scoring-job.md.
"""

from __future__ import annotations

from winnow.pipelines.executors import local_ray_cpus, plan_actors
from winnow.pipelines.jobspec import ScoreJob
from winnow.pipelines.models import check_model

__all__ = ["check_job"]


def check_job(job: ScoreJob) -> None:
    """Check ``job``'s models and its local actor pool (the data is checked by ``plan()``)."""
    needs_embedding = any(m.needs_embedding for m in job.entries)
    check_model(job.model, embed_layer=job.embed_layer, needs_embedding=needs_embedding)
    if job.reference is not None:
        check_model(job.reference)
    # With --device cuda and no --actors, the pool's size is the GPU count, known once Ray runs.
    if job.executor == "ray" and (job.device == "cpu" or job.actors is not None):
        cpus = local_ray_cpus(job)
        if cpus is not None:
            plan_actors(float(cpus), None, job.actors, job.cpus_per_actor, job.device)
