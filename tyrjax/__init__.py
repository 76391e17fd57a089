"""tyrjax: Týr-the-Pruner and SDS LLM compression in pure functional JAX.

The entry points are those of `tyrjax.api`: `prune`, `evaluate`, `bench`, `report` and `finetune` here too;
SDS runs with `tyrjax.api.sds` (`tyrjax.sds` is the package of the method itself)."""
from tyrjax.api import (BenchConfig, BenchResult, Comparison, DataConfig, EvalResult, FinetuneConfig, FinetuneResult,
                        ModelSpec, PruneResult, SDSConfig, TasksConfig, TyrConfig, bench, calibration_windows, evaluate,
                        evaluation_sets, finetune, generate_text, param_counts, prune, report)
from tyrjax.checkpoints.loading import Model, load_model
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig

__all__ = [
    "BenchConfig", "BenchResult", "Comparison", "DataConfig", "EvalResult", "FinetuneConfig", "FinetuneResult", "Model",
    "ModelConfig", "ModelSpec", "PruneResult", "SDSConfig", "TasksConfig", "TyrConfig", "TyrjaxError", "bench", "calibration_windows", "evaluate",
    "evaluation_sets", "finetune", "generate_text", "load_model", "param_counts", "prune", "report",
]
__version__ = "0.1.0"
