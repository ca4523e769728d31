"""PyTorch integration: epoch samplers and in-step batch selectors.

Epoch samplers (sample-then-batch): :class:`EpochSampler` runs a method's :class:`EpochPolicy`
(:class:`InfoBatch`, :class:`RS2`, :class:`StaticSubset`, or your own; docs/extending.md) and owns
sharding, iteration, feedback, trace and checkpoints. :class:`InfoBatchSampler`,
:class:`RS2Sampler` and :class:`PrunedSampler` are those policies ready to use. Items come from
:class:`IndexedDataset` with their ``example_id``; ``update``/``reweight`` feed losses back into
a shared :class:`ScoreTable`.

In-step selectors (batch-then-sample): subclasses of :class:`InStepSelector`
(:class:`JESTSelector`, :class:`RhoLossSelector`, :class:`TopLossSelector`,
:class:`ImportanceSelector`) pick rows of a super-batch inside the step (learner scores from
:func:`score_super_batch`) and return ``(rows, weights)``; :class:`HardBatchSampler` is DyBAT's
batch sampler over a fixed partition, :class:`ODMSampler` Online Data Mixing's. Given
``trace=ScoreStore(root).trace_writer(run)``, every sampler and selector records its decisions
for SQL (docs/traces.md); :class:`NoiseScaleMonitor` measures the gradient noise scale during
training (docs/noise-scale.md).

Every ``state_dict()`` holds only tensors and plain values (``torch.load`` defaults read it) and
``load_state_dict`` refuses another configuration (docs/conventions.md).

Framework adapters live in their own modules and import their framework lazily, so importing
this package never imports them: :mod:`winnow.samplers.lightning` (``WinnowCallback``) and
:mod:`winnow.samplers.huggingface` (``WinnowTrainer``, ``prepare_loader`` for accelerate);
docs/frameworks.md.
"""

from winnow.samplers.epoch import EpochPlan, EpochPolicy, EpochSampler, SeedStreams, TraceWriter
from winnow.samplers.hardbatch import HardBatchSampler
from winnow.samplers.importance import ImportanceSelector
from winnow.samplers.indexed import IndexedDataset, collate_with_ids
from winnow.samplers.infobatch import InfoBatch, InfoBatchSampler
from winnow.samplers.jest import JESTSelector, score_super_batch
from winnow.samplers.noise_monitor import NoiseScaleMonitor
from winnow.samplers.odm import ODMSampler
from winnow.samplers.pruned import PrunedSampler, StaticSubset
from winnow.samplers.rho import (
    RhoLossSelector,
    holdout_split,
    score_irreducible_losses,
    train_irreducible_model,
    train_twin_irreducible,
)
from winnow.samplers.rs2 import RS2, RS2Sampler
from winnow.samplers.schedule import compressed_cosine, cosine_lambda
from winnow.samplers.score_table import ScoreTable
from winnow.samplers.selector import InStepSelector
from winnow.samplers.toploss import TopLossSelector

__all__ = [
    "EpochPlan",
    "EpochPolicy",
    "EpochSampler",
    "HardBatchSampler",
    "ImportanceSelector",
    "InStepSelector",
    "IndexedDataset",
    "InfoBatch",
    "InfoBatchSampler",
    "JESTSelector",
    "NoiseScaleMonitor",
    "ODMSampler",
    "PrunedSampler",
    "RS2",
    "RS2Sampler",
    "RhoLossSelector",
    "ScoreTable",
    "SeedStreams",
    "StaticSubset",
    "TopLossSelector",
    "TraceWriter",
    "compressed_cosine",
    "collate_with_ids",
    "cosine_lambda",
    "holdout_split",
    "score_irreducible_losses",
    "score_super_batch",
    "train_irreducible_model",
    "train_twin_irreducible",
]
