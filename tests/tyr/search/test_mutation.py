"""tyrjax.tyr.search.mutation: level switches keep the size exact; the mutation registry."""
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search import (
    MUTATIONS,
    LevelGrid,
    SearchConfig,
    centre_genome,
    check_genome,
    evolve,
    level_switch,
    make_grid,
    register_mutation,
    removed_params,
    switch_classes,
)

from search_fixtures import grid_arrays, edge_grid, hetero_grid


# ------------------------------------------------------------------------- mutation
@pytest.mark.parametrize("grid_fn", [lambda: make_grid(*grid_arrays(6)[:3], 0.5, 0.125, grid_arrays(6)[3]), edge_grid, hetero_grid])
@pytest.mark.parametrize("max_switches", [1, 4])
def test_level_switch_invariants(grid_fn, max_switches):
    grid = grid_fn()
    rng = np.random.default_rng(123)
    start = centre_genome(grid)
    total = removed_params(grid, start)
    classes = switch_classes(grid)

    def class_totals(g):
        rem = grid.removed[np.arange(grid.n_layers), g] * grid.group_params
        return [int(rem[m].sum()) for _, _, m in classes]

    ct0 = class_totals(start)
    g = start
    n_changed_seen = set()
    for i in range(2500):
        parent = g if i % 2 else start  # a random walk, and fresh draws from the centre
        child = level_switch(rng, parent, grid, max_switches)
        check_genome(grid, child)  # never an invalid level
        assert removed_params(grid, child) == total
        assert class_totals(child) == ct0  # trades only inside a per-step parameter class
        n_changed = int((child != parent).sum())
        assert 1 <= n_changed <= 2 * max_switches
        n_changed_seen.add(n_changed)
        g = child
    assert max(n_changed_seen) >= min(2 * max_switches, 4)
    assert min(n_changed_seen) == 2


def test_level_switch_seeded_and_impossible():
    grid = edge_grid()
    a = level_switch(7, centre_genome(grid), grid)
    b = level_switch(7, centre_genome(grid), grid)
    np.testing.assert_array_equal(a, b)
    one_block = LevelGrid(module_type=[0, 1], group_params=[1, 1], n_groups=[8, 8], centre=[4, 4], step=[1, 1])
    with pytest.raises(TyrjaxError, match="No level switch"):
        level_switch(0, centre_genome(one_block), one_block)


def test_mutation_registry_and_checks():
    grid = make_grid(*grid_arrays(4)[:3], 0.5, 0.125, grid_arrays(4)[3])

    def bad(rng, genome, grid, max_switches):
        g = genome.copy()
        g[0] += 1  # changes the parameter count
        return g

    register_mutation("test_bad", bad)
    try:
        with pytest.raises(TyrjaxError, match="already registered"):
            register_mutation("test_bad", lambda *a: None)
        cfg = SearchConfig(generations=1, offspring=4, stages=((4, 1),), mutation="test_bad")
        with pytest.raises(TyrjaxError, match="test_bad"):
            evolve(grid, lambda g, p, s, k: np.zeros(len(g)), cfg)
    finally:
        MUTATIONS.unregister("test_bad")
    with pytest.raises(TyrjaxError, match="unknown mutation 'nope'; registered: .*level_switch"):
        evolve(grid, lambda g, p, s, k: np.zeros(len(g)), SearchConfig(offspring=4, stages=((4, 1),), mutation="nope"))
