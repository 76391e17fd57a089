"""tyrjax: Týr-the-Pruner and SDS LLM compression in pure functional JAX."""
from tyrjax.api import calibration_windows, evaluate, evaluation_sets, generate_text, param_counts
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.loading import Model, load_model

__all__ = [
    "Model", "ModelConfig", "TyrjaxError", "calibration_windows", "evaluate", "evaluation_sets",
    "generate_text", "load_model", "param_counts",
]
__version__ = "0.1.0"
