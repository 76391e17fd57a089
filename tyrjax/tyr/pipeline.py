"""Týr-the-Pruner end to end: supernet → evolutionary search → finer supernet → … (§1.3–§1.5)."""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from tyrjax.model.blocks import HeldBlocks, ModelBlocks, as_blocks
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.distributed import agree, is_writer
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params, compact_from_blocks
from tyrjax.files import write_atomic
from tyrjax.tyr.search.evolution import FitnessFn, SearchConfig, evolve, load_state, save_state
from tyrjax.tyr.search.levels import ATTENTION, MLP, LevelGrid, centre_genome, initial_centres, make_grid, recentre
from tyrjax.parallel.sharding import local_tree, resolve_mesh
from tyrjax.structured.saliency import get_saliency
from tyrjax.tyr.budget import group_params
from tyrjax.tyr.fitness import (TEACHER_BATCH, BatchScorer, Teacher, call_bytes, check_teacher_budget, get_fitness,
                                scoring_chunks, scoring_windows, teacher_topk)
from tyrjax.tyr.genome import Genome, interleave
from tyrjax.tyr.search.mutation import get_mutation
from tyrjax.tyr.supernet import Supernet, build_supernet, get_local_pruner, levels_dtype


@dataclasses.dataclass(frozen=True)
class TyrConfig:
    """Týr's knobs; `PRESETS` holds the paper's settings and a CPU-sized one."""

    iterations: int = 4
    interval: float = 0.125
    n_levels: int = 9
    generations: int = 50
    offspring: int = 128
    stages: tuple[tuple[int, int], ...] = ((128, 2048), (16, 16384), (4, 131072))
    max_switches: int = 4
    topk: int = 8192
    candidate_batch: int = 8
    mlp_multiple: int = 32
    propagation: str = "expectation"
    local_pruner: str = "tyr"
    saliency: str = "tyr"
    fitness: str = "kl"
    mutation: str = "level_switch"
    reprune_final: bool = True
    keep_supernets: bool = False
    seed: int = 0
    supernet_dtype: str | None = None  # the levels' dtype on disk; None: the model's
    device_memory_gb: float | None = None  # every phase's budget per device; None: what the device reports

    def budget_bytes(self) -> int:
        """The per-device memory budget in bytes (`parallel.memory.device_memory_bytes`)."""
        return device_memory_bytes(self.device_memory_gb)

    def check_extensions(self) -> None:
        """Fail before any work when a named extension (local pruner, saliency, fitness, mutation)
        is not registered, or the supernet dtype or memory budget is not one that works."""
        levels_dtype(self.supernet_dtype, np.float32)
        self.budget_bytes()
        get_local_pruner(self.local_pruner)
        get_saliency(self.saliency)
        get_fitness(self.fitness)
        get_mutation(self.mutation)

    def search_config(self) -> SearchConfig:
        return SearchConfig(generations=self.generations, offspring=self.offspring, stages=self.stages,
                            max_switches=self.max_switches, seed=self.seed, mutation=self.mutation)


def supernet_settings(tcfg: TyrConfig) -> dict:
    """The `build_supernet` arguments a run's settings fix."""
    return {"saliency": tcfg.saliency, "local_pruner": tcfg.local_pruner, "dtype": tcfg.supernet_dtype,
            # a local pruner is handed a budget only when the run sets one (custom pruners may take none)
            "budget_bytes": None if tcfg.device_memory_gb is None else tcfg.budget_bytes()}


PRESETS = {
    # ALGORITHMS.md §1.4–§1.5 as published: for accelerators.
    "paper": TyrConfig(),
    # The default model on 2 CPU cores in under half an hour: fewer, smaller generations.
    "quick": TyrConfig(iterations=2, generations=9, offspring=16, stages=((16, 512), (4, 1024), (3, 2048)),
                       topk=512, candidate_batch=4),
}


def layer_arrays(cfg: ModelConfig, mlp_multiple: int) -> dict[str, np.ndarray]:
    """Per searchable layer (in genome order): groups, parameters per group, type, multiple."""
    head_p, neuron_p = group_params(cfg)

    def per_layer(attention: int, mlp: int) -> np.ndarray:
        return interleave(np.full(cfg.n_layers, attention, np.int64), np.full(cfg.n_layers, mlp, np.int64))

    return {
        "n_groups": per_layer(cfg.n_heads, cfg.intermediate_size),
        "group_params": per_layer(head_p, neuron_p),
        "module_type": per_layer(ATTENTION, MLP),
        "group_multiple": per_layer(1, mlp_multiple),
    }


