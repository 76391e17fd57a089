"""Where a pruned model came from: the prune or sds run that wrote it, and that run's dense model.

`tyrjax prune` and `tyrjax sds` write the pruned model into RUN_DIR/model (and RUN_DIR/hf,
RUN_DIR/hf_llama) beside RUN_DIR/metrics.json, whose "model" field records the `--model` the
run pruned, and RUN_DIR/command.json, which records the directory it ran in. `tyrjax bench` and
`tyrjax eval` read them to compare a pruned model with its dense original.
"""
from __future__ import annotations

import dataclasses
import json
import sys
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


def dense_comparison(model_spec: str | None, sets: dict, dtype: str, batch_size: int) -> dict[str, Any]:
    """metrics.json fields comparing a pruned model with its dense original on the same
    evaluation windows (`api.dense_reference`, cached): {} for a model no run wrote."""
    from tyrjax import api
    from tyrjax.checkpoints.loading import load_model

    origin = find_origin(model_spec)
    if origin is None:
        return {}
    fields: dict[str, Any] = {"pruned_by": {"run": str(origin.run_dir), "method": origin.method, "sparsity": origin.sparsity}}
    try:
        dense = dense_spec(origin)
    except TyrjaxError as e:
        print(f"no dense reference ({e}); metrics and report show this model alone", file=sys.stderr)
        return fields
    reference = api.dense_reference(load_model(dense, dtype), sets, batch_size)
    fields.update(dense_model=reference["model"], dense_ppl=reference["ppl"], dense_window_nll=reference["window_nll"],
                  dense_params=reference["params"])
    return fields
