"""The (1+λ) elitist evolutionary search with multi-step selection (ALGORITHMS.md §1.4, §4).

Model-independent: the caller supplies ``fitness_fn(genomes, parent, stage, generation)`` which
scores a ``(C, L)`` int array of genomes (lower is better, e.g. KL to the dense model) on the
token budget ``config.stages[stage][1]`` with a token batch it derives reproducibly from
``(stage, generation)``. ``parent`` is the generation's parent, whom every offspring differs
from in a few layers (a scorer may reuse the computation they share with it).

Per generation ``g``:
  1. ``offspring`` distinct genomes are drawn from the parent with the configured mutation;
     duplicates (of each other or of the parent) are redrawn. Every offspring is checked to
     be valid and to remove exactly the parent's parameter count.
  2. Stage ``i`` scores its candidates and keeps the best ``stages[i + 1][0]`` (stable sort:
     ties keep the earlier-drawn offspring). In the last stage the parent is prepended as
     row 0 and re-scored on the same tokens as the finalists; the best becomes the parent
     (ties keep the parent). NaN fitness counts as +inf.

Randomness: generation ``g`` uses ``numpy.random.default_rng(SeedSequence([seed, g]))``, so
the RNG state is fully described by ``(seed, generation)`` and a resumed search (see
:func:`save_state` / :func:`load_state`) produces exactly the uninterrupted result, provided
``fitness_fn`` is deterministic in its arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

import numpy as np

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search.levels import LevelGrid, centre_genome, check_genome, removed_params
from tyrjax.files import write_json
from tyrjax.tyr.search.mutation import get_mutation

__all__ = [
    "SearchConfig",
    "GenerationRecord",
    "SearchState",
    "SearchResult",
    "FitnessFn",
    "evolve",
    "draw_offspring",
    "generation_rng",
    "save_state",
    "load_state",
]

FitnessFn = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]

_STATE_FORMAT = "tyrjax.tyr.search.state"
_STATE_VERSION = 1


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class SearchConfig:
    """Search hyper-parameters (defaults: Týr's reference settings).

    stages: ``((n_scored, tokens), ...)``. Stage ``i`` scores ``n_scored`` candidates on
    ``tokens`` tokens (the token count is for the caller's ``fitness_fn``; this module only
    passes the stage index). ``stages[0][0]`` must equal ``offspring``; the counts must not
    increase. The last stage additionally re-scores the parent.
    """

    generations: int = 50
    offspring: int = 128
    stages: Tuple[Tuple[int, int], ...] = ((128, 2048), (16, 16384), (4, 131072))
    max_switches: int = 4
    seed: int = 0
    mutation: str = "level_switch"

    def __post_init__(self) -> None:
        for name in ("generations", "offspring", "max_switches", "seed"):
            v = getattr(self, name)
            lo = 0 if name in ("generations", "seed") else 1
            if not _is_int(v) or v < lo:
                raise TyrjaxError(f"SearchConfig.{name} must be an int >= {lo}; got {v!r}.")
        try:
            stages = tuple((int(n), int(t)) for n, t in self.stages)
            if any(not (_is_int(n) and _is_int(t)) for n, t in self.stages):
                raise TypeError
        except (TypeError, ValueError):
            raise TyrjaxError(
                f"SearchConfig.stages must be a sequence of (n_scored, tokens) int pairs; got {self.stages!r}."
            ) from None
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise TyrjaxError("SearchConfig.stages is empty; give at least one (n_scored, tokens) stage.")
        if stages[0][0] != self.offspring:
            raise TyrjaxError(
                f"SearchConfig.stages[0] scores {stages[0][0]} candidates but offspring={self.offspring}; "
                "the first stage scores all offspring, so make them equal."
            )
        for i, (n, t) in enumerate(stages):
            if n < 1 or t < 1:
                raise TyrjaxError(f"SearchConfig.stages[{i}] = {(n, t)}; counts and token budgets must be >= 1.")
            if i and n > stages[i - 1][0]:
                raise TyrjaxError(
                    f"SearchConfig.stages[{i}] keeps {n} candidates but the previous stage scored only "
                    f"{stages[i - 1][0]}; survivor counts must not increase."
                )
        if not isinstance(self.mutation, str):
            raise TyrjaxError(f"SearchConfig.mutation must be a registered mutation name; got {self.mutation!r}.")

    def fingerprint(self) -> dict:
        """Everything that determines the trajectory except ``generations``."""
        return {
            "offspring": self.offspring,
            "stages": [list(s) for s in self.stages],
            "max_switches": self.max_switches,
            "seed": self.seed,
            "mutation": self.mutation,
        }


@dataclass(frozen=True)
class GenerationRecord:
    generation: int
    fitness: float  # the new parent's fitness in the last stage of this generation
    parent: Tuple[int, ...]  # the parent after this generation's selection
    replaced: bool  # an offspring beat the (re-scored) parent


@dataclass(frozen=True)
class SearchState:
    """Everything needed to resume: JSON-serialisable via ``to_dict`` / ``from_dict``.

    ``generation`` counts completed generations; the RNG state is ``(seed, generation)``.
    ``parent_fitness`` is None before the first generation. ``seconds`` is the wall time the
    search took to reach this state, across resumes (set by whoever saves it).
    """

    seed: int
    generation: int
    parent: Tuple[int, ...]
    parent_fitness: Optional[float]
    history: Tuple[GenerationRecord, ...]
    config: dict
    grid: dict
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "seed": self.seed,
            "generation": self.generation,
            "parent": list(self.parent),
            "parent_fitness": self.parent_fitness,
            "history": [
                {"generation": r.generation, "fitness": r.fitness, "parent": list(r.parent), "replaced": r.replaced}
                for r in self.history
            ],
            "config": self.config,
            "grid": self.grid,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchState":
        if not isinstance(d, dict) or d.get("format") != _STATE_FORMAT:
            raise TyrjaxError("Not a tyrjax search state (missing format tag); pass a file written by save_state.")
        if d.get("version") != _STATE_VERSION:
            raise TyrjaxError(
                f"Search state version {d.get('version')!r} is not supported (expected {_STATE_VERSION}); "
                "restart the search or use the tyrjax version that wrote it."
            )
        try:
            pf = d["parent_fitness"]
            return cls(
                seed=int(d["seed"]),
                generation=int(d["generation"]),
                parent=tuple(int(x) for x in d["parent"]),
                parent_fitness=None if pf is None else float(pf),
                history=tuple(
                    GenerationRecord(
                        generation=int(r["generation"]),
                        fitness=float(r["fitness"]),
                        parent=tuple(int(x) for x in r["parent"]),
                        replaced=bool(r["replaced"]),
                    )
                    for r in d["history"]
                ),
                config=dict(d["config"]),
                grid=dict(d["grid"]),
                seconds=float(d.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TyrjaxError(f"Corrupt search state ({exc!r}); delete it and restart the search.") from exc


@dataclass(frozen=True, eq=False)
class SearchResult:
    genome: np.ndarray  # (L,) int64, the final parent
    fitness: Optional[float]  # its last-stage fitness in the last generation (None if 0 generations ran)
    history: Tuple[GenerationRecord, ...] = field(default_factory=tuple)


# -------------------------------------------------------------------- helpers
def generation_rng(seed: int, generation: int) -> np.random.Generator:
    """The RNG used for generation ``generation`` of a search seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(generation)]))


