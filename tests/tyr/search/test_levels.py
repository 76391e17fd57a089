"""tyrjax.tyr.search.levels: the level grid, its centres, recentring and parameter counts."""
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search import (
    LevelGrid,
    centre_genome,
    initial_centres,
    level_switch,
    make_grid,
    recentre,
    removed_params,
    sparsity,
)

from search_fixtures import grid_arrays, edge_grid


# ----------------------------------------------------------------------------- grid
def test_make_grid_values():
    n, gp, mt, mult = grid_arrays(2, heads=32, neurons=8192)
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
    e = edge_grid()
    with pytest.raises(TyrjaxError, match="invalid level"):
        removed_params(e, np.full(12, 0))
    with pytest.raises(TyrjaxError, match="shape"):
        removed_params(g, [4, 4, 4])


def test_initial_centres():
    n, gp, mt, mult = grid_arrays(4)
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
    n, gp, mt, mult = grid_arrays(3)
    grid = make_grid(n, gp, mt, 0.5, 0.125, mult)
    genome = level_switch(3, centre_genome(grid), grid)
    fine = recentre(grid, genome, 0.0625, mult)
    np.testing.assert_array_equal(fine.step, [1, 32] * 3)  # 0.5 head -> 1 head; 16 neurons -> 32
    np.testing.assert_array_equal(fine.centre, grid.removed[np.arange(grid.n_layers), genome])
    assert removed_params(fine, centre_genome(fine)) == removed_params(grid, genome)
