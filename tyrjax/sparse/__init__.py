"""Semi-structured and unstructured weight sparsity: one-shot pruners and SDS reconstruction."""

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
from tyrjax.sparse.reconstruct import (
    DEFAULT_LEARNING_RATE,
    Grams,
    grams_from_inputs,
    make_optimizer,
    reconstruction_loss,
    reconstruction_value_and_grad,
    redense,
    sparse_adjust,
)
from tyrjax.sparse.sparsegpt import sparsegpt_prune
from tyrjax.sparse.wanda import wanda_prune

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "Grams",
    "NByM",
    "Pattern",
    "Unstructured",
    "check_pattern",
    "grams_from_inputs",
    "magnitude_prune",
    "make_optimizer",
    "mask_from_scores",
    "nm_mask_from_scores",
    "parse_pattern",
    "reconstruction_loss",
    "reconstruction_value_and_grad",
    "redense",
    "sparse_adjust",
    "sparsegpt_prune",
    "unstructured_mask_from_scores",
    "unstructured_mask_per_output",
    "wanda_prune",
]
