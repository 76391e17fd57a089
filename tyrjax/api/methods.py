"""The pruning methods the driver runs: structured (Týr, uniform, Wanda-sp, FLAP, magnitude, or a
saved distribution) and unstructured (one-shot SparseGPT / Wanda / magnitude, and SDS). Each
checks its settings before anything is loaded, prunes a loaded model, and names the
metrics.json fields and run-directory files of its kind."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tyrjax.api.budgets import evaluation_vocab_chunk, sds_capture_chunk
from tyrjax.api.configs import DataConfig, SDSConfig
from tyrjax.checkpoints.export import check_formats, export_pruned, export_sparse
from tyrjax.checkpoints.hf import layer_shapes
from tyrjax.checkpoints.loading import Model
from tyrjax.errors import TyrjaxError
from tyrjax.files import write_json
from tyrjax.model.blocks import HeldBlocks, ModelBlocks
from tyrjax.parallel.distributed import agree, is_writer
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.parallel.sharding import resolve_mesh
from tyrjax.runs.plots import per_layer_sparsity, search_convergence
from tyrjax.sparse.pruners import SPARSE_PRUNERS
from tyrjax.tyr.budget import sparsity_report
from tyrjax.sds.pipeline import check_pattern_fits, prune_oneshot, run_sds_pipeline, sds_settings
from tyrjax.sparse import parse_pattern
from tyrjax.tyr.pipeline import (PRESETS, Selection, TyrConfig, distribution_selection, removed_groups, run_tyr,
                                 uniform_selection)

STRUCTURED_METHODS = ("tyr", "uniform", "wanda-sp", "flap", "magnitude")
UNSTRUCTURED_METHODS = ("sparsegpt", "wanda")  # and magnitude, given a pattern
PRUNE_METHODS = ["tyr", "uniform", "wanda-sp", "flap", "magnitude", "sparsegpt", "wanda"]
# quick: the protocol's reference size; paper: enough 512-token windows for the last selection
# stage's 131,072 tokens.
PRESET_CALIB_WINDOWS = {"quick": 64, "paper": 256}
UNSTRUCTURED_CALIB_WINDOWS = 64
BLOCK_STORE = "blocks"  # under a run's work directory: the finished blocks of a one-shot or SDS run
# TyrConfig fields that change how a run uses the machine, not its results: a run resumes
# under other values of these.
RUN_ONLY_SETTINGS = ("keep_supernets", "device_memory_gb")


@dataclasses.dataclass(frozen=True)
class Phases:
    """The wall-time names of the driver's phases for one kind of method (metrics.json `wall_s`)."""

    data: str
    pruned_eval: str
    save: str
    total: bool


@dataclasses.dataclass
class Pruned:
    """A method's result: the pruned parameters in the form served for evaluation and the
    fields the result and metrics.json carry."""

    model: Model
    served: Model
    head_mask: np.ndarray | None = None
    ffn_mask: np.ndarray | None = None
    history: list | None = None
    phase_s: dict[str, float] | None = None
    report: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the driver measured, for a method's metrics.json fields."""

    dense_model: Model
    pruned: Pruned
    dense: dict[str, Any]
    evaluated: dict[str, Any]
    calib: np.ndarray
    sets: dict[str, np.ndarray]
    wall_s: dict[str, float]
    outputs: dict[str, str]
    data: DataConfig
    dtype: str


def shapes_of(params: dict | ModelBlocks, cfg: Any) -> dict:
    """`params`, or for `ModelBlocks` the shapes of each block's parameters (the per-layer form),
    for checks that read only shapes (no block is read)."""
    if not isinstance(params, ModelBlocks):
        return params
    return {"layers": [{k: jax.ShapeDtypeStruct(shape, np.float32) for k, shape in layer_shapes(cfg, i).items()}
                       for i in range(cfg.n_layers)]}


def not_streamable(method: str) -> TyrjaxError:
    return TyrjaxError(f"--stream: --method {method} needs the model in memory; drop --stream "
                       f"(it applies to the structured methods: {', '.join(STRUCTURED_METHODS)})")


def load_distribution(path: Path, model: Model) -> np.ndarray:
    """The removed groups per layer of a saved RUN_DIR/distribution.json, checked against `model`."""
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