def draw_offspring(
    rng: np.random.Generator,
    parent: np.ndarray,
    grid: LevelGrid,
    n: int,
    mutation: str = "level_switch",
    max_switches: int = 4,
) -> np.ndarray:
    """``(n, L)`` distinct mutants of ``parent``, none equal to it, all with its parameter count."""
    fn = get_mutation(mutation)
    parent = check_genome(grid, parent, "parent")
    target = removed_params(grid, parent)
    seen = {parent.tobytes()}
    out = []
    attempts, max_attempts = 0, 50 * n + 1000
    while len(out) < n:
        if attempts >= max_attempts:
            raise TyrjaxError(
                f"Could only draw {len(out)} distinct offspring of the parent in {attempts} tries (wanted {n}); "
                "the grid admits too few neighbours. Lower SearchConfig.offspring (and stages[0][0]) or raise "
                "max_switches."
            )
        attempts += 1
        child = fn(rng, parent.copy(), grid, max_switches)
        try:
            child = check_genome(grid, child, f"offspring of mutation {mutation!r}")
        except TyrjaxError as exc:
            raise TyrjaxError(f"Mutation {mutation!r} produced an invalid genome: {exc}") from None
        got = removed_params(grid, child)
        if got != target:
            raise TyrjaxError(
                f"Mutation {mutation!r} changed the removed parameter count from {target} to {got}; a mutation "
                "must keep it exactly constant (trade levels only between layers of equal step*group_params)."
            )
        k = child.tobytes()
        if k in seen:
            continue
        seen.add(k)
        out.append(child)
    return np.stack(out).astype(np.int64)


def _score(fitness_fn: FitnessFn, cands: np.ndarray, parent: np.ndarray, stage: int, generation: int) -> np.ndarray:
    arr = np.array(cands, dtype=np.int64, copy=True)
    arr.setflags(write=False)
    parent = np.array(parent, dtype=np.int64, copy=True)
    parent.setflags(write=False)
    out = fitness_fn(arr, parent, stage, generation)
    try:
        f = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TyrjaxError(f"fitness_fn must return a float array of shape ({len(cands)},); got {type(out).__name__}.") from exc
    if f.shape != (len(cands),):
        raise TyrjaxError(
            f"fitness_fn returned shape {f.shape} for {len(cands)} genomes at stage {stage}, generation "
            f"{generation}; it must return one float per genome, shape ({len(cands)},)."
        )
    return np.where(np.isnan(f), np.inf, f)


