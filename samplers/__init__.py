"""PyTorch integration: epoch samplers and in-step batch selectors.

Epoch samplers (sample-then-batch): :class:`InfoBatchSampler`, :class:`RS2Sampler`,
:class:`PrunedSampler`, fed by :class:`IndexedDataset` ids and ``update``/``reweight`` feedback
into a shared :class:`ScoreTable`.
"""

from samplers.indexed import IndexedDataset
from samplers.infobatch import InfoBatchSampler
from samplers.pruned import PrunedSampler
from samplers.rs2 import RS2Sampler
from samplers.schedule import compressed_cosine, cosine_lambda
from samplers.scores import ScoreTable

__all__ = [
    "IndexedDataset",
    "InfoBatchSampler",
    "PrunedSampler",
    "RS2Sampler",
    "ScoreTable",
    "compressed_cosine",
    "cosine_lambda",
]
