"""Level grids and fitness functions shared by the tests of tyrjax.tyr.search."""
import numpy as np

from tyrjax.tyr.search import (
    LevelGrid,
    centre_genome,
    switch_classes,
)


def grid_arrays(n_blocks, heads=8, neurons=256, head_params=100, neuron_params=30):
    n_groups = [heads, neurons] * n_blocks
    group_params = [head_params, neuron_params] * n_blocks
    module_type = [0, 1] * n_blocks
    group_multiple = [1, 32] * n_blocks
    return n_groups, group_params, module_type, group_multiple


def edge_grid():
    """6 blocks, centres spread so several layers have invalid levels at either end."""
    return LevelGrid(
        module_type=[0, 1] * 6,
        group_params=[100, 30] * 6,
        n_groups=[8, 256] * 6,
        centre=[1, 224, 7, 32, 4, 128, 0, 256, 8, 0, 3, 96],
        step=[1, 32] * 6,
    )


def hetero_grid():
    """Attention layers in two per-step parameter classes (step 1 vs step 2), MLP with two classes too."""
    return LevelGrid(
        module_type=[0, 0, 0, 0, 0, 1, 1, 1, 1],
        group_params=[100, 100, 100, 100, 100, 30, 30, 60, 60],
        n_groups=[8, 8, 16, 16, 16, 256, 256, 128, 128],
        centre=[4, 4, 8, 8, 8, 128, 128, 64, 64],
        step=[1, 1, 2, 2, 2, 32, 32, 16, 16],
    )


# ------------------------------------------------------------------------- evolution
def noisy_fitness(c, grid, calls=None):
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


def separable_optimum(grid, c):
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