def _initial_state(grid: LevelGrid, config: SearchConfig, start_genome: Any) -> SearchState:
    parent = centre_genome(grid) if start_genome is None else check_genome(grid, start_genome, "start_genome")
    return SearchState(
        seed=config.seed,
        generation=0,
        parent=tuple(int(x) for x in parent),
        parent_fitness=None,
        history=(),
        config=config.fingerprint(),
        grid=grid.to_dict(),
    )


def _check_resume(grid: LevelGrid, config: SearchConfig, state: SearchState) -> None:
    if not isinstance(state, SearchState):
        raise TyrjaxError(f"state must be a SearchState (e.g. from load_state); got {type(state).__name__}.")
    if state.config != config.fingerprint():
        raise TyrjaxError(
            f"The saved search state was made with config {state.config} but this call uses "
            f"{config.fingerprint()}; resume with the same SearchConfig (only generations may change) or start anew."
        )
    if state.grid != grid.to_dict():
        raise TyrjaxError(
            "The saved search state belongs to a different LevelGrid; resume with the grid it was made for "
            "(same supernet) or start a new search."
        )
    check_genome(grid, np.asarray(state.parent, dtype=np.int64), "state.parent")


# ----------------------------------------------------------------------- loop
def evolve(
    grid: LevelGrid,
    fitness_fn: FitnessFn,
    config: SearchConfig = SearchConfig(),
    *,
    start_genome: Any = None,
    state: Optional[SearchState] = None,
    on_generation: Optional[Callable[[SearchState], None]] = None,
) -> SearchResult:
    """Run generations ``state.generation .. config.generations - 1`` of the (1+λ) search.

    ``fitness_fn(genomes (C, L) int64 read-only, parent (L,) int64 read-only, stage, generation)
    -> (C,)`` floats, lower is better. In the last stage row 0 is the parent. ``start_genome`` (default: all centre
    levels) starts a new search; ``state`` resumes one (not both). ``on_generation(state)``
    is called after every generation with the new :class:`SearchState` (save it with
    :func:`save_state` to checkpoint).
    """
    if not isinstance(config, SearchConfig):
        raise TyrjaxError(f"config must be a SearchConfig; got {type(config).__name__}.")
    if not isinstance(grid, LevelGrid):
        raise TyrjaxError(f"grid must be a LevelGrid (see make_grid); got {type(grid).__name__}.")
    if not callable(fitness_fn):
        raise TyrjaxError("fitness_fn must be callable (genomes, parent, stage, generation) -> fitness array.")
    get_mutation(config.mutation)
    if state is not None and start_genome is not None:
        raise TyrjaxError("Pass either start_genome (new search) or state (resume), not both.")
    if state is None:
        state = _initial_state(grid, config, start_genome)
    else:
        _check_resume(grid, config, state)

    n_stages = len(config.stages)
    for gen in range(state.generation, config.generations):
        rng = generation_rng(config.seed, gen)
        parent = np.asarray(state.parent, dtype=np.int64)
        cands = draw_offspring(rng, parent, grid, config.offspring, config.mutation, config.max_switches)
        for stage in range(n_stages):
            last = stage == n_stages - 1
            if last:
                cands = np.concatenate([parent[None, :], cands], axis=0)
            scores = _score(fitness_fn, cands, parent, stage, gen)
            if not last:
                keep = config.stages[stage + 1][0]
                order = np.argsort(scores, kind="stable")[:keep]
                cands = cands[order]
            else:
                best = int(np.argmin(scores))
                new_parent = cands[best]
                new_fit = float(scores[best])
        record = GenerationRecord(
            generation=gen,
            fitness=new_fit,
            parent=tuple(int(x) for x in new_parent),
            replaced=best != 0,
        )
        state = SearchState(
            seed=state.seed,
            generation=gen + 1,
            parent=record.parent,
            parent_fitness=new_fit,
            history=state.history + (record,),
            config=state.config,
            grid=state.grid,
        )
        if on_generation is not None:
            on_generation(state)

    return SearchResult(
        genome=np.asarray(state.parent, dtype=np.int64),
        fitness=state.parent_fitness,
        history=state.history,
    )


# ---------------------------------------------------------------- persistence
def save_state(path: str | os.PathLike, state: SearchState) -> None:
    """Write ``state`` as JSON atomically (temporary file in the same folder + os.replace)."""
    if not isinstance(state, SearchState):
        raise TyrjaxError(f"save_state expects a SearchState; got {type(state).__name__}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TyrjaxError(f"Cannot save the search state to {path!r}: folder {folder!r} does not exist; create it first.")
    write_json(path, state.to_dict())


def load_state(path: str | os.PathLike) -> SearchState:
    """Read a state written by :func:`save_state`."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise TyrjaxError(f"No search state at {path!r}; check the path or start a new search.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TyrjaxError(f"Search state {path!r} is not valid JSON ({exc}); delete it and restart the search.") from None
    return SearchState.from_dict(d)
