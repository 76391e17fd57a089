"""Tests of tyrjax.tyr.search: level grid, level-switch mutation, (1+λ) evolutionary search."""

import json
import os

import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search import (
    MUTATIONS,
    LevelGrid,
    SearchConfig,
    centre_genome,
    check_genome,
    draw_offspring,
    evolve,
    generation_rng,
    initial_centres,
    level_switch,
    load_state,
    make_grid,
    recentre,
    register_mutation,
    removed_params,
    save_state,
    sparsity,
    switch_classes,
)


def _blocks(n_blocks, heads=8, neurons=256, head_params=100, neuron_params=30):
    n_groups = [heads, neurons] * n_blocks
    group_params = [head_params, neuron_params] * n_blocks
    module_type = [0, 1] * n_blocks
    group_multiple = [1, 32] * n_blocks
    return n_groups, group_params, module_type, group_multiple


def _edge_grid():
    """6 blocks, centres spread so several layers have invalid levels at either end."""
    return LevelGrid(
        module_type=[0, 1] * 6,
        group_params=[100, 30] * 6,
        n_groups=[8, 256] * 6,
        centre=[1, 224, 7, 32, 4, 128, 0, 256, 8, 0, 3, 96],
        step=[1, 32] * 6,
    )


def _hetero_grid():
    """Attention layers in two per-step parameter classes (step 1 vs step 2), MLP with two classes too."""
    return LevelGrid(
        module_type=[0, 0, 0, 0, 0, 1, 1, 1, 1],
        group_params=[100, 100, 100, 100, 100, 30, 30, 60, 60],
        n_groups=[8, 8, 16, 16, 16, 256, 256, 128, 128],
        centre=[4, 4, 8, 8, 8, 128, 128, 64, 64],
        step=[1, 1, 2, 2, 2, 32, 32, 16, 16],
    )


# ----------------------------------------------------------------------------- grid
def test_make_grid_values():
    n, gp, mt, mult = _blocks(2, heads=32, neurons=8192)
    g = make_grid(n, gp, mt, 0.5, 0.125, mult)
    np.testing.assert_array_equal(g.step, [4, 1024] * 2)
    np.testing.assert_array_equal(g.centre, [16, 4096] * 2)
    np.testing.assert_array_equal(g.removed[0], [0, 4, 8, 12, 16, 20, 24, 28, 32])
    assert g.valid.all()
    fine = make_grid(n, gp, mt, 0.5, 0.015625, mult)
    np.testing.assert_array_equal(fine.step, [1, 128] * 2)  # 0.5 head rounds up to one head
    # Wider interval: levels outside [0, n_groups] exist as "invalid", they are not clipped.
    wide = make_grid(n, gp, mt, 0.5, 0.25, mult)
    np.testing.assert_array_equal(wide.removed[0], [-16, -8, 0, 8, 16, 24, 32, 40, 48])
    np.testing.assert_array_equal(wide.valid[0], [False, False, True, True, True, True, True, False, False])
    # Centre rounds to a multiple of group_multiple.
    g2 = make_grid([8, 512], [1, 1], [0, 1], [0.3, 0.3], 0.125, [1, 32])
    np.testing.assert_array_equal(g2.centre, [2, 160])  # 2.4 -> 2 heads; 153.6 neurons -> 5*32
    np.testing.assert_array_equal(g2.step, [1, 64])


def test_make_grid_too_small():
    # 9 heads at a 3.125 % interval: 0.28 heads per level rounds to 0 whole heads.
    with pytest.raises(TyrjaxError, match="too small"):
        make_grid([9, 1536], [10, 3], [0, 1], 0.5, 0.03125, [1, 32])
    with pytest.raises(TyrjaxError, match="group_multiple"):
        make_grid([9, 16], [10, 3], [0, 1], 0.5, 0.125, [1, 32])


def test_removed_params_and_sparsity():
    g = LevelGrid(module_type=[0, 1], group_params=[100, 30], n_groups=[8, 256], centre=[4, 128], step=[1, 32])
    genome = np.array([2, 7])  # removes 4-2=2 heads, 128+3*32=224 neurons
    assert removed_params(g, genome) == 2 * 100 + 224 * 30
    assert sparsity(g, genome, 10000) == pytest.approx((200 + 6720) / 10000)
    assert removed_params(g, centre_genome(g)) == 4 * 100 + 128 * 30
    e = _edge_grid()
    with pytest.raises(TyrjaxError, match="invalid level"):
        removed_params(e, np.full(12, 0))
    with pytest.raises(TyrjaxError, match="shape"):
        removed_params(g, [4, 4, 4])


