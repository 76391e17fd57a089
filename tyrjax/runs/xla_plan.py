"""A memory plan from XLA's own analysis: each phase's real jitted functions, lowered and
compiled on abstract arrays for the devices present.

A phase is a few steps. A step is one compiled function of the phase (the one tyrjax calls,
with the shapes, dtypes and shardings it calls it with) and what the phase keeps alive beside
that call's arguments between calls (the resident model, the calibration stream, the captured
inputs of a layer, the levels already pruned), counted from shapes. Per device, a step needs
its executable's `memory_analysis()` (arguments + outputs + temporaries − aliases) plus its
resident arrays; a phase needs its largest step. No weights are created: the arguments are
`jax.ShapeDtypeStruct`s with the shardings `tyrjax.parallel.sharding` gives them.

Where a phase splits its work into chunks of one size (windows through a block or the LM
head), the size is chosen for the budget from two compilations (one and two items per
device), with `tyrjax.parallel.memory.chunking`; a budget below one item fails for that phase.
The analytical count of `tyrjax.runs.plan` for the same phase stands beside each figure.

Phases: the teacher's top-k, the supernet build (captures, Grams, the local pruner at all
levels), the search's scoring at its largest stage, perplexity, SDS at its widest layer, and
the structured baselines' block loop. On CPU devices XLA computes bf16 matmuls on fp32 copies
of their operands, so a bf16 plan made on CPU includes copies an accelerator does not make.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tyrjax.calibration.statistics import _sums, attention_inputs, attention_residual, mlp_inputs, mlp_residual
from tyrjax.checkpoints.hf import global_shapes, layer_shapes
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.perplexity import nll_sums_from_hidden, whole_forward_bytes, window_nll_sums
from tyrjax.model.axes import LAYER_PARAM_AXES, MODEL_PARAM_AXES, layer_axes, param_axes
from tyrjax.model.blocks import block_output, stacked_axes
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.memory import GB, chunking
from tyrjax.parallel.sharding import (GRAM, HEADS_OUT, HIDDEN, MLP_HIDDEN, REPLICATED, Axes, axis_size, batch_axes,
                                      lower_sharded, round_up, shards)
from tyrjax.runs import plan as analytical
from tyrjax.sds.capture import WINDOW_CHUNK, objective_terms
from tyrjax.sds.pipeline import stream_windows, streams_fit
from tyrjax.sds.reconstruct import DEFAULT_LEARNING_RATE, Objective, redense, sparse_adjust
from tyrjax.sparse import check_pattern
from tyrjax.sparse.sparsegpt import sparsegpt_prune
from tyrjax.structured.local_pruner import _levels_per_device, _prune_levels_jit, level_groups, mesh_levels_per_call
from tyrjax.model.vocab import VOCAB_MULTIPLE
from tyrjax.tyr.baselines import RESIDUAL_COPIES
from tyrjax.tyr.fitness import (BLOCK_STATES, CANDIDATE_HIDDEN, CANDIDATE_LEVELS, TEACHER_BATCH, FitnessChunks,
                                _teacher_from_hidden, blocks_per_call, call_bytes, candidate_blocks, candidate_fitness,
                                fitness_chunks, scoring_windows)
from tyrjax.tyr.pipeline import PRESETS, TyrConfig, initial_grid
from tyrjax.tyr.search.levels import ATTENTION
from tyrjax.tyr.supernet import (ATTN_ROUNDS, MLP_ROUNDS, STATS_CHUNK, BlockLevels, build_capture_windows,
                                 capture_windows, held_while_pruning, stream_waits_on_host)

F32 = 4
TEACHER_K_BYTES = analytical.INDEX_AND_LOGP


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """The run a plan is for: Týr's preset, the calibration, evaluation and SDS windows, the
    weights' dtype (the supernet's levels are stored in it), and whether blocks are streamed
    from the checkpoint (`--stream`)."""

    preset: str = "paper"
    stream: bool = False
    sparsity: float = 0.5  # the run's target: its first supernet's levels centre on it
    dtype: str = "bfloat16"
    calib_windows: int | None = None  # default: the last search stage's windows, at least 64
    window: int = 512
    eval_windows: int = 16
    eval_window: int = 1024
    sds_windows: int = 128  # SDS: the paper's 128 x 2048 calibration tokens
    sds_window: int = 2048
    sds_pattern: str = "2:4"
    sds_steps: int = 200  # re-dense and adjustment steps each
    # The backend whose way of running the search's head is planned (`tyr.fitness.gathers_rows`):
    # an accelerator's by default, whatever the devices that compile the plan.
    platform: str = "gpu"

    @property
    def tyr(self) -> TyrConfig:
        if self.preset not in PRESETS:
            raise TyrjaxError(f"--preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        return PRESETS[self.preset]

    @property
    def n_calib(self) -> int:
        last = math.ceil(self.tyr.stages[-1][1] / self.window)
        return self.calib_windows or max(64, last)

    @property
    def weight_bytes(self) -> int:
        return jnp.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Call:
    """One compiled function of a phase with its abstract arguments (value, logical axes)."""

    name: str
    fn: Callable
    inputs: Mapping[str, tuple[Any, Any]]
    out_axes: Any
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """A call and what the phase keeps alive beside its arguments: (item, bytes per device)."""

    call: Call
    resident: tuple[tuple[str, float], ...]


@dataclasses.dataclass(frozen=True)
class StepFigures:
    name: str
    call_bytes: float  # arguments + outputs + temporaries − aliases, per device
    resident_bytes: float
    flops: float  # per device

    @property
    def bytes(self) -> float:
        return self.call_bytes + self.resident_bytes


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    name: str
    xla_bytes_per_device: float
    plan_bytes_per_device: float
    chunks: dict[str, int]
    flops: float  # per device, one call of each step
    steps: tuple[StepFigures, ...]
    fits: bool
    error: str | None = None  # the budget error when even the smallest chunk does not fit

    def to_json(self) -> dict[str, Any]:
        out = {"xla_bytes_per_device": self.xla_bytes_per_device, "plan_bytes_per_device": self.plan_bytes_per_device,
               "chunks": self.chunks, "flops": self.flops, "fits": self.fits,
               "steps": {s.name: {"call_bytes": s.call_bytes, "resident_bytes": s.resident_bytes, "flops": s.flops}
                         for s in self.steps}}
        if self.error:
            out["error"] = self.error
        return out


@dataclasses.dataclass(frozen=True)
class PlanResult:
    model: str
    mesh: dict[str, int]
    device_memory_bytes: int
    phases: dict[str, PhasePlan]
    disk_bytes: float

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.phases.values())

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "mesh": self.mesh, "device_memory_bytes": self.device_memory_bytes,
                "phases": {n: p.to_json() for n, p in self.phases.items()}, "disk_bytes": self.disk_bytes,
                "fits": self.fits}

    def check_budget(self) -> None:
        """Raise the budget error of the first phase whose smallest chunk does not fit."""
        for p in self.phases.values():
            if p.error:
                raise TyrjaxError(p.error)

    def table(self) -> str:
        rows = ["| phase | XLA GB/device | plan GB/device | chunks | TFLOP/device | fits |", "|---|---|---|---|---|---|"]
        for n, p in self.phases.items():
            chunks = ", ".join(f"{k}={v}" for k, v in p.chunks.items()) or "-"
            rows.append(f"| {n} | {gb(p.xla_bytes_per_device)} | {gb(p.plan_bytes_per_device)} | {chunks} "
                        f"| {p.flops / 1e12:,.3g} | {'yes' if p.fits else 'NO'} |")
        mesh = ",".join(f"{a}={s}" for a, s in self.mesh.items())
        return (f"{self.model} on {mesh}, budget {gb(self.device_memory_bytes)} GB per device\n"
                + "\n".join(rows) + f"\nsupernet on disk: {gb(self.disk_bytes)} GB; fits: {self.fits}")


def gb(n: float) -> str:
    return f"{n / GB:,.2f}" if n >= 0.1 * GB else f"{n / GB:.3g}"


# --- abstract arrays and their bytes -------------------------------------------------------
def struct(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def mesh_shape(mesh: Mesh | None) -> dict[str, int]:
    return {"data": 1, "fsdp": 1, "tensor": 1} if mesh is None else {a: int(s) for a, s in mesh.shape.items()}


def mesh_spec(mesh: Mesh | None) -> analytical.MeshSpec:
    return analytical.MeshSpec("plan", **mesh_shape(mesh))


def nbytes(tree: Any, axes: Any, mesh: Mesh | None, head_dim: int) -> float:
    """Bytes per device of a tree of structs laid out by a parallel (prefix) tree of `Axes`."""
    spec_mesh = mesh_spec(mesh)
    total = 0.0
    for ax, sub in zip(jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, Axes)),
                       _prefix_subtrees(axes, tree)):
        for leaf in jax.tree_util.tree_leaves(sub):
            total += analytical.per_device(leaf.shape, ax, leaf.dtype.itemsize, spec_mesh, head_dim)
    return total


def _prefix_subtrees(axes: Any, tree: Any) -> list[Any]:
    out: list[Any] = []
    jax.tree_util.tree_map(lambda _ax, sub: out.append(sub), axes, tree, is_leaf=lambda x: isinstance(x, Axes))
    return out


def block_structs(cfg: ModelConfig, dtype: Any, stacked: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    lead = () if stacked is None else (stacked,)
    return {k: struct((*lead, *s), dtype) for k, s in layer_shapes(cfg, 0).items()}


def head_structs(cfg: ModelConfig, dtype: Any) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: struct(s, dtype) for k, s in global_shapes(cfg).items()}


def head_axes(cfg: ModelConfig) -> dict[str, Axes]:
    return {k: Axes(*MODEL_PARAM_AXES[k]) for k in global_shapes(cfg)}


def model_structs(cfg: ModelConfig, dtype: Any) -> dict[str, Any]:
    return {**head_structs(cfg, dtype), "layers": block_structs(cfg, dtype, cfg.n_layers)}


# --- compiling -----------------------------------------------------------------------------
def lower(call: Call, mesh: Mesh | None, head_dim: int) -> jax.stages.Lowered:
    """The call's function lowered as tyrjax runs it: `sharded_call`'s jit on a mesh, a plain
    jit of the same function on one device."""
    if mesh is not None:
        return lower_sharded(call.fn, mesh, call.inputs, call.out_axes, head_dim=head_dim, static=call.static)
    names = tuple(call.inputs)

    def run(*args: Any) -> Any:
        return call.fn(**dict(zip(names, args)), **call.static)

    return jax.jit(run).lower(*(v for v, _ in call.inputs.values()))


def step_figures(step: Step, mesh: Mesh | None, head_dim: int) -> StepFigures:
    compiled = lower(step.call, mesh, head_dim).compile()
    m = compiled.memory_analysis()
    call_bytes = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    return StepFigures(step.call.name, float(call_bytes), float(sum(b for _, b in step.resident)), flops)


def phase_peak(steps: list[StepFigures]) -> float:
    return max(s.bytes for s in steps)


# --- the phases ----------------------------------------------------------------------------
class PhaseBuilder:
    """The steps of every phase for one model, mesh and run."""

    def __init__(self, cfg: ModelConfig, settings: PlanSettings, mesh: Mesh | None):
        self.cfg, self.s, self.mesh = cfg, settings, mesh
        self.wdt = jnp.dtype(settings.dtype)
        self.hd = cfg.head_dim

    def dev(self, shape: tuple[int, ...], axes: Axes, itemsize: float) -> float:
        return analytical.per_device(shape, axes, itemsize, mesh_spec(self.mesh), self.hd)

    def batch_split(self, n_windows: int) -> int:
        """Over how many devices `n_windows` windows are split (`map_chunks` counts chunks per device)."""
        return analytical.split_factor((n_windows,), Axes("batch"), mesh_spec(self.mesh))

    def head_bytes(self) -> float:
        return nbytes(head_structs(self.cfg, self.wdt), head_axes(self.cfg), self.mesh, self.hd)

    def block_bytes(self) -> float:
        return nbytes(block_structs(self.cfg, self.wdt), layer_axes(self.cfg), self.mesh, self.hd)

    def blocks_bytes(self) -> float:
        """All blocks of the model when it is held (none when blocks are streamed)."""
        return 0.0 if self.s.stream else self.cfg.n_layers * self.block_bytes()

    # teacher: every calibration window block by block (`run_blocks`), then the LM head's top-k
    def teacher(self, per_device: int) -> list[Step]:
        cfg, N, T, d = self.cfg, self.s.n_calib, self.s.window, self.cfg.hidden_size
        b = min(N, per_device * self.batch_split(N))
        k = min(self.s.tyr.topk, cfg.vocab_size)
        hidden = self.dev((N, T, d), HIDDEN, self.wdt.itemsize)
        block = Call("block_output", block_output,
                     {"p": (block_structs(cfg, self.wdt), layer_axes(cfg)), "x": (struct((b, T, d), self.wdt), HIDDEN)},
                     HIDDEN, {"cfg": cfg, "kv_map": cfg.kv_map(0)})
        head = Call("teacher_from_hidden", _teacher_from_hidden,
                    {"head": (head_structs(cfg, self.wdt), head_axes(cfg)), "h": (struct((b, T, d), self.wdt), HIDDEN)},
                    REPLICATED, {"cfg": cfg, "k": k})
        return [
            Step(block, (("model head", self.head_bytes()), ("held blocks", self.blocks_bytes()),
                         ("hidden states of all windows, in and out", 2 * hidden))),
            Step(head, (("held blocks", self.blocks_bytes()), ("hidden states of all windows", hidden),
                        ("top-k of the other windows (replicated)",
                         self.dev((N - b, T, k), REPLICATED, TEACHER_K_BYTES)))),
        ]

    # supernet: per block, capture o_proj's and down_proj's inputs (in window chunks when they do
    # not fit), their Grams, prune the levels in groups that fit
    def supernet_chunks(self, budget: int) -> tuple[int, int, int]:
        """(windows per device captured at once, levels per call of the local pruner at o_proj
        and at down_proj) that `tyr.supernet.prune_block` takes for this budget; raises the
        budget error."""
        cfg, T = self.cfg, self.s.window
        n_local = -(-self.s.n_calib // self.batch_split(self.s.n_calib))
        resident = self.head_bytes() + self.blocks_bytes() + self.block_bytes()
        size = build_capture_windows(cfg, n_local, T, budget, resident, self.wdt.itemsize)
        on_host = self.stream_on_host(size, budget)
        left = max(int(budget - held_while_pruning(cfg, n_local, T, resident, size < n_local, on_host)), 1)
        modules = ((cfg.n_heads * cfg.head_dim, ATTN_ROUNDS), (cfg.intermediate_size, MLP_ROUNDS))
        E = self.s.tyr.n_levels
        if self.mesh is not None:  # levels per sharded call, each device pruning its own one at a time
            devices = axis_size(self.mesh, "level")
            attn, mlp = (mesh_levels_per_call(E, devices, d_in, cfg.hidden_size, rounds, left, self.wdt.itemsize,
                                              F32 / shards(GRAM, (d_in, d_in), self.mesh))
                         for d_in, rounds in modules)
            return size, attn, mlp
        attn, mlp = (level_groups(E, d_in, cfg.hidden_size, rounds, left, self.wdt.itemsize).size
                     for d_in, rounds in modules)
        return size, attn, mlp

    def stream_on_host(self, capture: int, budget: int) -> bool:
        """Whether the build's stream waits on the host while the pruner runs (`tyr.supernet.stream_waits_on_host`)."""
        n_local = -(-self.s.n_calib // self.batch_split(self.s.n_calib))
        resident = self.head_bytes() + self.blocks_bytes() + self.block_bytes()
        return stream_waits_on_host(self.cfg, n_local, self.s.window, budget, resident, capture < n_local,
                                    self.wdt.itemsize)

    def supernet(self, capture: int, attn_levels: int, mlp_levels: int, stream_on_host: bool = False) -> list[Step]:
        """The build's steps with `capture` windows per device captured at once and the levels
        per call of the local pruner at o_proj and down_proj (`supernet_chunks`)."""
        cfg, N, T, d, f = self.cfg, self.s.n_calib, self.s.window, self.cfg.hidden_size, self.cfg.intermediate_size
        q = cfg.n_heads * cfg.head_dim
        E = self.s.tyr.n_levels
        split = self.batch_split(N)
        chunked = capture * split < N
        nc = min(N, capture * split)
        b = min(N, STATS_CHUNK * split)
        block = (block_structs(cfg, self.wdt), layer_axes(cfg))
        streams = 2 if chunked else 1  # chunked: the next block's stream is built beside this one's
        stream = ("calibration stream (fp32)" + (", in and out" if chunked else ""),
                  streams * self.dev((N, T, d), HIDDEN, F32))
        weights = (("model head", self.head_bytes()), ("held blocks", self.blocks_bytes()))
        block_res = ("weights of the block", self.block_bytes())
        heads = ("captured input of o_proj (fp32)", self.dev((nc, T, q), HEADS_OUT, F32))
        hidden = ("captured input of down_proj (fp32)", self.dev((nc, T, f), MLP_HIDDEN, F32))
        kept = () if chunked else (heads,)
        kept_hidden = () if chunked else (hidden,)
        one_stream = (("calibration stream (fp32, on the host)", 0.0) if stream_on_host else
                      ("calibration stream (fp32)", self.dev((N, T, d), HIDDEN, F32)))
        E_pad = E if self.mesh is None else round_up(E, axis_size(self.mesh, "level"))
        wo_levels = ("o_proj levels (fp32, split by level)", self.dev((E_pad, q, d), Axes("level"), F32) + E * cfg.n_heads)
        x = (struct((b, T, d), jnp.float32), HIDDEN)
        return [
            Step(Call("attention_inputs", attention_inputs, {"p": block, "x": x}, (HIDDEN, HEADS_OUT),
                      {"cfg": cfg, "kv_map": cfg.kv_map(0)}), (*weights, block_res, stream, heads)),
            Step(Call("gram o_proj", _sums, {"a": (struct((nc, T, q), jnp.float32), batch_axes(3))},
                      (GRAM, REPLICATED)),
                 (*weights, block_res, stream)),
            Step(self.prune_call("prune o_proj levels", (q, d), cfg.head_dim, ATTN_ROUNDS, attn_levels),
                 (*weights, block_res, one_stream, *kept)),
            Step(Call("mlp_inputs", mlp_inputs, {"p": block, "x": x}, (HIDDEN, MLP_HIDDEN), {"cfg": cfg}),
                 (*weights, block_res, stream, wo_levels, hidden)),
            Step(Call("gram down_proj", _sums, {"a": (struct((nc, T, f), jnp.float32), batch_axes(3))},
                      (GRAM, REPLICATED)),
                 (*weights, block_res, stream, wo_levels)),
            Step(self.prune_call("prune down_proj levels", (f, d), 1, MLP_ROUNDS, mlp_levels),
                 (*weights, block_res, one_stream, wo_levels, *kept_hidden)),
        ]

    def prune_call(self, name: str, w_shape: tuple[int, int], group_size: int, rounds: int, levels: int) -> Call:
        """The pruner's call on `levels` levels (on a mesh: levels of one sharded call)."""
        d_in = w_shape[0]
        common = {"group_size": group_size, "rounds": rounds, "saliency": self.s.tyr.saliency}
        if self.mesh is None:
            inputs = {"W_dense": (struct(w_shape, self.wdt), REPLICATED),
                      "H": (struct((d_in, d_in), jnp.float32), REPLICATED),
                      "n_remove": (struct((levels,), jnp.int32), REPLICATED),
                      "damp": (struct((), jnp.float32), REPLICATED)}
            return Call(name, _prune_levels_jit, inputs, REPLICATED, common)
        inputs = {"W_dense": (struct(w_shape, self.wdt), REPLICATED),
                  "H": (struct((d_in, d_in), jnp.float32), GRAM),
                  "n_remove": (struct((levels,), jnp.int32), Axes("level")),
                  "damp": (struct((), jnp.float32), REPLICATED)}
        return Call(name, _levels_per_device, inputs, (Axes("level"), Axes("level")), {**common, "mesh": self.mesh})

    # search: the candidates of one batch scored on the last (largest) stage's windows
    def search_shape(self, budget: int | None = None) -> tuple[int, int, int, int]:
        """(candidates per call, windows per forward, blocks per call, top-k): the last stage's
        windows, in chunks of the windows `BatchScorer` takes for `budget` (None: all at once)."""
        tcfg, cfg = self.s.tyr, self.cfg
        C = tcfg.candidate_batch if self.mesh is None else round_up(tcfg.candidate_batch, axis_size(self.mesh, "candidate"))
        B = min(self.s.n_calib, max(1, math.ceil(tcfg.stages[-1][1] / self.s.window)))
        level = analytical.level_params(cfg) * self.wdt.itemsize + cfg.n_heads + cfg.intermediate_size
        block = sum(math.prod(s) for s in layer_shapes(cfg, 0).values()) * self.wdt.itemsize
        kb, k = blocks_per_call(level, C, cfg.n_layers, block), min(tcfg.topk, cfg.vocab_size)
        if budget is not None:
            split = self.batch_split(B)
            c_local = C // (1 if self.mesh is None else axis_size(self.mesh, "candidate"))
            tensor = 1 if self.mesh is None else axis_size(self.mesh, "mlp")
            fixed = self.head_bytes() + self.blocks_bytes() + call_bytes(cfg, c_local, kb, self.wdt.itemsize,
                                                                         self.wdt.itemsize, tensor)
            size = scoring_windows(cfg, c_local, -(-B // split), self.s.window, k, budget, fixed, self.wdt.itemsize)
            B = min(B, size * split)
        return C, B, kb, k

    def search_head_chunks(self, budget: int) -> FitnessChunks:
        """The student's head chunks `BatchScorer` takes for this budget on the settings'
        platform (`tyr.fitness.gathers_rows`): beside the held weights, the candidates' hidden states and
        the teacher's top-k of one forward."""
        cfg, T = self.cfg, self.s.window
        C, B, _, k = self.search_shape(budget)
        windows = -(-B // self.batch_split(B))
        held = 2 * C * windows * T * cfg.hidden_size * self.wdt.itemsize + windows * T * k * TEACHER_K_BYTES
        fixed = self.head_bytes() + self.blocks_bytes() + held
        return fitness_chunks(windows, T, k, cfg, budget, fixed, self.wdt.itemsize, platform=self.s.platform,
                              candidates=C)

    def search(self, chunks: FitnessChunks, budget: int | None = None) -> list[Step]:
        """The search's steps with the student's head in `chunks` (`search_head_chunks`) and
        the windows of one forward for `budget`."""
        cfg, T, d = self.cfg, self.s.window, self.cfg.hidden_size
        C, B, kb, k = self.search_shape(budget)
        layers = block_structs(cfg, self.wdt, kb)
        parent_states = ("parent's input of every block", self.dev((cfg.n_layers + 1, 1, B, T, d),
                                                                   Axes(None, *CANDIDATE_HIDDEN), self.wdt.itemsize))
        teacher = ("teacher top-k of the forward", self.dev((B, T, k), Axes("batch", "seq"), TEACHER_K_BYTES))
        weights = (("model head", self.head_bytes()), ("held blocks", self.blocks_bytes()))

        def blocks_call(name: str, c: int, with_states: bool) -> Call:
            levels = BlockLevels(struct((kb, c, cfg.n_heads * cfg.head_dim, d), self.wdt), struct((kb, c, cfg.n_heads), bool),
                                 struct((kb, c, cfg.intermediate_size, d), self.wdt),
                                 struct((kb, c, cfg.intermediate_size), bool))
            inputs = {"layers": (layers, stacked_axes(layers)), "n_run": (struct((), jnp.int32), REPLICATED),
                      "levels": (levels, CANDIDATE_LEVELS), "h": (struct((c, B, T, d), self.wdt), CANDIDATE_HIDDEN)}
            return Call(name, candidate_blocks, inputs, BLOCK_STATES if with_states else CANDIDATE_HIDDEN,
                        {"cfg": cfg, "with_states": with_states})

        fitness = Call("candidate_fitness", candidate_fitness,
                       {"head": (head_structs(cfg, self.wdt), head_axes(cfg)),
                        "h": (struct((C, B, T, d), self.wdt), CANDIDATE_HIDDEN),
                        "t_idx": (struct((B, T, k), jnp.int32), Axes("batch", "seq")),
                        "t_logp": (struct((B, T, k), jnp.float32), Axes("batch", "seq"))},
                       REPLICATED, {"cfg": cfg, "fitness": self.s.tyr.fitness, "chunks": chunks})
        return [
            Step(blocks_call("parent blocks", 1, True), (*weights, parent_states, teacher)),
            Step(blocks_call("candidate blocks", C, False), (*weights, parent_states, teacher)),
            Step(fitness, (("held blocks", self.blocks_bytes()), parent_states)),
        ]

    # evaluation: perplexity, windows scored in batches: by whole-forward calls when the model is
    # held and such a call fits the budget (`evaluation.perplexity.whole_forward_bytes`), else
    # block by block
    def evaluation_whole(self, per_device: int, budget: int) -> bool:
        """Whether a held model's windows are scored by whole-forward calls of `per_device` windows."""
        model = self.head_bytes() + self.cfg.n_layers * self.block_bytes()
        return not self.s.stream and whole_forward_bytes(self.cfg, model, self.wdt.itemsize, per_device,
                                                         self.s.eval_window) <= budget

    def evaluation(self, per_device: int, whole: bool | None = None) -> list[Step]:
        cfg, N, T, d = self.cfg, self.s.eval_windows, self.s.eval_window, self.cfg.hidden_size
        b = min(N, per_device * self.batch_split(N))
        tokens = (struct((b, T), jnp.int32), Axes("batch", "seq"))
        if not self.s.stream if whole is None else whole:
            model = (model_structs(cfg, self.wdt), param_axes(cfg, stacked=True))
            return [Step(Call("window_nll_sums", window_nll_sums, {"params": model, "tokens": tokens},
                              REPLICATED, {"cfg": cfg}), ())]
        hidden = self.dev((N, T, d), HIDDEN, self.wdt.itemsize)
        block = Call("block_output", block_output,
                     {"p": (block_structs(cfg, self.wdt), layer_axes(cfg)), "x": (struct((b, T, d), self.wdt), HIDDEN)},
                     HIDDEN, {"cfg": cfg, "kv_map": cfg.kv_map(0)})
        head = Call("nll_sums_from_hidden", nll_sums_from_hidden,
                    {"head": (head_structs(cfg, self.wdt), head_axes(cfg)), "h": (struct((b, T, d), self.wdt), HIDDEN),
                     "tokens": tokens}, REPLICATED, {"cfg": cfg})
        held = (("held blocks", self.blocks_bytes()),)
        return [Step(block, (("model head", self.head_bytes()), *held,
                             ("hidden states of all windows, in and out", 2 * hidden))),
                Step(head, (*held, ("hidden states of all windows", hidden),))]


    # structured baselines (Wanda-sp, FLAP): per block (held, or streamed from the checkpoint),
    # capture, statistics, residual on every window, or on chunks of windows when the captures
    # do not fit (`tyr.baselines.capture_chunk`)
    def baselines_chunk(self, budget: int) -> int:
        """Windows per device whose captures a block pass holds at once; raises the budget error."""
        n_local = -(-self.s.n_calib // self.batch_split(self.s.n_calib))
        model = self.head_bytes() + self.blocks_bytes()
        return min(n_local, capture_windows(self.cfg, n_local, self.s.window, budget, model + self.block_bytes(),
                                            "structured baseline", RESIDUAL_COPIES))

    def baselines(self, capture: int | None = None) -> list[Step]:
        cfg, N, T, d, f = self.cfg, self.s.n_calib, self.s.window, self.cfg.hidden_size, self.cfg.intermediate_size
        q = cfg.n_heads * cfg.head_dim
        split = self.batch_split(N)
        nc = N if capture is None else min(N, capture * split)
        chunked = nc < N
        b = min(N, STATS_CHUNK * split)
        block = (block_structs(cfg, self.wdt), layer_axes(cfg))
        model = ((("model head (blocks streamed)" if self.s.stream else "model weights"),
                  self.head_bytes() + self.blocks_bytes()),)
        stream = ("calibration stream (fp32)" + (", in and out" if chunked else ""),
                  (1 + chunked) * self.dev((N, T, d), HIDDEN, F32))
        block_res = ("weights of the block", self.block_bytes())
        heads = ("captured input of o_proj (fp32)", self.dev((nc, T, q), HEADS_OUT, F32))
        hidden = ("captured input of down_proj (fp32)", self.dev((nc, T, f), MLP_HIDDEN, F32))
        x = (struct((b, T, d), jnp.float32), HIDDEN)
        part = (struct((nc, T, d), jnp.float32), HIDDEN)
        residual_res = (*model, stream) if chunked else model
        return [
            Step(Call("attention_inputs", attention_inputs, {"p": block, "x": x}, (HIDDEN, HEADS_OUT),
                      {"cfg": cfg, "kv_map": cfg.kv_map(0)}), (*model, block_res, stream, heads)),
            Step(Call("gram o_proj", _sums, {"a": (struct((nc, T, q), jnp.float32), batch_axes(3))},
                      (GRAM, REPLICATED)),
                 (*model, block_res, stream)),
            Step(Call("attention_residual", attention_residual,
                      {"p": block, "x": part, "heads": (struct((nc, T, q), jnp.float32), HEADS_OUT),
                       "head_mask": (struct((cfg.n_heads,), bool), REPLICATED)}, HIDDEN, {"cfg": cfg}), residual_res),
            Step(Call("mlp_inputs", mlp_inputs, {"p": block, "x": x}, (HIDDEN, MLP_HIDDEN), {"cfg": cfg}),
                 (*model, block_res, stream, hidden)),
            Step(Call("gram down_proj", _sums, {"a": (struct((nc, T, f), jnp.float32), batch_axes(3))},
                      (GRAM, REPLICATED)),
                 (*model, block_res, stream)),
            Step(Call("mlp_residual", mlp_residual,
                      {"p": block, "x": part, "hidden": (struct((nc, T, f), jnp.float32), MLP_HIDDEN),
                       "ffn_mask": (struct((f,), bool), REPLICATED)}, HIDDEN), residual_res),
        ]

    # SDS with SparseGPT: the layer-sequential loop at its widest layer, down_proj
    def sds_windows(self, budget: int) -> int:
        """Windows per device the SDS loop holds on the device at once (`sds.pipeline.run_pipeline`
        for this budget): all of them, or a chunk of the streams waiting on the host; raises the
        budget error."""
        cfg, N, T = self.cfg, self.s.sds_windows, self.s.sds_window
        n_local = -(-N // self.batch_split(N))
        held = self.head_bytes() + cfg.n_layers * self.block_bytes()
        tensor = 1 if self.mesh is None else axis_size(self.mesh, "mlp")
        if not self.s.stream and streams_fit(cfg, n_local, T, budget, 2 * held, tensor):
            return n_local
        resident = (self.head_bytes() if self.s.stream else held) + 2 * self.block_bytes()
        return min(n_local, stream_windows(cfg, n_local, T, budget, resident, tensor))

    def _sds_calls(self) -> dict[str, Call]:
        """SDS's calls at its widest layer, down_proj: SparseGPT on the Gram, then re-dense and
        adjustment on the objective (the Gram replicated, `b` laid out as the weight)."""
        f, d = self.cfg.intermediate_size, self.cfg.hidden_size
        w_axes = Axes(*LAYER_PARAM_AXES["w_down"])
        w = (struct((f, d), self.wdt), w_axes)
        gram = struct((f, f), jnp.float32)
        objective = (Objective(gram, struct((f, d), jnp.float32), struct((), jnp.float32), struct((), jnp.float32)),
                     Objective(REPLICATED, w_axes, REPLICATED, REPLICATED))
        pattern = check_pattern(self.s.sds_pattern)
        settings = {"steps": self.s.sds_steps, "learning_rate": DEFAULT_LEARNING_RATE, "optimizer": "adam"}
        return {
            "sparsegpt": Call("sparsegpt down_proj", sparsegpt_prune, {"W": (w[0], REPLICATED), "H": (gram, REPLICATED)},
                              REPLICATED, {"pattern": pattern}),
            "redense": Call("redense down_proj", redense, {"W_init": w, "W_dense": w, "grams": objective}, REPLICATED,
                            {**settings, "l1": 0.0, "l2": 0.0}),
            "adjust": Call("sparse_adjust down_proj", sparse_adjust, {"W_init": w, "W_dense": w, "grams": objective},
                           REPLICATED, {**settings, "pattern": pattern}),
        }

    def sds_chunked(self, size: int) -> list[Step]:
        """The SDS loop with the streams on the host, `size` windows per device on the device at
        once: the chunk's sums for down_proj (its Gram, then the objective's terms), then its fit
        beside the weights held."""
        N, T, d, f = self.s.sds_windows, self.s.sds_window, self.cfg.hidden_size, self.cfg.intermediate_size
        wb = self.wdt.itemsize
        nc = min(N, size * self.batch_split(N))
        w = (struct((f, d), self.wdt), Axes(*LAYER_PARAM_AXES["w_down"]))
        a = (struct((nc, T, f), jnp.float32), batch_axes(3))
        weights = (("model head (blocks streamed)" if self.s.stream else "model weights (held)",
                    self.head_bytes() + self.blocks_bytes() if not self.s.stream else self.head_bytes()),
                   ("the block, dense and fitted", 2 * self.block_bytes()))
        sums = ("the sums so far: the Gram and the objective's b (fp32)", (f * f + f * d) * F32)
        chunk = ("the chunk's block inputs and outputs, both streams (fp32)", 4 * self.dev((nc, T, d), HIDDEN, F32))
        dense_inputs = ("the chunk's inputs of down_proj, dense stream (fp32)", self.dev((nc, T, f), MLP_HIDDEN, F32))
        calls = self._sds_calls()
        b = ("the objective's b (fp32)", f * d * F32)
        return [
            Step(Call("gram down_proj", _sums, {"a": a}, REPLICATED), (*weights, chunk, dense_inputs, sums)),
            Step(Call("objective terms down_proj", objective_terms, {"a_s": a, "a_d": a, "W_dense": w}, REPLICATED),
                 (*weights, chunk, sums, ("the chunk's Gram (fp32)", f * f * F32))),
            Step(calls["sparsegpt"], (*weights, b)),
            Step(calls["redense"], weights),
            Step(calls["adjust"], (*weights, ("one-shot and re-dense weights", 2 * f * d * wb))),
        ]

    def sds(self) -> list[Step]:
        cfg, N, T, d, f = self.cfg, self.s.sds_windows, self.s.sds_window, self.cfg.hidden_size, self.cfg.intermediate_size
        L, wb = cfg.n_layers, self.wdt.itemsize
        block = self.block_bytes()
        linear = sum(math.prod(s) for k, s in layer_shapes(cfg, 0).items() if k.startswith("w")) * wb
        held = (("model weights", self.head_bytes() + L * block), ("the block being fitted (a copy)", block),
                ("the fitted blocks' new weights (all but the last block)", (L - 1) * linear))
        streams = (("block inputs and attention outputs, both streams (fp32)", 4 * self.dev((N, T, d), HIDDEN, F32)),
                   ("captured inputs of down_proj, both streams (fp32)", 2 * self.dev((N, T, f), MLP_HIDDEN, F32)))
        calls = self._sds_calls()
        return [
            Step(calls["sparsegpt"], (*held, *streams, ("the objective's b (fp32)", f * d * F32))),
            Step(calls["redense"], (*held, *streams)),
            Step(calls["adjust"], (*held, *streams, ("one-shot and re-dense weights", 2 * f * d * wb))),
        ]


# --- the analytical figures ----------------------------------------------------------------
def analytical_run(settings: PlanSettings, forward_windows: int, mesh: Mesh | None,
                   candidate_batch: int | None = None, head: FitnessChunks | None = None, capture: int = 0,
                   levels: int = 0, stream_on_host: bool = False) -> analytical.TyrRun:
    t = settings.tyr
    head_steps = {} if head is None else {"head_chunk": head.tokens, "head_vocab": 0 if head.gather else head.vocab}
    head_steps.update(capture_windows=capture, levels_per_call=levels)
    return analytical.TyrRun(calib_windows=settings.n_calib, window=settings.window, weight_bytes=settings.weight_bytes,
                             level_bytes=settings.weight_bytes, n_levels=t.n_levels, topk=t.topk,
                             candidate_batch=candidate_batch or t.candidate_batch, stages=t.stages,
                             generations=t.generations, iterations=t.iterations, forward_windows=forward_windows,
                             stream=settings.stream, stream_on_host=stream_on_host, **head_steps)


def analytical_peak(cfg: ModelConfig, settings: PlanSettings, mesh: Mesh | None, phase: str, forward_windows: int,
                    candidate_batch: int | None = None, head: FitnessChunks | None = None, capture: int = 0,
                    levels: int = 0, blockwise: bool = False, stream_on_host: bool = False) -> float:
    spec = mesh_spec(mesh)
    if phase == "sds":
        run = analytical.SDSRun(calib_windows=settings.sds_windows, window=settings.sds_window,
                                weight_bytes=settings.weight_bytes, steps=settings.sds_steps,
                                adjust_steps=settings.sds_steps, stream=settings.stream, windows_on_device=capture)
        return analytical.phase_peaks(analytical.sds_memory(cfg, spec, run))[phase]
    if phase == "baselines":
        run = analytical_run(settings, forward_windows, mesh, capture=capture)
        return analytical.phase_peaks(analytical.baseline_memory(cfg, spec, run))[phase]
    if phase == "evaluation":
        run = analytical.EvalRun(windows=settings.eval_windows, window=settings.eval_window,
                                 weight_bytes=settings.weight_bytes, batch=forward_windows, stream=settings.stream,
                                 blockwise=blockwise)
        return analytical.phase_peaks(analytical.evaluation_memory(cfg, spec, run))[phase]
    run = analytical_run(settings, forward_windows, mesh, candidate_batch, head, capture, levels, stream_on_host)
    return analytical.phase_peaks(analytical.tyr_memory(cfg, spec, run))[phase]


def first_level_density(cfg: ModelConfig, settings: PlanSettings) -> float:
    """The rows the first supernet's levels keep (`initial_grid` at the run's sparsity) over all their rows."""
    grid = initial_grid(cfg, settings.sparsity, settings.tyr)
    rows = np.where(grid.module_type == ATTENTION, cfg.head_dim, 1)
    return analytical.level_density(grid.removed, grid.n_groups, rows)


# --- the plan ------------------------------------------------------------------------------
def chunked_phase(name: str, make_steps: Callable[[int], list[Step]], n_items: int, budget: int,
                  mesh: Mesh | None, head_dim: int) -> tuple[list[StepFigures], int, str | None]:
    """The steps at the largest chunk (items per device) that fits `budget`: each step's bytes
    per item from one and two items give a size; halved until XLA's figure fits. With the
    budget error when one item does not fit."""
    figures = {1: [step_figures(s, mesh, head_dim) for s in make_steps(1)]}
    try:
        chunking(1, phase_peak(figures[1]), budget, phase=name)
    except TyrjaxError as e:
        return figures[1], 1, str(e)
    if n_items == 1:
        return figures[1], 1, None
    figures[2] = [step_figures(s, mesh, head_dim) for s in make_steps(2)]
    size = n_items
    for one, two in zip(figures[1], figures[2]):
        per_item = max(two.bytes - one.bytes, 1.0)
        size = min(size, chunking(n_items, per_item, budget, fixed_bytes=one.bytes - per_item, phase=name).size)
    while True:
        if size not in figures:
            figures[size] = [step_figures(s, mesh, head_dim) for s in make_steps(size)]
        if phase_peak(figures[size]) <= budget or size == 1:
            return figures[size], size, None
        size //= 2


def whole_phase(name: str, steps: list[Step], budget: int, mesh: Mesh | None,
                head_dim: int) -> tuple[list[StepFigures], str | None]:
    """The steps of a phase that is not split further; the budget error when it does not fit."""
    figures = [step_figures(s, mesh, head_dim) for s in steps]
    try:
        chunking(1, phase_peak(figures), budget, phase=name)
    except TyrjaxError as e:
        return figures, str(e)
    return figures, None


PHASES = ("teacher", "supernet", "search", "evaluation", "sds", "baselines")


def plan(model_config: ModelConfig, preset: str = "paper", mesh: Mesh | None = None, stream: bool = False,
         device_memory_bytes: int = 16 * 10**9, *, model_name: str = "model", settings: PlanSettings | None = None,
         phases: tuple[str, ...] = PHASES) -> PlanResult:
    """Every phase's per-device bytes from XLA (and the analytical count beside it) for
    `model_config` under `preset` on `mesh` (None: one device), within `device_memory_bytes`."""
    cfg = model_config
    s = settings or PlanSettings(preset=preset, stream=stream)
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise TyrjaxError(f"plan: phases {sorted(unknown)} unknown; known: {', '.join(PHASES)}")
    build = PhaseBuilder(cfg, s, mesh)
    budget, hd = int(device_memory_bytes), cfg.head_dim
    out: dict[str, PhasePlan] = {}
    for name in phases:
        if name in ("teacher", "evaluation"):
            n = s.n_calib if name == "teacher" else s.eval_windows
            per_device = -(-n // build.batch_split(n))
            if name == "teacher":  # teacher_topk's windows per device of one call
                per_device = min(per_device, TEACHER_BATCH)
            make, blockwise = build.teacher, False
            if name == "evaluation":  # held: whole forwards, or block by block when not even one window's fits
                blockwise = not s.stream and not build.evaluation_whole(1, budget)
                make = partial(build.evaluation, whole=not (s.stream or blockwise))
            figures, size, error = chunked_phase(name, make, per_device, budget, mesh, hd)
            windows = min(n, size * build.batch_split(n))
            chunks = {"windows_per_call": windows, "calls": -(-n // windows)}
            if blockwise:
                chunks["held_blocks_one_at_a_time"] = True
            plan_bytes = analytical_peak(cfg, s, mesh, name, windows, blockwise=blockwise)
        elif name == "baselines":
            try:
                capture, chunk_error = build.baselines_chunk(budget), None
            except TyrjaxError as e:  # not even one capture call fits: plan one
                capture, chunk_error = min(STATS_CHUNK, s.n_calib), str(e)
            figures, error = whole_phase(name, build.baselines(capture), budget, mesh, hd)
            error = chunk_error or error
            split = build.batch_split(s.n_calib)
            windows = min(s.n_calib, capture * split)
            chunks = {"capture_windows_per_chunk": windows,
                      "capture_windows_per_call": min(s.n_calib, STATS_CHUNK * split)}
            plan_bytes = analytical_peak(cfg, s, mesh, name, 1, capture=windows)
        elif name == "sds":
            n_local = -(-s.sds_windows // build.batch_split(s.sds_windows))
            try:
                size, size_error = build.sds_windows(budget), None
            except TyrjaxError as e:  # not even one window fits: plan one window per chunk
                size, size_error = 1, str(e)
            on_host = s.stream or size < n_local
            steps = build.sds_chunked(size) if on_host else build.sds()
            figures, error = whole_phase(name, steps, budget, mesh, hd)
            error = size_error or error
            windows = min(s.sds_windows, size * build.batch_split(s.sds_windows))
            chunks = {"windows": s.sds_windows, "windows_on_device": windows, "streams_on_host": on_host,
                      "capture_windows_per_call": min(s.sds_windows, WINDOW_CHUNK * build.batch_split(s.sds_windows))}
            plan_bytes = analytical_peak(cfg, s, mesh, name, 1, capture=windows if on_host else 0)
        elif name == "supernet":
            try:
                capture, attn_levels, mlp_levels = build.supernet_chunks(budget)
            except TyrjaxError as e:  # not even one chunk fits: plan it at the smallest
                levels = 1 if mesh is None else axis_size(mesh, "level")
                (capture, attn_levels, mlp_levels), chunk_error = (min(STATS_CHUNK, s.n_calib), levels, levels), str(e)
            else:
                chunk_error = None
            on_host = build.stream_on_host(capture, budget)
            figures, error = whole_phase(name, build.supernet(capture, attn_levels, mlp_levels, on_host), budget, mesh,
                                         hd)
            error = chunk_error or error
            split = build.batch_split(s.n_calib)
            chunks = {"levels_per_call": {"o_proj": attn_levels, "down_proj": mlp_levels}, "stream_on_host_while_pruning": on_host,
                      "capture_windows_per_chunk": min(s.n_calib, capture * split),
                      "capture_windows_per_call": min(s.n_calib, STATS_CHUNK * split)}
            plan_bytes = analytical_peak(cfg, s, mesh, name, 1, capture=min(s.n_calib, capture * split),
                                         levels=mlp_levels, stream_on_host=on_host)
        else:
            try:
                C, B, kb, _ = build.search_shape(budget)
                forward_budget = budget
            except TyrjaxError as e:  # not even one window fits: plan one forward of one window
                C, B, kb, _ = build.search_shape(None)
                B, forward_budget, head_error = 1, None, str(e)
            else:
                head_error = None
            try:
                head = build.search_head_chunks(budget) if forward_budget else FitnessChunks(1, min(VOCAB_MULTIPLE,
                                                                                                  cfg.vocab_size))
            except TyrjaxError as e:  # not even one step of the head fits: plan it at the narrowest
                head, head_error = FitnessChunks(1, min(VOCAB_MULTIPLE, cfg.vocab_size)), str(e)
            figures, error = whole_phase(name, build.search(head, forward_budget), budget, mesh, hd)
            error = head_error or error
            chunks = {"candidates_per_call": C, "windows_per_forward": B, "blocks_per_call": kb,
                      "head_positions_per_step": head.tokens, "head_vocab_per_step": head.vocab or "rows gathered"}
            plan_bytes = analytical_peak(cfg, s, mesh, name, B, C, head)
        xla = phase_peak(figures)
        out[name] = PhasePlan(name, xla, plan_bytes, chunks, sum(f.flops for f in figures), tuple(figures),
                              error is None and xla <= budget, error)
    disk = analytical.supernet_disk_bytes(cfg, dataclasses.replace(analytical_run(s, 1, mesh),
                                                                   level_density=first_level_density(cfg, s)))
    return PlanResult(model_name, mesh_shape(mesh), budget, out, disk)
