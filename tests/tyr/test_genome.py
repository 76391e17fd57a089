"""The genome's layout: block by block, attention then MLP, and the typed view of it."""
import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.tyr.fitness import first_changed_block
from tyrjax.tyr.genome import Genome, block_of, interleave, layer_index, n_searchable, split
from tyrjax.tyr.pipeline import layer_arrays, removed_groups
from tyrjax.tyr.search.levels import ATTENTION, MLP

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)


def test_layout_is_block_by_block_attention_first():
    assert [layer_index(b, k) for b in range(3) for k in (ATTENTION, MLP)] == list(range(6))
    assert block_of(np.arange(6)).tolist() == [0, 0, 1, 1, 2, 2] and n_searchable(3) == 6
    values = interleave([1, 2, 3], [10, 20, 30])
    assert values.tolist() == [1, 10, 2, 20, 3, 30]
    attention, mlp = split(values)
    assert attention.tolist() == [1, 2, 3] and mlp.tolist() == [10, 20, 30]
    batch = interleave(np.arange(6).reshape(2, 3), -np.arange(6).reshape(2, 3))
    assert batch.shape == (2, 6) and batch[1].tolist() == [3, -3, 4, -4, 5, -5]
    np.testing.assert_array_equal(split(batch)[1], -np.arange(6).reshape(2, 3))


def test_split_gives_views():
    values = np.zeros(4, np.int64)
    attention, _ = split(values)
    attention[1] = 7
    assert values.tolist() == [0, 0, 7, 0]


def test_genome_names_each_blocks_levels():
    g = Genome.from_parts([0, 1, 2], [8, 7, 6])
    assert g.levels.tolist() == [0, 8, 1, 7, 2, 6] and g.n_blocks == 3
    assert g.attention.tolist() == [0, 1, 2] and g.mlp.tolist() == [8, 7, 6]
    assert g.layer(1, ATTENTION) == 1 and g.layer(2, MLP) == 6
    np.testing.assert_array_equal(np.asarray(g), g.levels)
    batch = Genome(np.stack([g.levels, g.levels[::-1]]))
    assert batch.n_blocks == 3 and batch.layer(0, MLP).tolist() == [8, 2]
    assert batch.attention[:, 0].tolist() == [0, 6]


def test_bad_genomes_are_refused():
    with pytest.raises(TyrjaxError, match="one value per searchable layer"):
        Genome(np.zeros(5, np.int64))
    with pytest.raises(TyrjaxError, match="integer level indices"):
        Genome(np.zeros(4))
    with pytest.raises(TyrjaxError, match="one shape"):
        interleave([1, 2], [1])
    with pytest.raises(TyrjaxError, match="not ATTENTION"):
        layer_index(0, 2)


def test_the_models_searchable_layers_follow_the_layout():
    arrays = layer_arrays(CFG, mlp_multiple=4)
    types = split(arrays["module_type"])
    assert (types[0] == ATTENTION).all() and (types[1] == MLP).all()
    assert split(arrays["n_groups"])[0].tolist() == [4] * 3 and split(arrays["n_groups"])[1].tolist() == [64] * 3
    assert split(arrays["group_multiple"])[1].tolist() == [4] * 3
    head = np.ones((3, 4), bool)
    ffn = np.ones((3, 64), bool)
    head[1, :2] = False
    ffn[2, :5] = False
    removed = removed_groups(head, ffn)
    assert removed.dtype == np.int64 and removed.tolist() == [0, 0, 2, 0, 0, 5]


def test_first_changed_block():
    parent = np.array([4, 4, 4, 4, 4, 4])
    genomes = np.array([[4, 4, 4, 4, 4, 4], [4, 4, 4, 3, 5, 4], [3, 4, 4, 4, 4, 5], [4, 4, 4, 4, 4, 3]])
    assert first_changed_block(genomes, parent).tolist() == [3, 1, 0, 2]