def preset_config(preset: str = "quick", *, iterations: int | None = None, generations: int | None = None,
                  offspring: int | None = None, seed: int = 0, keep_supernets: bool = False,
                  device_memory_gb: float | None = None, supernet_dtype: str | None = None) -> TyrConfig:
    """A preset's `TyrConfig` with the given search sizes, per-device budget and supernet level
    dtype; fewer `offspring` also caps the candidates each selection stage keeps."""
    if preset not in PRESETS:
        raise TyrjaxError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    tcfg = PRESETS[preset]
    overrides = {k: v for k, v in (("iterations", iterations), ("generations", generations), ("offspring", offspring)) if v}
    if offspring:
        stages = tuple((min(c, offspring), t) for c, t in tcfg.stages)
        overrides["stages"] = ((offspring, stages[0][1]),) + stages[1:]
    return dataclasses.replace(tcfg, seed=seed, keep_supernets=keep_supernets, device_memory_gb=device_memory_gb,
                               supernet_dtype=supernet_dtype, **overrides)


def delete_supernets(work_dir: Path) -> None:
    """Once the compact model is built, the supernet stores under `work_dir` are finished work:
    delete them (the small search states and iteration results stay)."""
    agree(0, f"supernets in {work_dir}")  # every process is done reading them
    if is_writer() and work_dir.is_dir():
        for store in sorted(work_dir.glob("supernet_*")):
            shutil.rmtree(store, ignore_errors=True)


def resume_note(work_dir: Path | None) -> str | None:
    """One line saying that a rerun picks up the work an earlier run of it left in `work_dir`."""
    if work_dir is None or not work_dir.is_dir():
        return None
    kept = sorted(p.name + ("/" if p.is_dir() else "") for p in work_dir.iterdir() if not p.name.startswith("."))
    if not kept:
        return None
    return f"resuming from {work_dir}: reusing {', '.join(kept)}"


def per_layer(head: np.ndarray, ffn: np.ndarray) -> dict[str, list[float]]:
    return {"attention": [round(float(1 - h.mean()), 4) for h in head], "mlp": [round(float(1 - f.mean()), 4) for f in ffn]}


def _seconds_across_resumes(start: float, selection: Selection) -> float:
    """Wall seconds since `start`, plus what earlier, interrupted runs spent building the
    selection's supernet up to its last saved block."""
    store = selection.supernet.store
    return round(time.perf_counter() - start + (store.earlier_s if store else 0.0), 3)


def _from_selection(selection: Selection) -> tuple[dict, Any, np.ndarray, np.ndarray]:
    compact, ccfg = selection.compact()
    return (compact, ccfg, *selection.masks())


