"""The math of data selection: per-example scores and choosers. Arrays in, arrays out."""

from winnow.selection.choose import (
    bottom_k,
    class_budgets,
    gumbel_top_k,
    offset_window,
    random_mix,
    stratified,
    subsample_top_k,
    threshold,
    top_k,
    uniform,
)
from winnow.selection.choose_torch import gumbel_top_k_torch
from winnow.selection.embed import (
    KMeansResult,
    SemDeDupResult,
    assign_to_centroids,
    class_prototype_distance,
    semdedup,
    spherical_kmeans,
)
from winnow.selection.gradnorm import per_example_grad_norms
from winnow.selection.importance import (
    last_layer_bound,
    sample_with_replacement,
    tau_threshold,
    variance_reduction,
)
from winnow.selection.jest import (
    jest_scores,
    joint_learnability,
    joint_sample,
    sample_per_example,
)
from winnow.selection.lm import (
    Windows,
    document_losses,
    document_nll,
    make_windows,
    pool_windows,
    token_losses,
)
from winnow.selection.losses import (
    as_per_example,
    per_example_cross_entropy,
    per_example_mse,
    sequence_loss,
    sigmoid_pair_losses,
)
from winnow.selection.noise_scale import (
    NoiseScaleEstimate,
    NoiseScaleTracker,
    grad_sq_norm,
    noise_scale_from_per_example,
    noise_scale_two_batches,
)
from winnow.selection.scores import (
    ForgettingTracker,
    el2n,
    entropy,
    last_layer_grad_norm,
    learnability,
    margin,
)

__all__ = [
    "ForgettingTracker",
    "KMeansResult",
    "NoiseScaleEstimate",
    "NoiseScaleTracker",
    "SemDeDupResult",
    "Windows",
    "as_per_example",
    "assign_to_centroids",
    "bottom_k",
    "class_budgets",
    "class_prototype_distance",
    "document_losses",
    "document_nll",
    "el2n",
    "entropy",
    "grad_sq_norm",
    "gumbel_top_k",
    "gumbel_top_k_torch",
    "jest_scores",
    "joint_learnability",
    "joint_sample",
    "last_layer_bound",
    "last_layer_grad_norm",
    "make_windows",
    "learnability",
    "margin",
    "noise_scale_from_per_example",
    "noise_scale_two_batches",
    "offset_window",
    "per_example_cross_entropy",
    "per_example_grad_norms",
    "per_example_mse",
    "pool_windows",
    "random_mix",
    "sample_per_example",
    "sample_with_replacement",
    "semdedup",
    "sequence_loss",
    "sigmoid_pair_losses",
    "spherical_kmeans",
    "stratified",
    "subsample_top_k",
    "tau_threshold",
    "threshold",
    "token_losses",
    "top_k",
    "uniform",
    "variance_reduction",
]
