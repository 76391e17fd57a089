"""Perplexity, paired comparisons, generation speed and zero-shot accuracy (lm-evaluation-harness loads on use)."""

from tyrjax.evaluation.perplexity import (
    perplexity,
    perplexity_blockwise,
    ppl_of,
    window_nlls,
    window_nlls_blockwise,
)
from tyrjax.evaluation.paired import PairedAccuracy, PairedRatio, format_accuracy, format_ratio, paired_accuracy, paired_ratio
from tyrjax.evaluation.speed import measure_speed, speed_table
from tyrjax.evaluation.zeroshot import (
    DEFAULT_LIMIT,
    PAPER_TASKS,
    prepare_tasks,
    run_tasks,
    tasks_mean,
    zero_shot,
)

__all__ = [
    "DEFAULT_LIMIT",
    "PairedAccuracy",
    "PairedRatio",
    "PAPER_TASKS",
    "format_accuracy",
    "format_ratio",
    "measure_speed",
    "paired_accuracy",
    "paired_ratio",
    "perplexity",
    "perplexity_blockwise",
    "ppl_of",
    "prepare_tasks",
    "run_tasks",
    "speed_table",
    "tasks_mean",
    "window_nlls",
    "window_nlls_blockwise",
    "zero_shot",
]
