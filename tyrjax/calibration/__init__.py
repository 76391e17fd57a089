"""Statistics of each linear layer's calibration inputs and the damped Hessian built from them."""

from tyrjax.calibration.statistics import (
    InputStats,
    attention_inputs,
    attention_residual,
    check_finite,
    cross_gram,
    embed_windows,
    mlp_inputs,
    mlp_residual,
    stats_of,
)
from tyrjax.calibration.hessian import damped_hessian

__all__ = [
    "InputStats",
    "attention_inputs",
    "attention_residual",
    "check_finite",
    "cross_gram",
    "damped_hessian",
    "embed_windows",
    "mlp_inputs",
    "mlp_residual",
    "stats_of",
]
