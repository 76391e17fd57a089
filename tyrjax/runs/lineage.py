"""Where a pruned model came from: the prune or sds run that wrote it, and that run's dense model.

`tyrjax prune` and `tyrjax sds` write the pruned model into RUN_DIR/model (and RUN_DIR/hf,
RUN_DIR/hf_llama) beside RUN_DIR/metrics.json, whose "model" field records the `--model` the
run pruned, and RUN_DIR/command.json, which records the directory it ran in. `tyrjax bench` and
`tyrjax eval` (`tyrjax.api`) read them to compare a pruned model with its dense original.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.loading import DEFAULT_SOURCE as EMBEDDED_DEFAULT_SOURCE
from tyrjax.checkpoints.loading import HUB_NAME


@dataclasses.dataclass(frozen=True)
class Origin:
    """The run that wrote a pruned model: its directory, method, achieved sparsity and the
    dense model exactly as recorded (`recorded`, relative paths meant from `cwd`)."""

    run_dir: Path
    method: str
    sparsity: float | None
    recorded: str
    cwd: Path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def find_origin(model_spec: str | None) -> Origin | None:
    """The prune/sds run whose output directory `model_spec` is, or None when it is not one."""
    if model_spec is None:
        return None
    path = Path(model_spec).expanduser()
    if not path.is_dir():
        return None
    run_dir = path.resolve().parent
    metrics = _read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("model"), str) or "method" not in metrics:
        return None
    command = _read_json(run_dir / "command.json")
    cwd = Path(command["cwd"]) if isinstance(command, dict) and isinstance(command.get("cwd"), str) else run_dir.parent
    sparsity = metrics.get("sparsity")
    achieved = sparsity.get("achieved") if isinstance(sparsity, dict) else None
    return Origin(run_dir, str(metrics["method"]), achieved, metrics["model"], cwd)


def dense_spec(origin: Origin) -> str | None:
    """The recorded dense model as a `--model` value (None = the embedded default); raises
    TyrjaxError when it is no longer there (the caller names the fix)."""
    if origin.recorded == EMBEDDED_DEFAULT_SOURCE:
        return None
    path = Path(origin.recorded).expanduser()
    path = path if path.is_absolute() else origin.cwd / path
    if path.exists():
        return str(path)
    if HUB_NAME.match(origin.recorded):
        return origin.recorded
    raise TyrjaxError(
        f"{origin.run_dir / 'metrics.json'} records the dense model as {origin.recorded!r}, which is no longer "
        f"at {path}"
    )
