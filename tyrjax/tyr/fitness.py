"""Search fitness: KL(dense ‖ candidate) of next-token distributions, candidates scored in batches.

A candidate is one level per searchable layer (2 per block). Its model is assembled by a
gather from the supernet's stacked levels, inside one compiled function that `vmap`s over a
batch of candidates: changing the candidate never recompiles. Offspring differ from their
parent in a few layers, so the parent's hidden states at every block input are computed once
per token batch, and each candidate batch starts from the first block any of its members
changes (exact: earlier blocks are identical).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tyrjax.config import ModelConfig
from tyrjax.layers import decoder_layer, rope_tables
from tyrjax.model import Params, embed, final_hidden, forward
from tyrjax.sharding import (HIDDEN, REPLICATED, Axes, axis_size, params_axes_of, put_axes, round_up, shard_params,
                             sharded_call)
from tyrjax.tyr.supernet import SUPERNET_AXES, Supernet

FITNESSES: dict[str, Callable] = {}


def register_fitness(name: str):
    """Register `fn(student_logits (B,T,k), teacher_logp (B,T,k)) -> (B,T)` per-token loss, where
    the student's logits are taken at the teacher's top-k tokens and the teacher's log-probs
    are renormalised over them."""

    def deco(fn):
        FITNESSES[name] = fn
        return fn

    return deco


class Teacher(NamedTuple):
    """The dense model's top-k next-token log-probabilities (renormalised over the top-k)."""

    idx: np.ndarray  # (N, T, k) int32
    logp: np.ndarray  # (N, T, k) float32


@partial(jax.jit, static_argnums=(1, 3))
def _teacher_batch(params: Params, cfg: ModelConfig, tokens: jax.Array, k: int):
    logits = forward(params, cfg, tokens)
    top, idx = jax.lax.top_k(logits, k)
    return idx.astype(jnp.int32), jax.nn.log_softmax(top, axis=-1)


def teacher_topk(
    params: Params, cfg: ModelConfig, windows: np.ndarray, k: int, batch: int = 2, mesh: Mesh | None = None
) -> Teacher:
    """Dense logits computed once; only the top-k per position are kept (ALGORITHMS.md §1.4).

    On a mesh, `batch` windows per device are scored at once, split over the data axes."""
    k = min(k, cfg.vocab_size)
    if mesh is not None:
        batch *= axis_size(mesh, "batch")
    parts = [_teacher_on(params, cfg, jnp.asarray(windows[i:i + batch]), k, mesh)
             for i in range(0, len(windows), batch)]
    return Teacher(np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts]))


def _teacher_on(params: Params, cfg: ModelConfig, tokens: jax.Array, k: int, mesh: Mesh | None):
    if mesh is None:
        return _teacher_batch(params, cfg, tokens, k)
    inputs = {"params": (params, params_axes_of(params, cfg)), "tokens": (tokens, Axes("batch", "seq"))}
    return sharded_call(_teacher_batch, mesh, inputs, REPLICATED, head_dim=cfg.head_dim, static={"cfg": cfg, "k": k})


@register_fitness("kl")
def kl_topk(student_topk: jax.Array, t_logp: jax.Array) -> jax.Array:
    """KL(teacher ‖ student) over the teacher's top-k tokens, both renormalised there."""
    s_logp = jax.nn.log_softmax(student_topk, axis=-1)
    return jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)


