"""The memory and time plan, on a model small enough to count by hand."""
import dataclasses

import pytest

from tyrjax.model.config import ModelConfig
from tyrjax.runs.plan import (MeshSpec, TyrRun, largest_forward, phase_peaks, pruner_flops, pruning_flops, supernet_disk_bytes,
                         tyr_flops, tyr_memory, tyr_seconds)

# Per block: q/k/v/o 4·4 + 4·2 + 4·2 + 4·4 = 48, MLP 3·4·8 = 96, norms 2·4 = 8 -> 152.
# Model: 2 blocks (304) + tied embedding 10·4 + final norm 4 -> 348.
CFG = ModelConfig(vocab_size=10, hidden_size=4, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=2,
                  intermediate_size=8, tie_word_embeddings=True)
MESH = MeshSpec("test", data=2, tensor=2, hbm_bytes=1e6, bf16_flops=1e12, fp32_flops=1e11)
RUN = TyrRun(calib_windows=4, window=3, weight_bytes=2, level_bytes=4, n_levels=3, topk=5, candidate_batch=2,
             stages=((4, 6), (2, 12)), generations=1, iterations=1, head_chunk=3, forward_windows=1)


def lines_by_item(lines):
    return {(line.phase, line.item.split(" (")[0]): line.bytes for line in lines}


def test_parameter_counts():
    assert CFG.attn_mlp_params() == 2 * (48 + 96)
    assert CFG.total_params() == 348


def test_memory_lines_counted_by_hand():
    """data=2, tensor=2: what tyrjax.parallel.sharding splits, and what it leaves whole."""
    got = lines_by_item(tyr_memory(CFG, MESH, RUN))
    # bf16. embed 10x4 split over tensor by vocab: 40; final norm 8; per layer (x2 layers): norms 8 + 8,
    # wq and wo 16 (2 heads over tensor=2: halved), wk and wv 16 (one KV head cannot be split), gate/up/down 32
    # (neurons over tensor: halved).
    assert got["teacher", "model weights"] == 40 + 8 + 2 * (8 + 8 + 16 + 16 + 16 + 16 + 32 + 32 + 32)
    assert got["supernet", "weights of one block"] == 8 + 8 + 16 + 16 + 16 + 16 + 32 + 32 + 32
    # widest input: max(o_proj's 2·2, down_proj's 8) = 8; its fp32 8×8 Gram with rows over data=2, as the
    # tokens were summed; the damped Gram and its inverse whole on every device
    assert got["supernet", "Gram of the widest input"] == 64 * 4 / 2
    assert got["supernet", "damped Gram, inverse of the widest input"] == 2 * 64 * 4
    # on a mesh each device prunes its levels one at a time, inverting the damped Gram for each: the 8x8
    # factor, inverse and refit matrix and an 8x4 weight, fp32
    assert got["supernet", "pruner state of one level at a time"] == (3 * 64 + 32) * 4
    # 4 windows x 3 tokens x d=4, fp32, windows over data=2
    assert got["supernet", "calibration stream"] == 4 * 3 * 4 * 4 / 2
    # one call runs both blocks (a level of a block is 48 fp32 weights + 10 mask bytes, far below the
    # per-call budget) for 2 candidates, split over data=2: o_proj levels 2x2x4x4 with heads over
    # tensor, down_proj levels 2x2x8x4 with neurons over tensor; fp32
    assert got["search", "supernet levels of one call"] == (2 * 2 * 4 * 4 + 2 * 2 * 8 * 4) * 4 / 2 / 2
    # one window (not split over data=2): 3 block inputs (2 + final) x 3 tokens x 4, bf16
    assert got["search", "parent's input of every block"] == 3 * 3 * 4 * 2
    # one window x 3-token chunk x top-5 rows of width 4, bf16, in the fitness step after the blocks
    assert got["search, head", "head rows gathered for one chunk of the student's top-k"] == 3 * 5 * 4 * 2


def test_fsdp_splits_weights_and_windows():
    fsdp = MeshSpec("fsdp", fsdp=4)
    got = lines_by_item(tyr_memory(CFG, fsdp, RUN))
    assert got["teacher", "model weights"] == 348 * 2 / 4  # every weight has the hidden size (4) as a dimension
    assert got["supernet", "calibration stream"] == 4 * 3 * 4 * 4 / 4


def test_supernet_disk_counted_by_hand():
    # per block: 3 levels x 48 weights x 4 bytes + 3 x (2 heads + 8 neurons) bool masks = 606
    # two blocks + the fp32 stream of 12 tokens x 4
    assert supernet_disk_bytes(CFG, RUN) == 2 * (3 * 48 * 4 + 3 * 10) + 12 * 4 * 4


def test_pruner_flops_counted_by_hand():
    # d_in 4, d_out 2, heads of 2 in one round (all 4 slots): inverse 7/3·64; round: G = 2·16·2 = 64,
    # OBS 2·4·4·(4+2) = 192; refit 64/3 + 4·16·2 = 128 + 64/3.
    assert pruner_flops(4, 2, group_size=2, rounds=1, n_levels=1) == pytest.approx(7 / 3 * 64 + 64 + 192 + 128 + 64 / 3)
    assert pruner_flops(4, 2, 2, 1, n_levels=3) - pruner_flops(4, 2, 2, 1, n_levels=1) == pytest.approx(
        2 * (64 + 192 + 128 + 64 / 3))


def test_search_flops_counted_by_hand():
    # one block, one token: 2·(48 + 96) + attention 4·3·4 = 336; candidate forward with a top-5 head:
    # 2·336 + 2·4·5 = 712; the parent's prefix pass 2·336 = 672.
    # stage 1: 4 candidates x 6 tokens + parent pass; stage 2: 2 finalists + re-scored parent on 12 tokens.
    expected = 4 * 6 * 712 + 6 * 672 + 3 * 12 * 712 + 12 * 672
    assert tyr_flops(CFG, RUN)["search"] == expected


def test_pruner_time_divides_levels_over_the_level_axis():
    one, three = MeshSpec("one"), MeshSpec("three", data=3)
    fp32 = one.fp32_flops * RUN.utilisation
    assert tyr_seconds(CFG, one, RUN)["local pruner (fp32)"] == pytest.approx(
        (pruning_flops(CFG, 3) + pruning_flops(CFG, 1)) / fp32)
    assert tyr_seconds(CFG, three, RUN)["local pruner (fp32)"] == pytest.approx(2 * pruning_flops(CFG, 1) / fp32)


def test_largest_forward_is_the_last_that_fits():
    run = dataclasses.replace(RUN, stages=((4, 6), (2, 96)))  # the last stage holds 96 / 3 = 32 windows
    peak = {b: max(phase_peaks(tyr_memory(CFG, MESH, dataclasses.replace(run, forward_windows=b)))[p]
                   for p in ("teacher", "search")) for b in (1, 2, 4, 8, 16, 32)}
    between = dataclasses.replace(MESH, hbm_bytes=(peak[4] + peak[8]) / 2 / 0.9)
    assert largest_forward(CFG, between, run) == 4
    assert largest_forward(CFG, dataclasses.replace(MESH, hbm_bytes=1e12), run) == 32
    assert largest_forward(CFG, dataclasses.replace(MESH, hbm_bytes=peak[1] / 2), run) == 0
