"""Semi-structured and unstructured weight sparsity: masks, patterns and the one-shot pruners."""

from tyrjax.sparse.magnitude import magnitude_prune
from tyrjax.sparse.patterns import (
    NByM,
    Pattern,
    Unstructured,
    check_pattern,
    mask_from_scores,
    nm_mask_from_scores,
    parse_pattern,
    unstructured_mask_from_scores,
    unstructured_mask_per_output,
)
from tyrjax.sparse.pruners import SPARSE_PRUNERS, SparsePruner, register_sparse_pruner
from tyrjax.sparse.sparsegpt import sparsegpt_prune
from tyrjax.sparse.wanda import wanda_prune

__all__ = [
    "NByM",
    "Pattern",
    "SPARSE_PRUNERS",
    "SparsePruner",
    "Unstructured",
    "check_pattern",
    "magnitude_prune",
    "mask_from_scores",
    "nm_mask_from_scores",
    "parse_pattern",
    "register_sparse_pruner",
    "sparsegpt_prune",
    "unstructured_mask_from_scores",
    "unstructured_mask_per_output",
    "wanda_prune",
]