@dataclasses.dataclass(frozen=True)
class StructuredMethod:
    """Heads and neurons removed at `sparsity` of the attention+MLP parameters (a physically
    smaller model), or the distribution of a saved run applied without a search."""

    method: str
    sparsity: float
    config: TyrConfig = PRESETS["quick"]
    preset: str = "quick"
    distribution: Path | None = None
    exports: tuple[str, ...] = ()  # extra checkpoints to write: `checkpoints.export.EXPORT_FORMATS`

    phases = Phases(data="load", pruned_eval="pruned_eval", save="export", total=False)

    def check(self, stream: bool) -> None:
        if self.method not in STRUCTURED_METHODS:
            raise TyrjaxError(f"prune: --method {self.method} is not structured; use one of {', '.join(STRUCTURED_METHODS)}")
        if not 0.0 < self.sparsity < 1.0:
            raise TyrjaxError(f"--sparsity {self.sparsity}: must lie strictly between 0 and 1 (e.g. 0.5)")
        check_formats(self.exports)
        if "hf-padded" in self.exports and self.method == "flap" and self.distribution is None:
            raise TyrjaxError("--export hf-padded: FLAP adds biases to o_proj and down_proj, which a stock checkpoint "
                              "cannot hold; drop --export (RUN_DIR/model loads in tyrjax)")
        self.budget_bytes()

    def budget_bytes(self) -> int:
        """The per-device memory budget of every phase (`TyrConfig.device_memory_gb`)."""
        return self.config.budget_bytes()

    def check_budget(self, model: Model, calib: np.ndarray, sets: dict[str, np.ndarray], batch_size: int) -> None:
        """Evaluation within the budget (Týr checks its own phases as it reaches them)."""
        evaluation_vocab_chunk(model, sets, batch_size, self.budget_bytes())

    def calib_windows(self) -> int:
        return PRESET_CALIB_WINDOWS.get(self.preset, UNSTRUCTURED_CALIB_WINDOWS)

    def settings(self) -> dict[str, Any]:
        """What a run directory records of the method: all but what changes only how it runs
        (the memory budget, whether supernets are kept)."""
        settings = dataclasses.asdict(self)
        del settings["exports"]  # what is written beside the model, not the model
        for name in RUN_ONLY_SETTINGS:
            del settings["config"][name]
        if self.distribution is not None:
            settings["distribution"] = str(Path(self.distribution).expanduser().resolve())
        return settings

    def inputs(self) -> list[str]:
        return [] if self.distribution is None else [str(self.distribution)]

    @property
    def calibration_streams(self) -> int:
        """Calibration activation streams the method holds (structured magnitude reads no data)."""
        return 0 if self.method == "magnitude" and self.distribution is None else 1

    def bind(self, model: Model) -> np.ndarray | None:
        """What the model must agree with before any work: the saved distribution, if any."""
        return load_distribution(self.distribution, model) if self.distribution is not None else None

    def prune(self, model: Model, calib: np.ndarray, out: Path | None, bound: np.ndarray | None,
              progress: bool) -> Pruned:
        """Every structured method works block by block: `model.params` may be
        `blocks.StreamedBlocks`. Týr keeps
        its supernets and search state in OUT/work, where a rerun resumes; once the compact model
        is built, the supernets there are deleted (`keep_supernets` keeps them)."""
        cfg, tcfg, phase_s, history = model.cfg, self.config, None, None
        work_dir = out / "work" if out is not None else None
        start = time.perf_counter()
        note = resume_note(work_dir)
        if note:
            print(note)
        if bound is not None:
            selection = distribution_selection(model.params, cfg, calib, bound, tcfg, progress,
                                               store_dir=work_dir / "supernet_distribution" if work_dir else None)
            compact, ccfg, head, ffn = _from_selection(selection)
            phase_s = {"prune": _seconds_across_resumes(start, selection)}
        elif self.method == "tyr":
            result = run_tyr(model.params, cfg, calib, self.sparsity, tcfg, work_dir=work_dir, progress=progress)
            compact, ccfg, head, ffn = _from_selection(result.selection)
            history = [it.history for it in result.iterations]
            phase_s = {"supernet": round(sum(result.supernet_s), 2), "search": round(sum(result.search_s), 2)}
        elif self.method == "uniform":
            selection = uniform_selection(model.params, cfg, calib, self.sparsity, tcfg, progress,
                                          store_dir=work_dir / "supernet_uniform" if work_dir else None)
            compact, ccfg, head, ffn = _from_selection(selection)
            phase_s = {"prune": _seconds_across_resumes(start, selection)}
        else:
            from tyrjax.tyr.baselines import compact_model, structured_baseline

            params, cfg, head, ffn, _ = structured_baseline(model.params, cfg, calib, self.sparsity, self.method,
                                                            mlp_multiple=tcfg.mlp_multiple, progress=progress,
                                                            budget_bytes=self.budget_bytes())
            compact, ccfg = compact_model(params, cfg, head, ffn)
        if work_dir is not None and not tcfg.keep_supernets:
            delete_supernets(work_dir)
        # Streamed, the compact model is evaluated block by block too (the hidden states of the
        # windows are held instead of the whole forward's activations).
        streamed = isinstance(model.params, ModelBlocks)
        directory = out / "model" if out is not None else None
        pruned = Model(compact, ccfg, model.tokenizer, f"{model.source} pruned by {self.method}", directory)
        served = dataclasses.replace(pruned, params=HeldBlocks(compact, ccfg, resolve_mesh(None))) if streamed else pruned
        return Pruned(pruned, served, head, ffn, history, phase_s)

    def save(self, pruned: Pruned, out: Path, dense_model: Model, tokenizer_dir: Path | None) -> dict[str, str]:
        """RUN_DIR/model (compact), RUN_DIR/hf_llama where every layer has the same widths, and
        the `exports` asked for (`checkpoints.export`)."""
        return export_pruned(pruned.model.params, pruned.model.cfg, out, dense_model.directory, self.exports)

    def metrics(self, run: RunFacts) -> dict[str, Any]:
        dense, evaluated, pruned = run.dense, run.evaluated, run.pruned
        return {
            "model": run.dense_model.source,
            "method": self.method,
            "preset": self.preset,
            "sparsity": sparsity_report(run.dense_model.cfg, pruned.model.cfg, self.sparsity),
            "ppl": evaluated["ppl"],
            "dense_ppl": dense["ppl"],
            "window_nll": evaluated["window_nll"],
            "window_digest": evaluated["window_digest"],
            "dense_window_nll": dense["window_nll"],
            "params": {"dense": dense["params"], "pruned": evaluated["params"]},
            "per_layer": per_layer(pruned.head_mask, pruned.ffn_mask),
            "calib_windows": int(len(run.calib)),
            "tyr_config": dataclasses.asdict(self.config) if self.method == "tyr" else None,
            "wall_s": run.wall_s,
            "outputs": run.outputs,
        }

    def write_files(self, out: Path, dense_model: Model, pruned: Pruned, metrics: dict) -> None:
        """distribution.json (reusable with --distribution), the per-layer plot, the search history."""
        cfg, head, ffn = dense_model.cfg, pruned.head_mask, pruned.ffn_mask
        write_json(out / "distribution.json", {
            "removed_groups": removed_groups(head, ffn).tolist(), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "intermediate_size": cfg.intermediate_size, "method": self.method, "sparsity": metrics["sparsity"],
        })
        layers = metrics["per_layer"]
        per_layer_sparsity(out / "per_layer_sparsity.png", layers["attention"], layers["mlp"],
                           f"{self.method}: {metrics['sparsity']['achieved']:.1%} of attention+MLP parameters removed")
        if pruned.history:
            write_json(out / "search_history.json", pruned.history)
            search_convergence(out / "search_convergence.png", pruned.history)


