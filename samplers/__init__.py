"""PyTorch integration: epoch samplers and in-step batch selectors.

Epoch samplers (sample-then-batch): :class:`InfoBatchSampler`, :class:`RS2Sampler`,
:class:`PrunedSampler`, fed by :class:`IndexedDataset` ids and ``update``/``reweight`` feedback
into a shared :class:`ScoreTable`.

In-step selectors (batch-then-sample): :class:`JESTSelector`, :class:`RhoLossSelector`,
:class:`TopLossSelector`, :class:`ImportanceSelector` pick rows of a super-batch inside the step
(learner scores from :func:`score_super_batch`) and return ``(rows, weights)``;
:class:`HardBatchSampler` is DyBAT's batch sampler over a fixed partition.
"""

from winnow.samplers.hardbatch import HardBatchSampler
from winnow.samplers.importance import ImportanceSelector
from winnow.samplers.indexed import IndexedDataset
from winnow.samplers.infobatch import InfoBatchSampler
from winnow.samplers.jest import JESTSelector, score_super_batch
from winnow.samplers.pruned import PrunedSampler
from winnow.samplers.rho import (
    RhoLossSelector,
    holdout_split,
    score_irreducible_losses,
    train_irreducible_model,
    train_twin_irreducible,
)
from winnow.samplers.rs2 import RS2Sampler
from winnow.samplers.schedule import compressed_cosine, cosine_lambda
from winnow.samplers.scores import ScoreTable
from winnow.samplers.toploss import TopLossSelector

__all__ = [
    "HardBatchSampler",
    "ImportanceSelector",
    "JESTSelector",
    "RhoLossSelector",
    "TopLossSelector",
    "holdout_split",
    "score_irreducible_losses",
    "score_super_batch",
    "train_irreducible_model",
    "train_twin_irreducible",
    "IndexedDataset",
    "InfoBatchSampler",
    "PrunedSampler",
    "RS2Sampler",
    "ScoreTable",
    "compressed_cosine",
    "cosine_lambda",
]
