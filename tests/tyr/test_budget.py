"""--sparsity is what the compact model loses: KV heads counted, every structured method on target."""
import json

import numpy as np
import pytest

import tyrjax
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, init_random_params, kept_layout
from tyrjax.tyr.baselines import flap_select, structured_baseline
from tyrjax.tyr.genome import split
from tyrjax.tyr.budget import (KVLedger, freed_kv_heads, group_params, kv_head_params, neuron_params,
                               query_head_params, removed_parts, sparsity_report)
from tyrjax.tyr.pipeline import TyrConfig, distribution_selection, initial_grid, run_tyr, uniform_selection
from tyrjax.tyr.search.levels import centre_genome, removed_params
from tyrjax.tyr.search.mutation import level_switch

TARGETS = (0.25, 0.5)
TOLERANCE = 0.005  # half a point of the attention+MLP parameters


@pytest.fixture(scope="module")
def default_model():
    return tyrjax.load_model()


def compact_cfg(cfg: ModelConfig, head: np.ndarray, ffn: np.ndarray) -> ModelConfig:
    """The compact model's config under these masks, without building its weights."""
    layouts = [kept_layout(h, cfg.group_size) for h in np.asarray(head, bool)]
    return cfg.replace(layer_heads=tuple(len(lay[0]) for lay in layouts),
                       layer_kv_heads=tuple(len(lay[1]) for lay in layouts),
                       layer_kv_map=tuple(lay[2] for lay in layouts),
                       layer_ffn=tuple(int(n) for n in np.asarray(ffn, bool).sum(1)))


def achieved(cfg: ModelConfig, head: np.ndarray, ffn: np.ndarray) -> float:
    return 1 - compact_cfg(cfg, head, ffn).attn_mlp_params() / cfg.attn_mlp_params()


# --- counting the compact model's parts ----------------------------------------------------
GQA = ModelConfig(vocab_size=32, hidden_size=16, n_layers=4, n_heads=6, n_kv_heads=2, head_dim=4, intermediate_size=24)
ATTENTION = ("wq", "bq", "wo")
KV = ("wk", "wv", "bk", "bv")
MLP = ("w_gate", "w_up", "w_down")


def sizes(layers, names) -> int:
    return sum(int(np.prod(p[k].shape)) for p in layers for k in names if k in p)


@pytest.mark.parametrize("bias", [False, True])
def test_removed_parts_count_the_compact_arrays(bias):
    cfg = GQA.replace(attention_bias=bias)
    params = init_random_params(cfg, 0)
    head = np.array([[1, 1, 1, 1, 1, 1],   # nothing removed
                     [0, 0, 0, 1, 1, 1],   # KV head 0 freed
                     [0, 1, 0, 0, 0, 0],   # KV head 1 freed, 0 kept by one query head
                     [0, 0, 0, 0, 0, 0]], bool)  # both freed
    ffn = np.random.default_rng(0).random((4, 24)) < 0.6
    dense, _ = compact_from_masked(params, cfg)
    compact, ccfg = compact_from_masked(params, cfg, head, ffn)
    parts = removed_parts(cfg, ccfg)
    for part, names in (("query_heads", ATTENTION), ("kv_heads", KV), ("neurons", MLP)):
        assert parts[part] == sizes(dense["layers"], names) - sizes(compact["layers"], names), part
    assert parts["kv_heads"] == 4 * kv_head_params(cfg)
    assert sum(freed_kv_heads(h, cfg.group_size) for h in head) == 4
    assert parts["added_biases"] == 0
    everything = ATTENTION + KV + MLP
    assert sizes(dense["layers"], everything) == cfg.attn_mlp_params()
    assert sizes(compact["layers"], everything) == ccfg.attn_mlp_params()
    report = sparsity_report(cfg, ccfg, 0.5)
    assert report["achieved"] == round(1 - sizes(compact["layers"], everything) / cfg.attn_mlp_params(), 6)
    assert report["achieved"] == pytest.approx(sum(report["parts"].values()), abs=1e-5)


def test_biases_a_method_adds_count_against_the_sparsity():
    cfg = GQA
    ccfg = compact_cfg(cfg, np.ones((4, 6), bool), np.ones((4, 24), bool)).replace(o_bias=True, down_bias=True)
    report = sparsity_report(cfg, ccfg, 0.1)
    added = 2 * cfg.n_layers * cfg.hidden_size
    assert removed_parts(cfg, ccfg)["added_biases"] == added
    assert report["achieved"] == round(-added / cfg.attn_mlp_params(), 6) == -report["parts"]["added_biases"]