def test_initial_centres():
    n, gp, mt, mult = _blocks(4)
    total = sum(a * b for a, b in zip(n, gp))
    c = initial_centres(0.5, n, gp, mult)
    assert c.achieved == 0.5 and c.removed_params * 2 == total
    np.testing.assert_array_equal(c.groups, [4, 128] * 4)
    grid = make_grid(n, gp, mt, c.sparsity, 0.125, mult)
    np.testing.assert_array_equal(grid.centre, c.groups)
    assert removed_params(grid, centre_genome(grid)) == c.removed_params
    # A target between granules: within half the smallest granule (32*30=960 params), near-uniform.
    c3 = initial_centres(0.3, n, gp, mult, module_type=mt)
    assert abs(c3.removed_params - 0.3 * total) <= 960 / 2
    for t, one_granule in ((0, 1 / 8), (1, 32 / 256)):  # layers of a type differ by <= one granule
        s = c3.sparsity[np.array(mt) == t]
        assert s.max() - s.min() <= one_granule + 1e-12
        assert abs(s.mean() - 0.3) <= one_granule
    # A total that includes unremovable parameters: the achieved value counts against it.
    c4 = initial_centres(0.25, n, gp, mult, total_params=2 * total)
    assert c4.achieved == 0.25 and c4.removed_params == total // 2
    # Unreachable: asks to remove more than the removable parameters.
    with pytest.raises(TyrjaxError, match="at most"):
        initial_centres(0.75, n, gp, mult, total_params=2 * total)
    with pytest.raises(TyrjaxError):
        initial_centres(1.5, n, gp, mult)


def test_recentre_keeps_total():
    n, gp, mt, mult = _blocks(3)
    grid = make_grid(n, gp, mt, 0.5, 0.125, mult)
    genome = level_switch(3, centre_genome(grid), grid)
    fine = recentre(grid, genome, 0.0625, mult)
    np.testing.assert_array_equal(fine.step, [1, 32] * 3)  # 0.5 head -> 1 head; 16 neurons -> 32
    np.testing.assert_array_equal(fine.centre, grid.removed[np.arange(grid.n_layers), genome])
    assert removed_params(fine, centre_genome(fine)) == removed_params(grid, genome)


# ------------------------------------------------------------------------- mutation
@pytest.mark.parametrize("grid_fn", [lambda: make_grid(*_blocks(6)[:3], 0.5, 0.125, _blocks(6)[3]), _edge_grid, _hetero_grid])
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
    grid = _edge_grid()
    a = level_switch(7, centre_genome(grid), grid)
    b = level_switch(7, centre_genome(grid), grid)
    np.testing.assert_array_equal(a, b)
    one_block = LevelGrid(module_type=[0, 1], group_params=[1, 1], n_groups=[8, 8], centre=[4, 4], step=[1, 1])
    with pytest.raises(TyrjaxError, match="No level switch"):
        level_switch(0, centre_genome(one_block), one_block)


def test_mutation_registry_and_checks():
    grid = make_grid(*_blocks(4)[:3], 0.5, 0.125, _blocks(4)[3])

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


# ------------------------------------------------------------------------- evolution
def _noisy_fitness(c, grid, calls=None):
    """Separable cost plus noise that depends only on (genome, stage, generation)."""

    def fn(genomes, parent, stage, generation):
        if calls is not None:
            calls.append((stage, generation, genomes.copy(), parent.copy()))
        rem = grid.removed[np.arange(grid.n_layers)[None, :], genomes] * grid.group_params
        base = (rem * c).sum(axis=1)
        noise = np.array(
            [np.random.default_rng([stage, generation, *map(int, g)]).normal() for g in genomes]
        )
        return base + 0.1 * base.std() * noise

    return fn


def test_offspring_distinct_and_parent_rescored():
    grid = _edge_grid()
    c = np.random.default_rng(0).uniform(0.1, 1.0, grid.n_layers)
    calls = []
    cfg = SearchConfig(generations=6, offspring=24, stages=((24, 1), (6, 1), (2, 1)), seed=5)
    res = evolve(grid, _noisy_fitness(c, grid, calls), cfg)
    parents = [centre_genome(grid)] + [np.array(r.parent) for r in res.history]
    total = removed_params(grid, parents[0])
    by_gen = {}
    for stage, gen, genomes, parent in calls:
        by_gen.setdefault(gen, {})[stage] = genomes
        np.testing.assert_array_equal(parent, parents[gen])  # every stage is told the generation's parent
    assert sorted(by_gen) == list(range(6))
    for gen, stages in by_gen.items():
        parent = parents[gen]
        off = stages[0]
        assert off.shape == (24, grid.n_layers)
        assert len({row.tobytes() for row in off}) == 24  # no duplicates
        assert not any(np.array_equal(row, parent) for row in off)  # none equals the parent
        assert all(removed_params(grid, row) == total for row in off)
        assert stages[1].shape[0] == 6
        last = stages[2]
        assert last.shape[0] == 3 and np.array_equal(last[0], parent)  # parent + 2 finalists
        assert any(np.array_equal(parents[gen + 1], row) for row in last)
    # draw_offspring directly
    off = draw_offspring(generation_rng(1, 0), centre_genome(grid), grid, 50)
    assert len({r.tobytes() for r in off}) == 50


