"""Týr's supernet level grid and evolutionary search (model-independent parts).

See ALGORITHMS.md §1.3-§1.5 and §4. The model-dependent fitness (KL to the dense model on
calibration tokens) is supplied by the caller to :func:`evolve`.
"""

from tyrjax.tyr.search.evolution import (
    FitnessFn,
    GenerationRecord,
    SearchConfig,
    SearchResult,
    SearchState,
    draw_offspring,
    evolve,
    generation_rng,
    load_state,
    save_state,
)
from tyrjax.tyr.search.levels import (
    ATTENTION,
    MLP,
    Centres,
    LevelGrid,
    centre_genome,
    check_genome,
    initial_centres,
    make_grid,
    recentre,
    removed_params,
    sparsity,
)
from tyrjax.tyr.search.mutation import (
    MUTATIONS,
    Mutation,
    as_rng,
    get_mutation,
    level_switch,
    register_mutation,
    switch_classes,
)

__all__ = [
    "ATTENTION",
    "MLP",
    "Centres",
    "LevelGrid",
    "centre_genome",
    "check_genome",
    "initial_centres",
    "make_grid",
    "recentre",
    "removed_params",
    "sparsity",
    "MUTATIONS",
    "Mutation",
    "as_rng",
    "get_mutation",
    "level_switch",
    "register_mutation",
    "switch_classes",
    "FitnessFn",
    "GenerationRecord",
    "SearchConfig",
    "SearchResult",
    "SearchState",
    "draw_offspring",
    "evolve",
    "generation_rng",
    "load_state",
    "save_state",
]