def test_a_head_with_its_own_kv_head_is_priced_with_it():
    mha = GQA.replace(n_kv_heads=6)
    assert group_params(mha) == (query_head_params(mha) + kv_head_params(mha), neuron_params(mha))
    assert group_params(GQA) == (query_head_params(GQA), neuron_params(GQA))
    ledger = KVLedger(mha, 4)
    assert ledger.mlp_removal(np.zeros(6, bool), 8) == 8 and ledger.owed == 0  # nothing to settle


# --- the ledger ------------------------------------------------------------------------------
def test_ledger_gives_back_the_nearest_whole_steps_and_carries_the_rest():
    cfg = GQA  # a KV head: 128 parameters; a step of 2 neurons: 96
    ledger = KVLedger(cfg, 2)
    one_freed = np.array([0, 0, 0, 1, 1, 1], bool)
    assert ledger.mlp_removal(one_freed, 12) == 10 and ledger.owed == 128 - 96  # 128/96 rounds to 1 step
    assert ledger.mlp_removal(np.ones(6, bool), 12) == 12 and ledger.owed == 32  # 32/96 rounds to 0
    assert ledger.mlp_removal(np.zeros(6, bool), 12) == 6 and ledger.owed == 32 + 256 - 288
    assert ledger.mlp_removal(np.zeros(6, bool), 0) == 0 and ledger.owed == 256  # nothing left to give back


# --- Týr and uniform: the search's budget and the settlement on the default model -------------
def head_masks(cfg: ModelConfig, counts: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """Keep masks removing `counts[b]` query heads per block: at random, whole KV groups first
    (the most KV heads freed) or spread over the groups (the fewest)."""
    H, G = cfg.n_heads, cfg.group_size
    order = {"random": lambda: rng.permutation(H),
             "grouped": lambda: np.arange(H),
             "spread": lambda: np.arange(H).reshape(-1, G).T.ravel()}[how]
    keep = np.ones((len(counts), H), bool)
    for b, n in enumerate(counts):
        keep[b, order()[:n]] = False
    return keep


def settled_masks(cfg: ModelConfig, counts: np.ndarray, how: str, multiple: int, seed: int):
    """Head masks removing the genome's head counts and neuron masks with the ledger's counts."""
    rng = np.random.default_rng(seed)
    head = head_masks(cfg, split(counts)[0], how, rng)
    ledger = KVLedger(cfg, multiple)
    ffn = np.ones((cfg.n_layers, cfg.intermediate_size), bool)
    for b in range(cfg.n_layers):
        ffn[b, rng.permutation(cfg.intermediate_size)[:ledger.mlp_removal(head[b], int(split(counts)[1][b]))]] = False
    return head, ffn


@pytest.mark.parametrize("target", TARGETS)
def test_tyr_genomes_deliver_the_target_whatever_heads_the_pruner_picks(default_model, target):
    cfg, tcfg = default_model.cfg, TyrConfig()
    grid = initial_grid(cfg, target, tcfg)
    centre = centre_genome(grid)
    genomes = [centre] + [level_switch(seed, centre, grid, 4) for seed in range(6)]
    genomes.append(level_switch(7, genomes[-1], grid, 4))
    rows = np.arange(grid.n_layers)
    total = cfg.attn_mlp_params()
    # One neuron step of rounding in the ledger, half the finest granule in the centres.
    bound = (tcfg.mlp_multiple * neuron_params(cfg)) / total
    freed = set()
    for i, genome in enumerate(genomes):
        assert removed_params(grid, genome) == removed_params(grid, centre)  # switches keep the total
        counts = grid.removed[rows, genome]
        for how in ("random", "grouped", "spread"):
            head, ffn = settled_masks(cfg, counts, how, tcfg.mlp_multiple, seed=i)
            np.testing.assert_array_equal((~head).sum(1), split(counts)[0])
            freed.add(sum(freed_kv_heads(h, cfg.group_size) for h in head))
            got = achieved(cfg, head, ffn)
            assert abs(got - target) <= min(bound, TOLERANCE), (i, how, got)
    assert len(freed) > 2  # the head choices freed different numbers of KV heads


# --- the baselines on the default model --------------------------------------------------------
@pytest.fixture(scope="module")
def short_windows(default_model):
    return np.random.default_rng(0).integers(0, default_model.cfg.vocab_size, (2, 16))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["magnitude", "wanda-sp"])
