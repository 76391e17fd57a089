"""The Python API: what every command does, as typed calls.

    import tyrjax
    from tyrjax import DataConfig, SDSConfig

    result = tyrjax.prune(method="tyr", sparsity=0.5, out="runs/tyr")  # the embedded default model
    print(result.ppl, result.metrics["sparsity"])                      # result.model is the compact model
    sds = tyrjax.api.sds(config=SDSConfig(pruner="wanda", pattern="2:4"), data=DataConfig(calib_windows=32))
    print(tyrjax.evaluate("runs/tyr/model").ppl)                        # beside the dense model it came from

Every call takes a model as a loaded `Model`, a `ModelSpec`, a path or hub name (None: the
embedded default), typed settings (`DataConfig`, `TyrConfig`, `SDSConfig`, `TasksConfig`,
`BenchConfig`) and an optional `out` run directory, and returns a typed result whose `metrics`
are what the command writes to metrics.json. The building blocks: `evaluation_sets`,
`calibration_windows`, `perplexity_metrics`, `dense_reference`, `zero_shot`, `generate_text`.
"""
from tyrjax.api.benchmark import bench
from tyrjax.api.configs import ALONE, BenchConfig, DataConfig, ModelSpec, SDSConfig, TasksConfig
from tyrjax.api.evaluating import evaluate
from tyrjax.api.finetuning import FinetuneResult, finetune
from tyrjax.api.generation import generate_text
from tyrjax.api.methods import PRUNE_METHODS, preset_config
from tyrjax.api.pruning import prune, sds
from tyrjax.api.reporting import report
from tyrjax.api.results import BenchResult, EvalResult, PruneResult
from tyrjax.api.scoring import (calibration_windows, dense_comparison, dense_reference, evaluation_sets, param_counts,
                                perplexity_metrics, windows_digest)
from tyrjax.evaluation.zeroshot import zero_shot
from tyrjax.recovery.train import FinetuneConfig
from tyrjax.runs.report import Comparison
from tyrjax.tyr.pipeline import PRESETS, TyrConfig

__all__ = [
    "ALONE", "BenchConfig", "BenchResult", "Comparison", "DataConfig", "EvalResult", "FinetuneConfig", "FinetuneResult",
    "ModelSpec", "PRESETS",
    "PRUNE_METHODS", "PruneResult", "SDSConfig", "TasksConfig", "TyrConfig", "bench", "calibration_windows",
    "dense_comparison", "dense_reference", "evaluate", "evaluation_sets", "finetune", "generate_text", "param_counts",
    "perplexity_metrics", "preset_config", "prune", "report", "sds", "windows_digest", "zero_shot",
]
