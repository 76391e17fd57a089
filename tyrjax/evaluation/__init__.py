"""Perplexity, paired comparisons, generation speed and zero-shot accuracy (lm-evaluation-harness loads on use)."""

from tyrjax.evaluation.perplexity import (
    perplexity,
    perplexity_blockwise,
    ppl_of,
    window_nlls,
    window_nlls_blockwise,
)
from tyrjax.evaluation.paired import PairedRatio, format_ratio, paired_ratio
from tyrjax.evaluation.speed import measure_speed, speed_table
from tyrjax.evaluation.zeroshot import (
    DEFAULT_LIMIT,
    SUITE,
    offline_tasks_dir,
    prepare_tasks,
    run_tasks,
    zero_shot,
)

__all__ = [
    "DEFAULT_LIMIT",
    "PairedRatio",
    "SUITE",
    "format_ratio",
    "measure_speed",
    "offline_tasks_dir",
    "paired_ratio",
    "perplexity",
    "perplexity_blockwise",
    "ppl_of",
    "prepare_tasks",
    "run_tasks",
    "speed_table",
    "window_nlls",
    "window_nlls_blockwise",
    "zero_shot",
]
