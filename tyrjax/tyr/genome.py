"""Týr's genome: one sparsity level per searchable layer, block by block, attention then MLP.

The search (`tyr.search`) sees a genome as a flat int vector over the searchable layers, each
with its module type (`ATTENTION`, `MLP`); this module is the one place that knows the order
of those layers in a model: block b's attention is searchable layer `layer_index(b, ATTENTION)`,
its MLP `layer_index(b, MLP)`. Every per-searchable-layer array (levels, groups removed, group
counts of a `LevelGrid`) has this order; `interleave` builds one from per-block values and
`split` takes one apart. `Genome` names the levels of a candidate (or a batch of them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tyrjax.errors import TyrjaxError
from tyrjax.tyr.search.levels import ATTENTION, MLP

KINDS = (ATTENTION, MLP)  # a block's searchable layers, in genome order


def n_searchable(n_blocks: int) -> int:
    """Searchable layers of a model with `n_blocks` blocks."""
    return len(KINDS) * n_blocks


def layer_index(block: int, kind: int) -> int:
    """The searchable layer of block `block`'s attention (`kind=ATTENTION`) or MLP (`kind=MLP`)."""
    if kind not in KINDS:
        raise TyrjaxError(f"layer kind {kind!r} is not ATTENTION ({ATTENTION}) or MLP ({MLP})")
    return len(KINDS) * block + KINDS.index(kind)


def block_of(layer: Any) -> Any:
    """The block a searchable layer (or an array of them) belongs to."""
    return np.asarray(layer) // len(KINDS)


def interleave(attention: Any, mlp: Any) -> np.ndarray:
    """Per-block attention and MLP values `(..., L)` as one per-searchable-layer array `(..., 2L)`."""
    a, m = np.asarray(attention), np.asarray(mlp)
    if a.shape != m.shape or a.ndim == 0:
        raise TyrjaxError(f"interleave: attention values {a.shape} and MLP values {m.shape} need one shape (..., blocks)")
    out = np.empty((*a.shape[:-1], n_searchable(a.shape[-1])), np.result_type(a, m))
    attention_view, mlp_view = split(out)
    attention_view[...] = a
    mlp_view[...] = m
    return out


def split(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """A per-searchable-layer array `(..., 2L)` as views of its attention and MLP values `(..., L)`."""
    v = np.asarray(values)
    if v.ndim == 0 or v.shape[-1] % len(KINDS):
        raise TyrjaxError(f"expected one value per searchable layer ({len(KINDS)} per block) on the last axis; "
                          f"got shape {v.shape}")
    per_block = v.reshape(*v.shape[:-1], -1, len(KINDS))
    return per_block[..., KINDS.index(ATTENTION)], per_block[..., KINDS.index(MLP)]


@dataclass(frozen=True, eq=False)
class Genome:
    """The levels of one candidate `(2L,)` or of a batch `(C, 2L)`, named by block and kind."""

    levels: np.ndarray

    def __post_init__(self) -> None:
        levels = np.asarray(self.levels)
        if levels.size and not np.issubdtype(levels.dtype, np.integer):
            raise TyrjaxError(f"a genome holds integer level indices; got dtype {levels.dtype}")
        split(levels)  # checks the layout
        object.__setattr__(self, "levels", levels)

    @classmethod
    def from_parts(cls, attention: Any, mlp: Any) -> Genome:
        """The genome whose block b has attention level `attention[..., b]` and MLP level `mlp[..., b]`."""
        return cls(interleave(attention, mlp))

    @property
    def n_blocks(self) -> int:
        return self.levels.shape[-1] // len(KINDS)

    @property
    def attention(self) -> np.ndarray:
        """Each block's attention level `(..., L)`."""
        return split(self.levels)[0]

    @property
    def mlp(self) -> np.ndarray:
        """Each block's MLP level `(..., L)`."""
        return split(self.levels)[1]

    def layer(self, block: int, kind: int) -> np.ndarray:
        """The level of block `block`'s attention or MLP (one per candidate of a batch)."""
        return self.levels[..., layer_index(block, kind)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.levels if dtype is None else self.levels.astype(dtype)
