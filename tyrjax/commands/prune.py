"""`tyrjax prune --sparsity S --method tyr|uniform|wanda-sp|flap|magnitude`: one run directory."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from tyrjax import api
from tyrjax.parallel.distributed import is_writer
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.export import export_pruned
from tyrjax.model.blocks import HeldBlocks, ModelBlocks
from tyrjax.checkpoints.loading import Model, load_model
from tyrjax.model.decoder import compact_from_masked
from tyrjax.runs.plots import per_layer_sparsity, search_convergence
from tyrjax.runs.report import write_report
from tyrjax.runs.rundir import Timer, default_out, record_command
from tyrjax.files import write_json
from tyrjax.parallel.sharding import resolve_mesh
from tyrjax.checkpoints.loading import on_active_mesh
from tyrjax.tyr.budget import sparsity_report
from tyrjax.tyr.pipeline import (PRESETS, Selection, TyrConfig, distribution_selection, removed_groups, run_tyr,
                                 uniform_selection)

# quick: the protocol's reference size; paper: enough 512-token windows for the last selection
# stage's 131,072 tokens.
PRESET_CALIB_WINDOWS = {"quick": 64, "paper": 256}


def tyr_config(args: argparse.Namespace) -> TyrConfig:
    tcfg = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("iterations", "generations", "offspring") if getattr(args, k, None)}
    if "offspring" in overrides:
        n = overrides["offspring"]
        stages = tuple((min(c, n), t) for c, t in tcfg.stages)
        overrides["stages"] = ((n, stages[0][1]),) + stages[1:]
    return dataclasses.replace(tcfg, seed=args.seed, keep_supernets=args.keep_supernets, **overrides)


def load_distribution(path: Path, model: Model) -> np.ndarray:
    try:
        data = json.loads(Path(path).read_text())
        removed = np.asarray(data["removed_groups"], np.int64)
    except FileNotFoundError:
        raise TyrjaxError(f"--distribution {path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise TyrjaxError(f"--distribution {path}: not a tyrjax distribution file ({e}); use RUN_DIR/distribution.json") from None
    if data.get("n_layers") != model.cfg.n_layers or data.get("n_heads") != model.cfg.n_heads or \
            data.get("intermediate_size") != model.cfg.intermediate_size:
        raise TyrjaxError(
            f"--distribution {path}: made for a model with {data.get('n_layers')} blocks, {data.get('n_heads')} heads and "
            f"{data.get('intermediate_size')} neurons; this model has {model.cfg.n_layers}, {model.cfg.n_heads} and "
            f"{model.cfg.intermediate_size}"
        )
    return removed


@dataclasses.dataclass
class StructuredOutcome:
    """A structured method's result: the compact model (cfg may carry FLAP's biases) and its masks."""

    compact: dict
    cfg: object
    head_mask: np.ndarray
    ffn_mask: np.ndarray
    history: list | None = None
    phase_s: dict | None = None


STREAMED_METHODS = ("tyr", "uniform")


def not_streamable(method: str) -> TyrjaxError:
    return TyrjaxError(f"--stream: --method {method} needs the model in memory; drop --stream "
                       f"(it applies to {' and '.join(STREAMED_METHODS)} and to --distribution)")


def _outcome(selection: Selection, **extra) -> StructuredOutcome:
    compact, ccfg = selection.compact()
    return StructuredOutcome(compact, ccfg, *selection.masks(), **extra)


def prune_structured(model: Model, calib: np.ndarray, sparsity: float, method: str, tcfg: TyrConfig,
                     work_dir: Path | None = None, distribution: np.ndarray | None = None,
                     progress: bool = True) -> StructuredOutcome:
    """Run one structured method (or apply a saved distribution) on a dense model.

    Týr, uniform and a saved distribution work block by block: `model.params` may be
    `blocks.StreamedBlocks`. The other baselines need the parameters in memory."""
    cfg = model.cfg
    if distribution is not None:
        return _outcome(distribution_selection(model.params, cfg, calib, distribution, tcfg, progress,
                                               store_dir=work_dir / "supernet_distribution" if work_dir else None))
    if method == "tyr":
        result = run_tyr(model.params, cfg, calib, sparsity, tcfg, work_dir=work_dir, progress=progress)
        return _outcome(result.selection, history=[it.history for it in result.iterations],
                        phase_s={"supernet": round(sum(result.supernet_s), 2), "search": round(sum(result.search_s), 2)})
    if method == "uniform":
        return _outcome(uniform_selection(model.params, cfg, calib, sparsity, tcfg, progress,
                                          store_dir=work_dir / "supernet_uniform" if work_dir else None))
    from tyrjax.tyr.baselines import structured_baseline

    if isinstance(model.params, ModelBlocks):
        raise not_streamable(method)
    params, cfg, head, ffn, _ = structured_baseline(model.params, cfg, calib, sparsity, method,
                                                    mlp_multiple=tcfg.mlp_multiple, progress=progress)
    compact, ccfg = compact_from_masked(params, cfg, head, ffn)
    return StructuredOutcome(compact, ccfg, head, ffn)


def per_layer(head: np.ndarray, ffn: np.ndarray) -> dict[str, list[float]]:
    return {"attention": [round(float(1 - h.mean()), 4) for h in head], "mlp": [round(float(1 - f.mean()), 4) for f in ffn]}


def run_structured(args: argparse.Namespace) -> None:
    if not 0.0 < args.sparsity < 1.0:
        raise TyrjaxError(f"--sparsity {args.sparsity}: must lie strictly between 0 and 1 (e.g. 0.5)")
    if args.stream and args.method not in STREAMED_METHODS and args.distribution is None:
        raise not_streamable(args.method)  # before anything is loaded or written
    out = args.out or default_out(f"prune-{args.method}")
    timer = Timer()
    with timer.phase("load"):
        model = load_model(args.model, args.dtype, args.tokenizer, streamed=args.stream)
        calib_n = args.calib_windows or PRESET_CALIB_WINDOWS[args.preset]
        calib = api.calibration_windows(model, args.data, calib_n)
        sets = api.evaluation_sets(model, args.eval_windows, tuple(c for c in args.eval_data.split(",") if c))
        distribution = load_distribution(args.distribution, model) if args.distribution is not None else None
    record_command(out)
    with timer.phase("dense_eval"):
        dense = api.dense_reference(on_active_mesh(model), sets, args.batch_size)
    tcfg = tyr_config(args)
    with timer.phase("prune"):
        outcome = prune_structured(model, calib, args.sparsity, args.method, tcfg, out / "work", distribution)
    if outcome.phase_s:
        del timer.wall_s["prune"]
        timer.wall_s.update(outcome.phase_s)
    cfg, compact, ccfg = model.cfg, outcome.compact, outcome.cfg
    head, ffn, history = outcome.head_mask, outcome.ffn_mask, outcome.history
    # Only the compact model is needed from here on: free the dense weights.
    del outcome
    model = dataclasses.replace(model, params=None)
    # Streamed, the compact model is evaluated block by block too (the hidden states of the
    # windows are held instead of the whole forward's activations).
    served = HeldBlocks(compact, ccfg, resolve_mesh(None)) if args.stream else compact
    pruned_model = Model(served, ccfg, model.tokenizer, f"{model.source} pruned by {args.method}", out / "model")
    with timer.phase("pruned_eval"):
        evaluated = api.evaluate(on_active_mesh(pruned_model), sets, args.batch_size)
    with timer.phase("export"):
        written = export_pruned(compact, ccfg, out, model.directory) if is_writer() else {}
    achieved = 1 - ccfg.attn_mlp_params() / model.cfg.attn_mlp_params()
    layers = per_layer(head, ffn)
    metrics = {
        "model": model.source,
        "method": args.method,
        "preset": args.preset,
        "sparsity": sparsity_report(model.cfg, ccfg, args.sparsity),
        "ppl": evaluated["ppl"],
        "dense_ppl": dense["ppl"],
        "window_nll": evaluated["window_nll"],
        "window_digest": evaluated["window_digest"],
        "dense_window_nll": dense["window_nll"],
        "params": {"dense": dense["params"], "pruned": evaluated["params"]},
        "per_layer": layers,
        "calib_windows": int(len(calib)),
        "tyr_config": dataclasses.asdict(tcfg) if args.method == "tyr" else None,
        "wall_s": timer.wall_s,
        "outputs": written,
    }
    write_json(out / "distribution.json", {
        "removed_groups": removed_groups(head, ffn).tolist(), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "intermediate_size": cfg.intermediate_size, "method": args.method, "sparsity": metrics["sparsity"],
    })
    per_layer_sparsity(out / "per_layer_sparsity.png", layers["attention"], layers["mlp"],
                       f"{args.method}: {achieved:.1%} of attention+MLP parameters removed")
    if history:
        write_json(out / "search_history.json", history)
        search_convergence(out / "search_convergence.png", history)
    write_json(out / "metrics.json", metrics)
    if is_writer():
        write_report(out)
    _print_summary(metrics)
    print(f"wrote {out}")


def _print_summary(m: dict) -> None:
    print(f"{'':12}{'dense':>12}{m['method']:>14}")
    for corpus, value in m["ppl"].items():
        print(f"{'ppl ' + corpus:<12}{m['dense_ppl'][corpus]:>12.3f}{value:>14.3f}")
    print(f"{'params':<12}{m['params']['dense']['attn_mlp']:>12,}{m['params']['pruned']['attn_mlp']:>14,}  (attention+MLP)")
    print(f"sparsity: target {m['sparsity']['target']:.3f}, achieved {m['sparsity']['achieved']:.3f}")