def _interval_for(arrays: dict[str, np.ndarray], interval: float) -> float:
    """The interval, raised to one granule where the model is too small for it (documented)."""
    smallest = float(np.min(arrays["group_multiple"] / arrays["n_groups"]))
    return max(interval, smallest)


def initial_grid(cfg: ModelConfig, sparsity: float, tcfg: TyrConfig) -> LevelGrid:
    """The first supernet's grid: every layer of a type at the same centre, interval Δ."""
    if not 0.0 < sparsity < 1.0:
        raise TyrjaxError(f"--sparsity {sparsity}: must lie strictly between 0 and 1")
    arrays = layer_arrays(cfg, tcfg.mlp_multiple)
    if cfg.intermediate_size < 2 * tcfg.mlp_multiple:
        raise TyrjaxError(
            f"model: MLP width {cfg.intermediate_size} is too small for neuron steps of {tcfg.mlp_multiple}; "
            "use a smaller multiple (TyrConfig.mlp_multiple)"
        )
    centres = initial_centres(sparsity, arrays["n_groups"], arrays["group_params"], arrays["group_multiple"],
                              total_params=cfg.attn_mlp_params(), module_type=arrays["module_type"])
    return make_grid(arrays["n_groups"], arrays["group_params"], arrays["module_type"], centres.sparsity,
                     _interval_for(arrays, tcfg.interval), arrays["group_multiple"], n_levels=tcfg.n_levels)


def masks_and_weights(supernet: Supernet, genome: np.ndarray, params: Params) -> tuple[Params, np.ndarray, np.ndarray]:
    """The masked model of one candidate: its o_proj/down_proj levels (in the model's dtype,
    whatever the supernet's) and head/neuron masks, gathered block by block from the supernet."""
    chosen = supernet.candidate(np.asarray(genome))
    dense = params["layers"]
    layers = dict(dense, wo=jnp.asarray(chosen.wo, dense["wo"].dtype),
                  w_down=jnp.asarray(chosen.w_down, dense["w_down"].dtype))
    return dict(params, layers=layers), chosen.head_keep, chosen.ffn_keep


