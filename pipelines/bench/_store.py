"""Optional: keep the benchmark's scores, every method's trace and the noise scale in a store.

With ``--store ROOT`` the first seed of each model leaves, per model:

- run ``<model>-scores``: ``loss`` (full-data model after training), ``el2n`` (mean EL2N of the
  scoring runs), ``ref_loss`` (twin irreducible-loss models) and ``learnability`` =
  ``loss - ref_loss``, whichever the selected methods computed;
- run ``<model>-<method>`` for every method: its decisions, written by its sampler or selector
  through its ``trace`` hook (docs/traces.md): per-epoch plans for the epoch samplers
  (InfoBatch, RS2, static subsets), per-step candidates, scores and kept rows for the in-step
  selectors and hard batches, and every trained batch for full data;
- in run ``<model>-full`` also the gradient noise scale of full-data training, measured with
  the per-example estimator from the training backward (``NoiseScaleMonitor``).

Writing the traces and measuring the noise scale is part of seed 0's measured time.
``winnow report --store ROOT`` then shows real benchmark data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from winnow.pipelines.bench._engine import MethodRun

__all__ = ["BenchStore"]


class BenchStore:
    """Writes one model's first-seed scores and trace into ``store.ScoreStore(root)``."""

    def __init__(self, root: str, config: dict):
        from winnow.store import ScoreStore

        self.store = ScoreStore(root)
        self.config = config

    def attach_trace(self, run: MethodRun, model: str, method: str) -> str:
        """Give ``run`` a trace writer for run ``<model>-<method>`` (and, for full data, a
        noise-scale monitor on its learner that logs ~200 rows over the run)."""
        name = f"{model}-{method}"
        self.store.begin_run(
            name,
            kind="training",
            num_examples=run.task.num_examples,
            config={**self.config, "method": method},
        )
        run.trace = self.store.trace_writer(name)
        if method == "full":
            from winnow.samplers import NoiseScaleMonitor

            steps = run.recipe.epochs * -(-run.task.num_examples // run.recipe.batch_size)
            run.noise = NoiseScaleMonitor(log_every=max(1, steps // 200), trace=run.trace)
            run.noise.attach(run.learner.model, estimator="per_example")
        return name

    def finish_trace(self, run: MethodRun) -> None:
        """Write what is left and finish the run's manifest."""
        if run.noise is not None:
            run.noise.detach()
            run.noise.close()  # its last row, then the writer: the run's manifest
        else:
            run.trace.close()

    @torch.no_grad()
    def write_scores(self, model: str, full_run: MethodRun, el2n, ref_loss) -> str:
        """Scores of every training example (float32 [N] each) under run ``<model>-scores``."""
        name = f"{model}-scores"
        task = full_run.task
        net = full_run.learner.model.eval()
        loss = torch.cat(
            [
                F.cross_entropy(net(task.x[i : i + 8192]), task.y[i : i + 8192], reduction="none")
                for i in range(0, task.num_examples, 8192)
            ]
        ).numpy()
        metrics = {"loss": loss}
        if el2n is not None:
            metrics["el2n"] = el2n
        if ref_loss is not None:
            metrics["ref_loss"] = ref_loss
            metrics["learnability"] = loss - ref_loss
        ids = np.arange(task.num_examples)
        self.store.begin_run(
            name, kind="scores", num_examples=len(ids), config=self.config, metrics=list(metrics)
        )
        for metric, values in metrics.items():
            self.store.write(name, metric, ids, values.astype(np.float32))
        self.store.finish_run(name)
        return name
