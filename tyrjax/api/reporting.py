"""`tyrjax.report`: several runs in one table and one perplexity-against-sparsity plot."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tyrjax.runs.report import Comparison, compare_runs


def report(run_dirs: Sequence[str | Path], out: str | Path, force: bool = False) -> Comparison:
    """Compare the runs of `run_dirs` (eval, prune or sds run directories): OUT/comparison.md
    (perplexity and its change against the dense model, achieved sparsity, parameters; runs on
    the same evaluation windows also window by window against the first, with a 95 %
    paired-bootstrap interval) and OUT/ppl_vs_sparsity.png. OUT holding another run stops the
    call unless `force` (`tyrjax.runs.rundir.claim_run_dir`)."""
    return compare_runs([Path(d) for d in run_dirs], Path(out), force)