def topk_logits(params: Params, cfg: ModelConfig, h: jax.Array, t_idx: jax.Array, chunk: int = 64) -> jax.Array:
    """The student's logits (B, T, k) at the teacher's top-k tokens only.

    Only k of the vocabulary's logits enter the fitness, so the head is evaluated on the
    gathered rows (k·d per token) instead of the whole vocabulary (V·d): for SmolLM2 with
    k = 512 that is 96 times less work than the full head, a third of a candidate's cost.
    """
    hn = final_hidden(params, cfg, h)
    rows = params["lm_head"].T if "lm_head" in params else params["embed"]  # (V, d)
    b, t, k = t_idx.shape
    c = chunk if t % chunk == 0 else t
    hn = hn.reshape(b, t // c, c, -1).swapaxes(0, 1)
    idx = t_idx.reshape(b, t // c, c, k).swapaxes(0, 1)

    def one(args):
        h_c, i_c = args
        return jnp.einsum("btd,btkd->btk", h_c, rows[i_c], preferred_element_type=jnp.float32)

    return jax.lax.map(one, (hn, idx)).swapaxes(0, 1).reshape(b, t, k)


def parent_block_inputs(params: Params, cfg: ModelConfig, supernet: Supernet, levels: np.ndarray, tokens: jax.Array) -> jax.Array:
    """The parent's hidden state entering every block, plus the final one: (L+1, B, T, d)."""
    return _parent_block_inputs(params, cfg, supernet, jnp.asarray(levels, jnp.int32), tokens)


def _candidate_layer(p: Params, sn_block, attn_level, mlp_level) -> tuple[Params, jax.Array, jax.Array]:
    wo, head_keep, w_down, ffn_keep = sn_block
    p = dict(p, wo=wo[attn_level], w_down=w_down[mlp_level])
    return p, head_keep[attn_level].astype(jnp.float32), ffn_keep[mlp_level].astype(jnp.float32)


@partial(jax.jit, static_argnums=1)
def _parent_block_inputs(params, cfg, supernet, levels, tokens):
    x = embed(params, tokens)
    cos, sin = rope_tables(cfg, jnp.arange(tokens.shape[1]))
    kv_map = cfg.kv_map(0)

    def step(h, xs):
        p, sn_block, a_lv, m_lv = xs
        p, hm, fm = _candidate_layer(p, sn_block, a_lv, m_lv)
        out, _ = decoder_layer(p, cfg, h, cos, sin, kv_map, hm, fm)
        return out, h

    final, inputs = jax.lax.scan(step, x, (params["layers"], tuple(supernet), levels[0::2], levels[1::2]))
    return jnp.concatenate([inputs, final[None]])


@partial(jax.jit, static_argnames=("cfg", "fitness"))
def score_candidates(
    params: Params,
    cfg: ModelConfig,
    supernet: Supernet,
    levels: jax.Array,  # (C, 2L) int32
    tokens: jax.Array,  # (B, T)
    t_idx: jax.Array,  # (B, T, k)
    t_logp: jax.Array,
    start: jax.Array,  # () int32: first block that differs from the parent
    h_start: jax.Array,  # (B, T, d): the parent's input of block `start`
    fitness: str = "kl",
) -> jax.Array:
    """Mean per-token fitness (C,) of each candidate; blocks before `start` are skipped."""
    n_cand = levels.shape[0]
    cos, sin = rope_tables(cfg, jnp.arange(tokens.shape[1]))
    kv_map = cfg.kv_map(0)
    h0 = jnp.broadcast_to(h_start, (n_cand, *h_start.shape))
    blocks = jnp.arange(cfg.n_layers)

    def one_candidate(p, sn_block, a_lv, m_lv, h):
        p, hm, fm = _candidate_layer(p, sn_block, a_lv, m_lv)
        return decoder_layer(p, cfg, h, cos, sin, kv_map, hm, fm)[0]

    def step(h, xs):
        b, p, sn_block, a_lv, m_lv = xs
        run = lambda h: jax.vmap(one_candidate, in_axes=(None, None, 0, 0, 0))(p, sn_block, a_lv, m_lv, h)  # noqa: E731
        return jax.lax.cond(b >= start, run, lambda h: h, h), None

    xs = (blocks, params["layers"], tuple(supernet), levels[:, 0::2].T, levels[:, 1::2].T)
    h, _ = jax.lax.scan(step, h0, xs)
    loss_fn = FITNESSES[fitness]

    def candidate_loss(hc):
        return loss_fn(topk_logits(params, cfg, hc, t_idx), t_logp).mean()

    return jax.lax.map(candidate_loss, h)


def first_changed_block(genomes: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """For each genome, the first block whose attention or MLP level differs (L if none)."""
    diff = genomes != parent[None]
    n_blocks = genomes.shape[1] // 2
    first = np.where(diff.any(1), diff.argmax(1), 2 * n_blocks)
    return first // 2


class BatchScorer:
    """Scores genomes on a token batch with the parent-prefix cache, `batch` candidates per call.

    On a mesh the candidates of a call are split over the `candidate` mesh axes (`batch` is
    rounded up to a multiple of their size), the token windows over the remaining data axes,
    heads and neurons over tensor; the scores come back replicated.
    """

    def __init__(self, params: Params, cfg: ModelConfig, supernet: Supernet, batch: int, fitness: str = "kl",
                 mesh: Mesh | None = None):
        self.cfg, self.fitness, self.mesh = cfg, fitness, mesh
        if mesh is None:
            self.params, self.supernet, self.batch = params, supernet, batch
        else:
            self.params = shard_params(params, cfg, mesh)
            self.supernet = put_axes(supernet, SUPERNET_AXES, mesh, cfg.head_dim)
            self.batch = round_up(batch, axis_size(mesh, "candidate"))

    def __call__(self, genomes: np.ndarray, parent: np.ndarray, tokens: np.ndarray, t_idx: np.ndarray,
                 t_logp: np.ndarray, use_prefix: bool = True) -> np.ndarray:
        genomes = np.asarray(genomes, np.int32)
        tokens, t_idx, t_logp = jnp.asarray(tokens), jnp.asarray(t_idx), jnp.asarray(t_logp)
        if use_prefix:
            starts = first_changed_block(genomes, np.asarray(parent))
            inputs = self._parent_inputs(np.asarray(parent, np.int32), tokens)
        else:
            starts = np.zeros(len(genomes), np.int64)
            inputs = embed(self.params, tokens)[None]
        order = np.argsort(starts, kind="stable")
        scores = np.empty(len(genomes), np.float64)
        for i in range(0, len(order), self.batch):
            idx = order[i:i + self.batch]
            chunk = genomes[idx]
            if len(idx) < self.batch:  # pad with copies so every call has one shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(idx), 0)])
            start = int(starts[idx].min())
            out = self._score(jnp.asarray(chunk), tokens, t_idx, t_logp, jnp.int32(start),
                              inputs[start if use_prefix else 0])
            scores[idx] = np.asarray(out)[: len(idx)]
        return scores

    def _parent_inputs(self, parent: np.ndarray, tokens: jax.Array) -> jax.Array:
        if self.mesh is None:
            return parent_block_inputs(self.params, self.cfg, self.supernet, parent, tokens)
        inputs = {
            "params": (self.params, params_axes_of(self.params, self.cfg)),
            "supernet": (self.supernet, SUPERNET_AXES),
            "levels": (jnp.asarray(parent), REPLICATED),
            "tokens": (tokens, Axes("batch", "seq")),
        }
        return sharded_call(_parent_block_inputs, self.mesh, inputs, Axes(None, "batch", "seq", "embed"),
                            head_dim=self.cfg.head_dim, static={"cfg": self.cfg})

    def _score(self, levels: jax.Array, tokens: jax.Array, t_idx: jax.Array, t_logp: jax.Array, start: jax.Array,
               h_start: jax.Array) -> jax.Array:
        if self.mesh is None:
            return score_candidates(self.params, self.cfg, self.supernet, levels, tokens, t_idx, t_logp, start, h_start,
                                    fitness=self.fitness)
        inputs = {
            "params": (self.params, params_axes_of(self.params, self.cfg)),
            "supernet": (self.supernet, SUPERNET_AXES),
            "levels": (levels, Axes("candidate")),
            "tokens": (tokens, Axes("batch", "seq")),
            "t_idx": (t_idx, Axes("batch", "seq")),
            "t_logp": (t_logp, Axes("batch", "seq")),
            "start": (start, REPLICATED),
            "h_start": (h_start, HIDDEN),
        }
        return sharded_call(score_candidates, self.mesh, inputs, REPLICATED, head_dim=self.cfg.head_dim,
                            static={"cfg": self.cfg, "fitness": self.fitness})