def test_too_few_distinct_offspring():
    grid = LevelGrid(module_type=[0, 0], group_params=[1, 1], n_groups=[8, 8], centre=[4, 4], step=[1, 1])
    with pytest.raises(TyrjaxError, match="distinct offspring"):
        draw_offspring(generation_rng(0, 0), centre_genome(grid), grid, 10)


def _optimum(grid, c):
    """Exact optimum of Σ c_l·removed_params_l with each class's level total fixed (greedy is exact:
    linear cost, equal per-step parameters inside a class, box constraints on the levels)."""
    g0 = centre_genome(grid)
    best = g0.copy()
    for _, _, members in switch_classes(grid):
        kmin = np.array([np.flatnonzero(grid.valid[l]).min() for l in members])
        kmax = np.array([np.flatnonzero(grid.valid[l]).max() for l in members])
        budget = int(g0[members].sum() - kmin.sum())
        lv = kmin.copy()
        for j in np.argsort(c[members]):  # cheapest layers take the most removal
            add = min(budget, kmax[j] - kmin[j])
            lv[j] += add
            budget -= add
        best[members] = lv
    rem = grid.removed[np.arange(grid.n_layers), best] * grid.group_params
    return best, float((rem * c).sum())


@pytest.mark.parametrize("grid_fn", [_edge_grid, _hetero_grid])
def test_evolve_finds_separable_optimum(grid_fn):
    grid = grid_fn()
    c = np.random.default_rng(42).uniform(0.1, 1.0, grid.n_layers)

    def fitness(genomes, parent, stage, generation):
        rem = grid.removed[np.arange(grid.n_layers)[None, :], genomes] * grid.group_params
        return (rem * c).sum(axis=1)

    opt_genome, opt = _optimum(grid, c)
    start = fitness(centre_genome(grid)[None], centre_genome(grid), 0, 0)[0]
    assert opt < start
    cfg = SearchConfig(generations=80, offspring=16, stages=((16, 1), (4, 1), (2, 1)), seed=1)
    res = evolve(grid, fitness, cfg)
    assert res.fitness == pytest.approx(opt, rel=1e-12)
    np.testing.assert_array_equal(res.genome, opt_genome)
    assert removed_params(grid, res.genome) == removed_params(grid, centre_genome(grid))
    fits = [r.fitness for r in res.history]
    assert all(b <= a for a, b in zip(fits, fits[1:]))  # elitism on a deterministic fitness


def test_reproducible_and_resumable(tmp_path):
    grid = _edge_grid()
    c = np.random.default_rng(3).uniform(0.1, 1.0, grid.n_layers)
    fit = _noisy_fitness(c, grid)
    cfg = SearchConfig(generations=8, offspring=12, stages=((12, 1), (4, 2), (2, 3)), seed=11)
    full = evolve(grid, fit, cfg)
    again = evolve(grid, fit, cfg)
    np.testing.assert_array_equal(full.genome, again.genome)
    assert full.fitness == again.fitness and full.history == again.history
    other = evolve(grid, fit, SearchConfig(generations=8, offspring=12, stages=((12, 1), (4, 2), (2, 3)), seed=12))
    assert other.history != full.history

    path = tmp_path / "state.json"

    class Interrupt(Exception):
        """Stands for a killed process."""

    def checkpoint(state):
        save_state(path, state)
        if state.generation == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        evolve(grid, fit, cfg, on_generation=checkpoint)
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temp files left behind
    assert json.loads(path.read_text())["generation"] == 3
    state = load_state(path)
    assert state.generation == 3 and len(state.history) == 3
    resumed = evolve(grid, fit, cfg, state=state)
    np.testing.assert_array_equal(resumed.genome, full.genome)
    assert resumed.fitness == full.fitness and resumed.history == full.history

    # Resuming with a different trajectory-defining config or grid is refused.
    with pytest.raises(TyrjaxError, match="same SearchConfig"):
        evolve(grid, fit, SearchConfig(generations=8, offspring=12, stages=((12, 1), (4, 2), (2, 3)), seed=0), state=state)
    with pytest.raises(TyrjaxError, match="different LevelGrid"):
        evolve(_hetero_grid(), fit, cfg, state=state)
    with pytest.raises(TyrjaxError, match="No search state"):
        load_state(tmp_path / "missing.json")


def test_config_validation():
    with pytest.raises(TyrjaxError, match="offspring"):
        SearchConfig(offspring=64)  # stages[0] scores 128
    with pytest.raises(TyrjaxError, match="must not increase"):
        SearchConfig(offspring=8, stages=((8, 1), (16, 1)))
    with pytest.raises(TyrjaxError):
        SearchConfig(stages=())
    grid = _edge_grid()
    with pytest.raises(TyrjaxError, match="one float per genome"):
        evolve(grid, lambda g, p, s, k: np.zeros(3), SearchConfig(generations=1, offspring=4, stages=((4, 1),)))
