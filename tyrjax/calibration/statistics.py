"""Block-by-block calibration: the inputs of every linear layer of one block, and their statistics.

Pruners work one block at a time: the calibration hidden states `x (n_windows, T, d)` enter
block l, the inputs of its linear layers are captured, statistics are accumulated in fp32
(Gram matrices `H = XᵀX`, norms, means, variances), the block is pruned, and the pruned
block's output becomes the next block's input. Only one block's activations are alive at a
time, so memory does not grow with depth.

The functions here are shared by the structured (Týr and its baselines) and the unstructured
(SparseGPT, Wanda, SDS) pipelines.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.layers import attention_heads, attention_output, mlp_hidden, mlp_output, rms_norm, rope_tables
from tyrjax.model.decoder import Params, embed
from tyrjax.parallel.sharding import GRAM, HEADS_OUT, HIDDEN, MLP_HIDDEN, REPLICATED, batch_axes, put_axes, sharded_call
from tyrjax.model.axes import axes_of_layer

# Linear layers of a block, grouped by the input they read.
QKV = ("wq", "wk", "wv")
GATE_UP = ("w_gate", "w_up")


class InputStats(NamedTuple):
    """fp32 statistics of a linear layer's inputs over all calibration tokens."""

    gram: jax.Array  # (d_in, d_in) XᵀX
    total: jax.Array  # (d_in,) Σ x
    n_tokens: int

    @property
    def sq_norm(self) -> jax.Array:
        """Σ x² per input channel (Wanda's ||X_j||² is its square root)."""
        return jnp.diagonal(self.gram)

    @property
    def mean(self) -> jax.Array:
        return self.total / self.n_tokens

    @property
    def var(self) -> jax.Array:
        """Per-channel variance (FLAP's fluctuation metric)."""
        return jnp.maximum(self.sq_norm / self.n_tokens - self.mean**2, 0.0)



def embed_windows(params: Params, windows: np.ndarray, mesh: Mesh | None = None) -> jax.Array:
    """The first block's calibration input, fp32: (n_windows, T, d); on a mesh, split by windows."""
    x = embed(params, jnp.asarray(windows)).astype(jnp.float32)
    return x if mesh is None else put_axes(x, HIDDEN, mesh)


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1]).astype(jnp.float32)


