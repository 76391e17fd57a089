"""Structured pruning of attention heads and MLP neurons: Týr's local pruner and baselines."""

from tyrjax.structured.scores import (
    flap_bias,
    flap_scores,
    flap_standardise,
    keep_lowest_removed,
    magnitude_scores,
    wanda_sp_scores,
)
from tyrjax.structured.local_pruner import (
    obs_remove,
    prune_groups,
    prune_levels,
    refit,
)
from tyrjax.structured.saliency import (
    SALIENCIES,
    get_saliency,
    group_sum,
    magnitude_saliency,
    obs_saliency,
    register_saliency,
    tyr_saliency,
)

__all__ = [
    "SALIENCIES",
    "flap_bias",
    "flap_scores",
    "flap_standardise",
    "get_saliency",
    "group_sum",
    "keep_lowest_removed",
    "magnitude_saliency",
    "magnitude_scores",
    "obs_remove",
    "obs_saliency",
    "prune_groups",
    "prune_levels",
    "refit",
    "register_saliency",
    "tyr_saliency",
    "wanda_sp_scores",
]
