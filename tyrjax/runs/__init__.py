"""Run directories, resource plans and plots."""

from tyrjax.runs.rundir import (
    Timer,
    claim_run_dir,
    default_out,
    print_table,
)
from tyrjax.runs.plan import (
    MeshSpec,
    SDSRun,
    TyrRun,
    sds_memory,
    sds_seconds,
    tyr_memory,
    tyr_seconds,
)
from tyrjax.runs.plots import per_layer_sparsity, search_convergence

__all__ = [
    "MeshSpec",
    "SDSRun",
    "Timer",
    "TyrRun",
    "claim_run_dir",
    "default_out",
    "per_layer_sparsity",
    "print_table",
    "sds_memory",
    "sds_seconds",
    "search_convergence",
    "tyr_memory",
    "tyr_seconds",
]