@jax.jit
def _sums(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    flat = _flat(a)
    return jnp.einsum("ni,nj->ij", flat, flat, precision=jax.lax.Precision.HIGHEST), flat.sum(0)


def stats_of(a: jax.Array, mesh: Mesh | None = None) -> InputStats:
    """Statistics of (…, d_in) inputs. On a mesh the windows stay split over the data axes and
    each device sums its own tokens before one reduction, which leaves the Gram's rows split over
    the same devices (`GRAM`): a 70B down_proj's is 3.3 GB whole."""
    if mesh is None:
        gram, total = _sums(a)
    else:
        gram, total = sharded_call(_sums, mesh, {"a": (a, batch_axes(a.ndim))}, (GRAM, REPLICATED))
    return InputStats(gram, total, math.prod(a.shape[:-1]))


@jax.jit
def _cross(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("ni,nj->ij", _flat(a), _flat(b), precision=jax.lax.Precision.HIGHEST)


def cross_gram(a: jax.Array, b: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """AᵀB over tokens: (d_in, d_in) between two input streams (e.g. pruned vs dense)."""
    if mesh is None:
        return _cross(a, b)
    return sharded_call(_cross, mesh, {"a": (a, batch_axes(a.ndim)), "b": (b, batch_axes(b.ndim))}, REPLICATED)


@jax.jit
def zero_padding(a: jax.Array, valid: jax.Array) -> jax.Array:
    """`a (windows, …)` with its windows from `valid` on set to zero: padding windows of a
    chunk then add nothing to a Gram or a sum."""
    keep = (jnp.arange(a.shape[0]) < valid).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.where(keep, a, jnp.zeros((), a.dtype))


def add_stats(a: InputStats | None, b: InputStats) -> InputStats:
    """Statistics of two sets of tokens together (None: none yet)."""
    if a is None:
        return b
    return InputStats(a.gram + b.gram, a.total + b.total, a.n_tokens + b.n_tokens)


def check_finite(stats: InputStats, where: str) -> None:
    if not bool(jnp.all(jnp.isfinite(stats.gram))):
        raise TyrjaxError(
            f"calibration: NaN or inf in the inputs of {where}; the model overflows on the calibration data "
            "(try --dtype float32 or other calibration text)"
        )


@partial(jax.jit, static_argnums=1)
def attention_normed(p: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Input of q/k/v: the attention RMSNorm of the block input x, fp32."""
    return rms_norm(x, p["attn_norm"], cfg.rms_norm_eps).astype(jnp.float32)


@partial(jax.jit, static_argnums=(1, 3))
def heads_of(p: Params, cfg: ModelConfig, normed: jax.Array, kv_map: tuple[int, ...]) -> jax.Array:
    """Input of o_proj: per-head attention outputs of normed x under this layer's q/k/v, fp32."""
    cos, sin = rope_tables(cfg, jnp.arange(normed.shape[1]))
    heads, _ = attention_heads(p, cfg, normed, cos, sin, kv_map)
    return heads.astype(jnp.float32)


@partial(jax.jit, static_argnums=1)
def mlp_normed(p: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Input of gate/up: the MLP RMSNorm of the attention sub-block's output, fp32."""
    return rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps).astype(jnp.float32)


@jax.jit
def hidden_of(p: Params, normed: jax.Array) -> jax.Array:
    """Input of down_proj: the SwiGLU hidden of this layer's gate/up, fp32."""
    return mlp_hidden(p, normed).astype(jnp.float32)


def attention_inputs(
    p: Params, cfg: ModelConfig, x: jax.Array, kv_map: tuple[int, ...] | None = None, mesh: Mesh | None = None
):
    """(input of q/k/v, input of o_proj) for a block input x; `kv_map` defaults to the dense layout's.
    On a mesh, windows are split over the data axes and heads over tensor."""
    kv_map = cfg.kv_map(0) if kv_map is None else kv_map
    if mesh is not None:
        inputs = {"p": (p, axes_of_layer(p)), "x": (x, HIDDEN)}
        return sharded_call(attention_inputs, mesh, inputs, (HIDDEN, HEADS_OUT), head_dim=cfg.head_dim,
                            static={"cfg": cfg, "kv_map": kv_map})
    normed = attention_normed(p, cfg, x)
    return normed, heads_of(p, cfg, normed, kv_map)


def mlp_inputs(p: Params, cfg: ModelConfig, x: jax.Array, mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array]:
    """(input of gate/up, input of down_proj) for the MLP's input x; on a mesh, neurons over tensor."""
    if mesh is not None:
        inputs = {"p": (p, axes_of_layer(p)), "x": (x, HIDDEN)}
        return sharded_call(mlp_inputs, mesh, inputs, (HIDDEN, MLP_HIDDEN), head_dim=cfg.head_dim,
                            static={"cfg": cfg})
    normed = mlp_normed(p, cfg, x)
    return normed, hidden_of(p, normed)


@partial(jax.jit, static_argnums=1)
def attention_residual(p: Params, cfg: ModelConfig, x: jax.Array, heads: jax.Array, head_mask=None) -> jax.Array:
    """x + o_proj(heads): the attention sub-block output given its per-head outputs."""
    return x + attention_output(p, heads, head_mask, cfg.head_dim)


@jax.jit
def mlp_residual(p: Params, x: jax.Array, hidden: jax.Array, ffn_mask=None) -> jax.Array:
    return x + mlp_output(p, hidden, ffn_mask)



