"""tyrjax.tyr.search.evolution: the (1+λ) search with multi-step selection, resumable and seeded."""
import json
import os

import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search import (
    LevelGrid,
    SearchConfig,
    centre_genome,
    draw_offspring,
    evolve,
    generation_rng,
    load_state,
    removed_params,
    save_state,
)

from search_fixtures import edge_grid, hetero_grid, noisy_fitness, separable_optimum


def test_offspring_distinct_and_parent_rescored():
    grid = edge_grid()
    c = np.random.default_rng(0).uniform(0.1, 1.0, grid.n_layers)
    calls = []
    cfg = SearchConfig(generations=6, offspring=24, stages=((24, 1), (6, 1), (2, 1)), seed=5)
    res = evolve(grid, noisy_fitness(c, grid, calls), cfg)
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


@pytest.mark.parametrize("grid_fn", [edge_grid, hetero_grid])
def test_evolve_finds_separable_optimum(grid_fn):
    grid = grid_fn()
    c = np.random.default_rng(42).uniform(0.1, 1.0, grid.n_layers)

    def fitness(genomes, parent, stage, generation):
        rem = grid.removed[np.arange(grid.n_layers)[None, :], genomes] * grid.group_params
        return (rem * c).sum(axis=1)

    opt_genome, opt = separable_optimum(grid, c)
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
    grid = edge_grid()
    c = np.random.default_rng(3).uniform(0.1, 1.0, grid.n_layers)
    fit = noisy_fitness(c, grid)
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
        evolve(hetero_grid(), fit, cfg, state=state)
    with pytest.raises(TyrjaxError, match="No search state"):
        load_state(tmp_path / "missing.json")


def test_config_validation():
    with pytest.raises(TyrjaxError, match="offspring"):
        SearchConfig(offspring=64)  # stages[0] scores 128
    with pytest.raises(TyrjaxError, match="must not increase"):
        SearchConfig(offspring=8, stages=((8, 1), (16, 1)))
    with pytest.raises(TyrjaxError):
        SearchConfig(stages=())
    grid = edge_grid()
    with pytest.raises(TyrjaxError, match="one float per genome"):
        evolve(grid, lambda g, p, s, k: np.zeros(3), SearchConfig(generations=1, offspring=4, stages=((4, 1),)))
