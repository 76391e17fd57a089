"""What a structured method removes, in parameters, and how the budget is kept exact.

`--sparsity S` means the same for every structured method: the compact model no longer has
the fraction S of the dense model's attention + MLP parameters. The compact model loses
three parts: query heads (q columns, bias, o rows), neurons (gate/up columns, down rows) and
key/value heads, which go at compaction when every query head of their group is gone
(`decoder.kept_layout`).

Why KV heads are settled, not priced. Which query heads go is the local pruner's choice, made
from calibration data, so removing r of a layer's H = K·G query heads (K KV heads of G query
heads each) frees anywhere between max(0, r − K(G−1)) and ⌊r/G⌋ KV heads. No price per
removed query head is exact for all choices, and pricing the layer's level by the heads it
removes would make a level switch (one step up in one layer, one step down in another of the
same type) move 0 or 1 KV head's parameters: the search's constant total would break.
So the level grid, its centres, the level switches and the distribution the final re-prune
receives count query heads and neurons only (`group_params`), linear in the counts: every
switch moves exactly one step's parameters between two layers of one type, and the centres
remove S of the attention + MLP total with those parts alone. The KV heads are paid for
when they are known: a block's heads are chosen before its MLP, so when a block's
heads free KV heads, its MLP removes fewer neurons, in whole multiples of the neuron step,
worth the KV heads' parameters (`KVLedger`); the rounding remainder carries to the next
block. The compact model then lands within half a neuron step (plus the centres' own
rounding) of S. Where G = 1 every removed query head frees its own KV head, a fixed price:
it is part of the head's cost and nothing is settled.

Týr's final re-prune and uniform run their one-level supernet with a ledger, and so do
Wanda-sp and magnitude over the same centres. FLAP ranks heads and neurons globally and
prices each KV head with the last of its query heads to go, which is exact for it.
"""
from __future__ import annotations

import numpy as np

from tyrjax.model.config import ModelConfig

__all__ = ["query_head_params", "kv_head_params", "neuron_params", "group_params", "freed_kv_heads", "KVLedger",
           "removed_parts", "sparsity_report"]


def query_head_params(cfg: ModelConfig) -> int:
    """Parameters of one query head: its q columns (and bias) and its o rows."""
    return 2 * cfg.hidden_size * cfg.head_dim + (cfg.head_dim if cfg.attention_bias else 0)


def kv_head_params(cfg: ModelConfig) -> int:
    """Parameters of one key/value head: its k and v columns (and biases)."""
    return 2 * cfg.hidden_size * cfg.head_dim + (2 * cfg.head_dim if cfg.attention_bias else 0)


def neuron_params(cfg: ModelConfig) -> int:
    """Parameters of one MLP neuron: its gate and up columns and its down row."""
    return 3 * cfg.hidden_size


def group_params(cfg: ModelConfig) -> tuple[int, int]:
    """The budget's price of one removed query head and of one removed neuron.

    A query head's price includes its KV head only where each KV head serves one query head
    (G = 1); otherwise the KV heads it frees are settled by `KVLedger`."""
    head = query_head_params(cfg) + (kv_head_params(cfg) if cfg.group_size == 1 else 0)
    return head, neuron_params(cfg)


def freed_kv_heads(head_keep: np.ndarray, group_size: int) -> int:
    """KV heads of one layer whose query heads are all removed (`head_keep (H,)`, True = kept)."""
    keep = np.asarray(head_keep, bool)
    return int((~keep.reshape(-1, group_size).any(axis=1)).sum())


class KVLedger:
    """Block by block, the MLP removals that pay for the KV heads freed by the blocks' heads.

    `owed` is the parameters of the unpriced KV heads freed so far less the neuron parameters
    given back so far; it stays within half a step (`multiple` neurons) of zero while the MLPs
    have neurons to give back. One ledger serves one pass over the blocks, in order."""

    def __init__(self, cfg: ModelConfig, multiple: int):
        self.group_size = cfg.group_size
        self.kv_params = kv_head_params(cfg) if cfg.group_size > 1 else 0  # G = 1: priced per head
        self.neuron_params = neuron_params(cfg)
        self.n_neurons = cfg.intermediate_size
        self.multiple = int(multiple)
        self.owed = 0

    def mlp_removal(self, head_keep: np.ndarray, planned: int) -> int:
        """Neurons this block's MLP removes: `planned` less the whole steps nearest to what is
        owed once the KV heads freed by `head_keep` (this block's kept query heads) are added."""
        owed = self.owed + freed_kv_heads(head_keep, self.group_size) * self.kv_params
        step = self.multiple * self.neuron_params
        back = (2 * owed + step) // (2 * step)  # nearest whole number of steps, ties up
        removed = min(max(int(planned) - back * self.multiple, 0), self.n_neurons)
        self.record(head_keep, planned, removed)
        return removed

    def record(self, head_keep: np.ndarray, planned: int, removed: int) -> None:
        """Account for a block whose MLP removed `removed` neurons where `planned` were planned."""
        self.owed += freed_kv_heads(head_keep, self.group_size) * self.kv_params
        self.owed -= (int(planned) - int(removed)) * self.neuron_params


def removed_parts(cfg: ModelConfig, compact_cfg: ModelConfig) -> dict[str, int]:
    """Parameters the compact model no longer has, per part, and the biases it gained (FLAP's
    compensation): `dense − query_heads − kv_heads − neurons + added_biases = compact`."""
    L = cfg.n_layers
    removed = {
        "query_heads": sum(cfg.n_heads - compact_cfg.heads(i) for i in range(L)) * query_head_params(cfg),
        "kv_heads": sum(cfg.n_kv_heads - compact_cfg.kv_heads(i) for i in range(L)) * kv_head_params(cfg),
        "neurons": sum(cfg.intermediate_size - compact_cfg.ffn(i) for i in range(L)) * neuron_params(cfg),
    }
    kept = cfg.attn_mlp_params() - sum(removed.values())
    return {**removed, "added_biases": compact_cfg.attn_mlp_params() - kept}


def sparsity_report(cfg: ModelConfig, compact_cfg: ModelConfig, target: float | None) -> dict:
    """`{target, achieved, parts: {query_heads, kv_heads, neurons, added_biases}}` of a structured result.

    Every value is a fraction of the dense attention + MLP parameters (rounded to 6 digits):
    `achieved = 1 − compact / dense = query_heads + kv_heads + neurons − added_biases`."""
    total = cfg.attn_mlp_params()
    parts = removed_parts(cfg, compact_cfg)
    return {
        "target": None if target is None else float(target),
        "achieved": round(1 - compact_cfg.attn_mlp_params() / total, 6),
        "parts": {name: round(n / total, 6) for name, n in parts.items()},
    }