@dataclasses.dataclass
class Selection:
    """A pruned model as one level per searchable layer of a supernet built on `model`."""

    model: ModelBlocks
    supernet: Supernet
    genome: np.ndarray

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Head and neuron keep masks (L, H), (L, F)."""
        return self.supernet.masks(self.genome)

    def masked(self) -> tuple[Params, np.ndarray, np.ndarray]:
        """The whole masked model in memory (on this process's default device) and its masks."""
        if not isinstance(self.model, HeldBlocks):
            raise TyrjaxError("selection: the masked form needs the model in memory; use compact() for a streamed one")
        chosen = masks_and_weights(self.supernet, self.genome, self.model.params)
        return chosen if self.model.mesh is None else local_tree(chosen)

    def compact(self) -> tuple[Params, ModelConfig]:
        """The compact model, built block by block (never more than one dense block at a time)."""
        head_mask, ffn_mask = self.masks()
        g = Genome(self.genome)

        def layers():
            for b in range(self.model.n_layers):
                level = self.supernet.gather(b, g.attention[b:b + 1], g.mlp[b:b + 1])
                dense = self.model.block(b)
                p = dict(dense, wo=jnp.asarray(level.wo[0], dense["wo"].dtype),
                         w_down=jnp.asarray(level.w_down[0], dense["w_down"].dtype))
                yield p if self.model.mesh is None else local_tree(p)

        head = self.model.head if self.model.mesh is None else local_tree(self.model.head)
        return compact_from_blocks(head, layers(), self.model.cfg, head_mask, ffn_mask)


@dataclasses.dataclass
class IterationResult:
    grid: LevelGrid
    genome: np.ndarray
    fitness: float | None
    history: list[dict]
    head_mask: np.ndarray | None = None  # (L, H) bool: the found model's heads kept
    ffn_mask: np.ndarray | None = None  # (L, F) bool: its neurons kept
    earlier_s: float = 0.0  # wall seconds of the search before it was resumed


def save_found(path: Path, found: IterationResult, seconds: tuple[float, float]) -> None:
    """A finished iteration's result (and its supernet and search seconds): what the next
    iteration and a resumed run need once the iteration's supernet is gone."""
    buf = io.BytesIO()
    np.savez(buf, genome=found.genome, fitness=np.float64(np.nan if found.fitness is None else found.fitness),
             head_mask=found.head_mask, ffn_mask=found.ffn_mask, history=np.asarray(json.dumps(found.history)),
             seconds=np.asarray(seconds, np.float64))
    write_atomic(path, buf.getvalue())


def load_found(path: Path, grid: LevelGrid) -> tuple[IterationResult, tuple[float, float]]:
    with np.load(path) as f:
        fitness = float(f["fitness"])
        found = IterationResult(grid, f["genome"], None if np.isnan(fitness) else fitness, json.loads(str(f["history"])),
                                f["head_mask"], f["ffn_mask"])
        return found, tuple(f["seconds"].tolist())


def make_fitness_fn(scorer: BatchScorer, calib: np.ndarray, teacher: Teacher, tcfg: TyrConfig,
                    iteration: int) -> FitnessFn:
    """fitness(genomes, parent, stage, generation): fresh, seeded windows per stage and generation;
    the scorer starts each candidate from the parent's hidden state where they first differ."""
    n_windows, length = calib.shape

    def fitness(genomes: np.ndarray, parent: np.ndarray, stage: int, generation: int) -> np.ndarray:
        want = max(1, math.ceil(tcfg.stages[stage][1] / length))
        rng = np.random.default_rng([tcfg.seed, iteration, generation, stage])
        idx = np.sort(rng.choice(n_windows, size=min(want, n_windows), replace=False))
        return scorer(genomes, parent, calib[idx], teacher.idx[idx], teacher.logp[idx])

    return fitness


def check_search_budget(model: ModelBlocks, calib_shape: tuple[int, int], tcfg: TyrConfig, budget_bytes: int) -> None:
    """Fail before any work when `budget_bytes` per device is below one chunk of the teacher or
    of the search's scoring on its largest stage, naming the phase."""
    k = min(tcfg.topk, model.cfg.vocab_size)
    check_teacher_budget(model, calib_shape, k, TEACHER_BATCH, budget_bytes)
    n_windows, length = calib_shape
    most = max(min(n_windows, math.ceil(tokens / length)) for _, tokens in tcfg.stages)
    scoring_chunks(model, tcfg.candidate_batch, most, length, k, budget_bytes)
    itemsize = model.head["embed"].dtype.itemsize
    level_itemsize = levels_dtype(tcfg.supernet_dtype, model.head["embed"].dtype).itemsize
    fixed = model.resident_bytes() + call_bytes(model.cfg, tcfg.candidate_batch, 1, itemsize, level_itemsize)
    scoring_windows(model.cfg, tcfg.candidate_batch, 1, length, k, budget_bytes, fixed, itemsize)


def search_iteration(
    model: Params | ModelBlocks, cfg: ModelConfig, supernet: Supernet, grid: LevelGrid, calib: np.ndarray,
    teacher: Teacher, tcfg: TyrConfig, iteration: int, state_path: Path | None, progress: bool, mesh: Mesh | None = None,
) -> IterationResult:
    """One evolutionary search over `grid`, resumable from `state_path`; candidates scored on `mesh`."""
    search_cfg = tcfg.search_config()
    state = load_state(state_path) if state_path is not None and state_path.exists() else None
    agree(state.generation if state else 0, f"search state {state_path}")
    scorer = BatchScorer(model, cfg, supernet, tcfg.candidate_batch, tcfg.fitness, mesh=mesh,
                         budget_bytes=tcfg.budget_bytes())
    fitness = make_fitness_fn(scorer, calib, teacher, tcfg, iteration)
    bar = tqdm(total=search_cfg.generations, initial=state.generation if state else 0, desc=f"search {iteration + 1}",
               unit="gen", disable=not progress)

    earlier_s, since = state.seconds if state else 0.0, time.perf_counter()

    def on_generation(s) -> None:
        if state_path is not None and is_writer():
            save_state(state_path, dataclasses.replace(s, seconds=round(earlier_s + time.perf_counter() - since, 3)))
        bar.set_postfix(best_kl=f"{s.parent_fitness:.4f}")
        bar.update(1)

    result = evolve(grid, fitness, search_cfg, start_genome=None if state else centre_genome(grid), state=state,
                    on_generation=on_generation)
    bar.close()
    history = [{"generation": r.generation, "fitness": r.fitness, "replaced": r.replaced} for r in result.history]
    return IterationResult(grid, np.asarray(result.genome), result.fitness, history, earlier_s=earlier_s)


@dataclasses.dataclass
class TyrResult:
    selection: Selection  # the found model
    iterations: list[IterationResult]
    supernet_s: list[float]
    search_s: list[float]

    @functools.cached_property
    def _masked(self) -> tuple[Params, np.ndarray, np.ndarray]:
        return self.selection.masked()

    @property
    def params(self) -> Params:
        """Masked form with the chosen o_proj/down_proj weights (the model held in memory)."""
        return self._masked[0]

    @functools.cached_property
    def _masks(self) -> tuple[np.ndarray, np.ndarray]:
        return self.selection.masks()

    @property
    def head_mask(self) -> np.ndarray:
        return self._masks[0]

    @property
    def ffn_mask(self) -> np.ndarray:
        return self._masks[1]


def run_tyr(
    params: Params | ModelBlocks, cfg: ModelConfig, calib: np.ndarray, sparsity: float, tcfg: TyrConfig,
    work_dir: Path | None = None, progress: bool = True, mesh: Mesh | None = None,
) -> TyrResult:
    """Iterative prune-and-search; `work_dir` holds supernets and search states for resuming.

    Once an iteration's search has finished, its result is saved (`found_{it}.npz`) and its
    supernet deleted unless `tcfg.keep_supernets` (the last one stays when the result is read
    from it, without the final re-prune); a resumed run reads finished iterations back.

    `params` may be `blocks.StreamedBlocks`: then no phase holds more than a few blocks of the
    model. On a mesh (default: the one of `sharding.use_mesh`, if any) every phase runs sharded
    and the result comes back on this process's default device, the same on every process.
    """
    tcfg.check_extensions()
    mesh = resolve_mesh(mesh)
    model = as_blocks(params, cfg, mesh)
    budget = tcfg.budget_bytes()
    check_search_budget(model, calib.shape, tcfg, budget)
    # not needed on a full resume
    teacher = functools.cache(lambda: teacher_topk(model, cfg, calib, tcfg.topk, budget_bytes=budget))
    grid = initial_grid(cfg, sparsity, tcfg)
    arrays = layer_arrays(cfg, tcfg.mlp_multiple)
    iterations, sn_times, search_times = [], [], []
    supernet = None
    for it in range(tcfg.iterations):
        if it > 0:
            interval = _interval_for(arrays, tcfg.interval / 2**it)
            grid = recentre(grid, iterations[-1].genome, interval, arrays["group_multiple"])
        found_path = work_dir / f"found_{it}.npz" if work_dir else None
        store = work_dir / f"supernet_{it}" if work_dir else None
        if agree(int(found_path is not None and found_path.exists()), f"iteration result {found_path}"):
            found, (supernet_s, search_s) = load_found(found_path, grid)
        else:
            t0 = time.perf_counter()
            supernet = build_supernet(model, cfg, calib, grid, propagation=tcfg.propagation, store_dir=store,
                                      seed=tcfg.seed, progress=progress, mesh=mesh, **supernet_settings(tcfg))
            t1 = time.perf_counter()
            state_path = work_dir / f"search_{it}.json" if work_dir else None
            found = search_iteration(model, cfg, supernet, grid, calib, teacher(), tcfg, it, state_path, progress, mesh)
            found.head_mask, found.ffn_mask = supernet.masks(found.genome)
            # what earlier, interrupted runs spent up to their last saved block or generation counts too
            supernet_s = t1 - t0 + (supernet.store.earlier_s if supernet.store else 0.0)
            search_s = time.perf_counter() - t1 + found.earlier_s
            if found_path is not None:
                save_found(found_path, found, (supernet_s, search_s))
        if store is not None and not tcfg.keep_supernets and (tcfg.reprune_final or it < tcfg.iterations - 1):
            agree(it, f"iteration result {found_path}")  # every process is done with the supernet
            if is_writer():
                shutil.rmtree(store, ignore_errors=True)  # the next phases need only the found masks
        iterations.append(found)
        sn_times.append(supernet_s)
        search_times.append(search_s)
    last = iterations[-1]
    if tcfg.reprune_final:
        # The supernet's levels were calibrated on the expectation stream; the found model is
        # one path, and pruning it once more along that path calibrates every layer on the
        # inputs it will really see (the "ideal single path" of the paper's ablation).
        t0 = time.perf_counter()
        selection = distribution_selection(model, cfg, calib, removed_groups(last.head_mask, last.ffn_mask), tcfg,
                                           progress, mesh, work_dir / "supernet_final" if work_dir else None,
                                           settle_kv=True)
        store = selection.supernet.store
        sn_times.append(time.perf_counter() - t0 + (store.earlier_s if store else 0.0))
    else:
        if supernet is None:  # every iteration was read back: rebuild (or reopen) the last supernet
            supernet = build_supernet(model, cfg, calib, last.grid, propagation=tcfg.propagation,
                                      store_dir=work_dir / f"supernet_{len(iterations) - 1}", seed=tcfg.seed,
                                      progress=progress, mesh=mesh, **supernet_settings(tcfg))
        selection = Selection(model, supernet, last.genome)
    return TyrResult(selection, iterations, sn_times, search_times)


def uniform_selection(params: Params | ModelBlocks, cfg: ModelConfig, calib: np.ndarray, sparsity: float,
                      tcfg: TyrConfig, progress: bool = True, mesh: Mesh | None = None,
                      store_dir: Path | None = None) -> Selection:
    """The Týr local pruner at the same sparsity in every layer: the centre of the first grid, each
    block's MLP paying for the KV heads its attention frees (`budget.KVLedger`)."""
    model = as_blocks(params, cfg, resolve_mesh(mesh))
    grid = initial_grid(cfg, sparsity, tcfg)
    one_level = LevelGrid(grid.module_type, grid.group_params, grid.n_groups, grid.centre, grid.step, n_levels=1)
    supernet = build_supernet(model, cfg, calib, one_level, propagation="expectation", store_dir=store_dir,
                              progress=progress, mesh=model.mesh, settle_kv=tcfg.mlp_multiple, **supernet_settings(tcfg))
    return Selection(model, supernet, np.zeros(one_level.n_layers, np.int64))


def distribution_selection(params: Params | ModelBlocks, cfg: ModelConfig, calib: np.ndarray, removed: np.ndarray,
                           tcfg: TyrConfig, progress: bool = True, mesh: Mesh | None = None,
                           store_dir: Path | None = None, settle_kv: bool = False) -> Selection:
    """Each layer pruned at a given number of removed groups (a saved distribution), no search;
    with `settle_kv`, each block's MLP removes fewer neurons to pay for the KV heads its attention
    frees (`budget.KVLedger`), as Týr's final re-prune does."""
    arrays = layer_arrays(cfg, tcfg.mlp_multiple)
    removed = np.asarray(removed, np.int64)
    if removed.shape != arrays["n_groups"].shape or np.any(removed < 0) or np.any(removed > arrays["n_groups"]):
        raise TyrjaxError(
            f"distribution: expected {len(arrays['n_groups'])} per-layer removal counts within the layer sizes "
            f"of this model ({cfg.n_layers} blocks, {cfg.n_heads} heads, {cfg.intermediate_size} neurons)"
        )
    model = as_blocks(params, cfg, resolve_mesh(mesh))
    grid = LevelGrid(arrays["module_type"], arrays["group_params"], arrays["n_groups"], removed,
                     np.ones_like(removed), n_levels=1)
    supernet = build_supernet(model, cfg, calib, grid, store_dir=store_dir, progress=progress, mesh=model.mesh,
                              settle_kv=tcfg.mlp_multiple if settle_kv else 0, **supernet_settings(tcfg))
    return Selection(model, supernet, np.zeros(grid.n_layers, np.int64))


def removed_groups(head_mask: np.ndarray, ffn_mask: np.ndarray) -> np.ndarray:
    """Per searchable layer, the groups removed (the reusable distribution)."""
    return interleave((~np.asarray(head_mask, bool)).sum(1), (~np.asarray(ffn_mask, bool)).sum(1)).astype(np.int64)