def test_uniform_baselines_deliver_the_target(default_model, short_windows, method, target):
    cfg = default_model.cfg
    _, cfg_out, head, ffn, info = structured_baseline(default_model.params, cfg, short_windows, target, method,
                                                      progress=False)
    got = achieved(cfg, head, ffn)
    assert abs(got - target) <= TOLERANCE
    assert info["achieved_sparsity"] == pytest.approx(got)
    np.testing.assert_array_equal((~head).sum(1), split(initial_grid(cfg, target, TyrConfig()).centre)[0])


@pytest.mark.parametrize("target", TARGETS)
def test_flap_selection_delivers_the_target(default_model, target):
    cfg = default_model.cfg
    rng = np.random.default_rng(int(target * 100))
    added = 2 * cfg.n_layers * cfg.hidden_size  # the biases FLAP adds: o_proj's and down_proj's
    budget = target * cfg.attn_mlp_params() + added
    for z_heads, z_neurons in [(rng.standard_normal((cfg.n_layers, cfg.n_heads)),
                                rng.standard_normal((cfg.n_layers, cfg.intermediate_size))) for _ in range(3)]:
        head, ffn, _ = flap_select(cfg, z_heads, z_neurons, budget)
        ccfg = compact_cfg(cfg, head, ffn).replace(o_bias=True, down_bias=True)
        assert abs(sparsity_report(cfg, ccfg, target)["achieved"] - target) <= TOLERANCE


# --- the pipeline settles on a tiny GQA model ----------------------------------------------------
TINY = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
TINY_TCFG = TyrConfig(iterations=1, generations=2, offspring=4, stages=((4, 64), (2, 128), (1, 256)), topk=16,
                      candidate_batch=4, mlp_multiple=4, interval=0.25)
TINY_CALIB = np.random.default_rng(0).integers(0, 64, (8, 32))


def tiny_bound() -> float:
    return TINY_TCFG.mlp_multiple * neuron_params(TINY) / TINY.attn_mlp_params()


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_uniform_selection_settles_kv_heads_in_the_mlps(target):
    params = init_random_params(TINY, 0, scale=0.2)
    selection = uniform_selection(params, TINY, TINY_CALIB, target, TINY_TCFG, progress=False)
    head, ffn = selection.masks()
    centre = initial_grid(TINY, target, TINY_TCFG).centre
    np.testing.assert_array_equal((~head).sum(1), split(centre)[0])
    assert abs(achieved(TINY, head, ffn) - target) <= tiny_bound()
    if target == 0.7:  # heads 3 of 4 in every block: a KV head is freed in each, and paid for
        assert all(freed_kv_heads(h, TINY.group_size) == 1 for h in head)
        assert np.all((~ffn).sum(1) < split(centre)[1])


def test_tyr_result_delivers_the_target():
    params = init_random_params(TINY, 0, scale=0.2)
    result = run_tyr(params, TINY, TINY_CALIB, 0.6, TINY_TCFG, progress=False)
    assert abs(achieved(TINY, result.head_mask, result.ffn_mask) - 0.6) <= tiny_bound()


def test_a_resumed_settled_build_equals_a_whole_one(tmp_path):
    """A build resumed after two of three blocks replays the ledger over the stored blocks. The
    interrupted store is the whole build's first two blocks: those of the model's first two blocks."""
    import shutil

    params = init_random_params(TINY, 0, scale=0.2)
    # Blocks 0 and 1 free a KV head each (owed 2·512 − 3·384 = −128 after them), block 2 frees
    # two: 2 steps given back there after the replay, 3 without it.
    removed = np.array([3, 32, 3, 32, 4, 32])

    def build(p, cfg, counts, store):
        return distribution_selection(p, cfg, TINY_CALIB, counts, TINY_TCFG, progress=False, store_dir=store,
                                      settle_kv=True).masks()

    whole = build(params, TINY, removed, tmp_path / "whole")
    two = dict(params, layers={k: v[:2] for k, v in params["layers"].items()})
    build(two, TINY.replace(n_layers=2), removed[:4], tmp_path / "two")
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    key = json.loads((tmp_path / "whole" / "supernet.json").read_text())["key"]
    (tmp_path / "resumed" / "supernet.json").write_text(json.dumps({"key": key, "completed": 2}))
    resumed = build(params, TINY, removed, tmp_path / "resumed")
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal((~whole[1]).sum(1), [28, 24, 24])
    plain = distribution_selection(params, TINY, TINY_CALIB, removed, TINY_TCFG, progress=False).masks()
    np.testing.assert_array_equal((~plain[1]).sum(1), split(removed)[1])  # a saved distribution is applied as is
    assert not np.array_equal(plain[1], whole[1])
