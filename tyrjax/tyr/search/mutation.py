"""Mutations of a genome that keep the removed-parameter total exactly constant (§1.4, §4).

A mutation is any callable ``fn(rng, genome, grid, max_switches) -> new_genome`` where
``rng`` is a ``numpy.random.Generator``. It must return a valid genome (every level valid
in ``grid``) that removes exactly as many parameters as ``genome``; :func:`evolve` checks
both and raises TyrjaxError naming the mutation otherwise. Register your own with
:func:`register_mutation` and select it with ``SearchConfig(mutation=name)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from tyrjax.errors import TyrjaxError
from tyrjax.registry import Registry
from tyrjax.tyr.search.levels import LevelGrid, check_genome

__all__ = [
    "Mutation",
    "MUTATIONS",
    "register_mutation",
    "get_mutation",
    "as_rng",
    "switch_classes",
    "level_switch",
]

Mutation = Callable[[np.random.Generator, np.ndarray, LevelGrid, int], np.ndarray]

MUTATIONS: Registry[Mutation] = Registry("mutation", "tyrjax.tyr.search.MUTATIONS")

register_mutation = MUTATIONS.register
"""Register a mutation under a name; usable as a decorator (``@register_mutation("mine")``)."""

get_mutation = MUTATIONS.get
"""The mutation registered under a name; an unknown name fails naming the registered ones."""


def as_rng(key: Any) -> np.random.Generator:
    """``key`` as a numpy Generator: a Generator is used as is, a non-negative int seeds a new one."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0:
        return np.random.default_rng(int(key))
    raise TyrjaxError(f"key must be a numpy.random.Generator or a non-negative int seed; got {type(key).__name__}.")


def switch_classes(grid: LevelGrid) -> List[Tuple[int, int, np.ndarray]]:
    """Groups of layers that may trade levels: same module type and same ``step * group_params``.

    Returns ``[(module_type, step_params, layer_indices), ...]``. In the models we target all
    layers of a type have equal step and group_params, so there is one class per type; if
    they differ, layers only trade with layers of equal per-step parameter count, which is
    what keeps the total exactly constant.
    """
    keys: Dict[Tuple[int, int], List[int]] = {}
    for l, (t, sp) in enumerate(zip(grid.module_type.tolist(), grid.step_params.tolist())):
        keys.setdefault((int(t), int(sp)), []).append(l)
    return [(t, sp, np.asarray(m, dtype=np.int64)) for (t, sp), m in sorted(keys.items())]


def _one_switch(rng: np.random.Generator, g: np.ndarray, grid: LevelGrid, classes) -> bool:
    """Apply one switch to ``g`` in place; False if no switch is possible."""
    E = grid.n_levels
    idx = np.arange(grid.n_layers)
    can_down = (g > 0) & grid.valid[idx, np.maximum(g - 1, 0)]
    can_up = (g < E - 1) & grid.valid[idx, np.minimum(g + 1, E - 1)]
    feasible: Dict[int, list] = {}
    for t, _sp, members in classes:
        d = members[can_down[members]]
        u = members[can_up[members]]
        if d.size == 0 or u.size == 0 or (d.size == 1 and u.size == 1 and d[0] == u[0]):
            continue
        feasible.setdefault(t, []).append((d, u))
    if not feasible:
        return False
    types = sorted(feasible)
    t = types[int(rng.integers(len(types)))]
    opts = feasible[t]
    d, u = opts[int(rng.integers(len(opts)))]
    downs = d if u.size > 1 else d[d != u[0]]
    a = int(downs[int(rng.integers(downs.size))])
    ups = u[u != a]
    b = int(ups[int(rng.integers(ups.size))])
    g[a] -= 1
    g[b] += 1
    return True


def level_switch(key: Any, genome: Any, grid: LevelGrid, max_switches: int = 4) -> np.ndarray:
    """EvoPress/Týr level-switch mutation.

    Makes ``min(U{1..max_switches}, U{1..max_switches})`` switches. A switch picks a module
    type uniformly among those with a possible switch, then (if the type has several
    per-step parameter classes, see :func:`switch_classes`) a class, then a layer whose level
    can go down and a different one whose level can go up (both new levels valid), and moves
    the first down one level and the second up one level. Each switch leaves
    ``removed_params`` unchanged. Switches may undo each other; a draw that returns the input
    genome is redrawn, so the result always differs from ``genome`` in between 1 and
    ``2 * max_switches`` layers.

    ``key``: a numpy Generator (advanced in place) or an int seed.
    """
    rng = as_rng(key)
    parent = check_genome(grid, genome)
    if not isinstance(max_switches, (int, np.integer)) or isinstance(max_switches, bool) or max_switches < 1:
        raise TyrjaxError(f"max_switches must be an int >= 1; got {max_switches!r}.")
    classes = switch_classes(grid)
    for _ in range(10_000):
        g = parent.copy()
        n = int(min(rng.integers(1, max_switches + 1), rng.integers(1, max_switches + 1)))
        for _s in range(n):
            if not _one_switch(rng, g, grid, classes):
                raise TyrjaxError(
                    "No level switch is possible: within every module type (and per-step parameter class) there "
                    "are not two distinct layers with one able to go down a level and another able to go up. "
                    "The model needs at least two layers per module type, and the genome must not sit at the "
                    "edges of all levels; use more layers, a finer interval or a different centre."
                )
        if not np.array_equal(g, parent):
            return g
    raise TyrjaxError("level_switch kept returning the input genome; the grid admits almost no moves.")  # pragma: no cover


MUTATIONS.register("level_switch", level_switch)