def _per_layer_sparsity(layers: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {k: r["sparsity"] for k, r in layers.items()}


def zeros_in(layers: dict[str, dict[str, Any]]) -> int:
    """The zero weights of the pruned linear layers (each layer's zero fraction of its weights)."""
    return sum(round(r["sparsity"] * r["numel"]) for r in layers.values() if r["numel"])


def layer_losses(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per layer: the loss (one-shot) or the loss of every step and the kept one (SDS)."""
    out = {}
    for key, r in layers.items():
        if "loss" in r:
            out[key] = {"loss": r["loss"], **({"chosen": r["chosen"]} if "chosen" in r else {})}
    return out


@dataclasses.dataclass(frozen=True)
class UnstructuredMethod:
    """Zeros in dense shapes at `pattern` (a fraction like 0.5, or N:M like 2:4): one-shot
    SparseGPT / Wanda / magnitude, or SDS when `sds` is given (its pruner and pattern)."""

    method: str
    pattern: str
    sds: SDSConfig | None = None
    seed: int = 0
    device_memory_gb: float | None = None

    phases = Phases(data="data", pruned_eval="eval", save="save", total=True)

    def check(self, stream: bool) -> None:
        parse_pattern(self.pattern)  # a bad pattern fails before any loading
        if self.sds is None and self.method not in SPARSE_PRUNERS.names():
            raise TyrjaxError(f"prune: --method {self.method} is not an unstructured method; use one of "
                              f"{', '.join(SPARSE_PRUNERS.names())} with --pattern")
        if stream and self.sds is None:  # SDS takes the model block by block; the one-shot pruners hold it
            raise not_streamable(self.method)
        if self.sds is not None:
            s = self.sds
            sds_settings(s.pruner, s.steps, s.adjust_steps, s.lr, s.l1, s.l2, s.optimizer, s.inputs, s.adjust)
        self.budget_bytes()

    def budget_bytes(self) -> int:
        """The per-device memory budget of every phase (`device_memory_gb`; None: the device's)."""
        return device_memory_bytes(self.device_memory_gb)

    def check_budget(self, model: Model, calib: np.ndarray, sets: dict[str, np.ndarray], batch_size: int) -> None:
        """Evaluation, and SDS's block loop at one window per capture call, within the budget."""
        evaluation_vocab_chunk(model, sets, batch_size, self.budget_bytes())
        if self.sds is not None:
            sds_capture_chunk(model, calib, self.budget_bytes())

    def calib_windows(self) -> int:
        return UNSTRUCTURED_CALIB_WINDOWS

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def inputs(self) -> list[str]:
        return []

    @property
    def calibration_streams(self) -> int:
        """Calibration activation streams: the pruned model's, and SDS's dense-model stream too."""
        return 1 if self.sds is None else 2

    def bind(self, model: Model) -> None:
        check_pattern_fits(shapes_of(model.params, model.cfg), self.pattern)

    def prune(self, model: Model, calib: np.ndarray, out: Path | None, bound: None, progress: bool) -> Pruned:
        """Each finished block is kept in OUT/work/blocks, where a rerun resumes; the files go
        once the pruned model is saved."""
        store_dir = out / "work" / BLOCK_STORE if out is not None else None
        start = time.perf_counter()
        if self.sds is None:
            params, report = prune_oneshot(model.params, model.cfg, calib, self.pattern, self.method, progress=progress,
                                           budget_bytes=self.budget_bytes(), store_dir=store_dir)
        else:
            s = self.sds
            params, report = run_sds_pipeline(
                model.params, model.cfg, calib, self.pattern, s.pruner, steps=s.steps, adjust_steps=s.adjust_steps,
                adjust=s.adjust, lr=s.lr, l1=s.l1, l2=s.l2, optimizer=s.optimizer, inputs=s.inputs, progress=progress,
                budget_bytes=self.budget_bytes(), store_dir=store_dir,
            )
        phase_s = {"prune": round(time.perf_counter() - start + report.pop("resumed_s", 0.0), 3)}
        served = dataclasses.replace(model, params=params)
        pruned = dataclasses.replace(served, source=f"{model.source} pruned by {report['method']} {report['pattern']}",
                                     directory=out / "model" if out is not None else None)
        return Pruned(pruned, served, phase_s=phase_s, report=report)

    def save(self, pruned: Pruned, out: Path, dense_model: Model, tokenizer_dir: Path | None) -> dict[str, str]:
        """RUN_DIR/model (orbax, loadable with --model) and RUN_DIR/hf (safetensors with zeros);
        then the finished blocks kept for a resume are deleted."""
        export_sparse(pruned.model.params, pruned.model.cfg, out, tokenizer_dir or dense_model.directory)
        shutil.rmtree(out / "work" / BLOCK_STORE, ignore_errors=True)
        if (out / "work").is_dir() and not any((out / "work").iterdir()):
            (out / "work").rmdir()
        return {}

    def metrics(self, run: RunFacts) -> dict[str, Any]:
        dense, evaluated, report = run.dense, run.evaluated, run.pruned.report
        metrics = {
            "model": run.dense_model.source,
            "method": report["method"],
            "pattern": report["pattern"],
            "sparsity": {**report["sparsity"], "per_layer": _per_layer_sparsity(report["layers"])},
            "ppl": evaluated["ppl"],
            "dense_ppl": dense["ppl"],
            "window_nll": evaluated["window_nll"],
            "window_digest": evaluated["window_digest"],
            "dense_window_nll": dense["window_nll"],
            "params": {**evaluated["params"],
                       "attn_mlp_nonzero": evaluated["params"]["attn_mlp"] - zeros_in(report["layers"])},
            "hyperparameters": report.get("hyperparameters", {}),
            "chosen": report.get("chosen"),
            "data": run.data.calib,
            "calib_windows": list(run.calib.shape),
            "eval_windows": {k: list(v.shape) for k, v in run.sets.items()},
            "dtype": run.dtype,
            "seed": self.seed,
            "wall_s": run.wall_s,
        }
        if metrics["chosen"] is None:
            del metrics["chosen"]
        return metrics

    def write_files(self, out: Path, dense_model: Model, pruned: Pruned, metrics: dict) -> None:
        """layer_losses.json: each linear layer's reconstruction loss per step."""
        write_json(out / "layer_losses.json", layer_losses(pruned.report["layers"]))
