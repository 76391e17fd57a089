"""Search fitness: KL(dense ‖ candidate) of next-token distributions, candidates scored in batches.

A candidate is a `Genome`: one level per searchable layer, two per block. A batch of candidates
runs block by block: per block, the levels the batch uses are gathered from the supernet (which
may live on disk) and one compiled function, `vmap`ped over the batch, runs the block; the block index
and the levels are arguments, so neither another block nor another candidate recompiles.
Offspring differ from their parent in a few layers, so the parent's hidden state entering the
blocks where batches start is computed once per token batch, and each candidate batch starts
from the first block any of its members changes (exact: earlier blocks are identical).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tyrjax.model.blocks import (ModelBlocks, as_blocks, block_activation_bytes, data_split, hidden_chunk, map_to_host,
                                 padded_windows, run_blocks, stacked_axes)
from tyrjax.model.config import ModelConfig
from tyrjax.model.layers import decoder_layer, rope_tables
from tyrjax.model.vocab import LOGIT_BYTES, VOCAB_MULTIPLE, logits_at, widest_vocab_chunk
from tyrjax.model.decoder import Params, embed, final_hidden, lm_head_weight, logits_from_hidden
from tyrjax.parallel.memory import chunking, device_memory_bytes
from tyrjax.parallel.sharding import HIDDEN, REPLICATED, Axes, axis_size, put_axes, round_up, sharded_call
from tyrjax.registry import Registry
from tyrjax.tyr.genome import Genome, split
from tyrjax.tyr.supernet import BlockLevels, Supernet

Fitness = Callable[[jax.Array, jax.Array], jax.Array]

FITNESSES: Registry[Fitness] = Registry("fitness", "tyrjax.tyr.fitness.FITNESSES")

register_fitness = FITNESSES.register
"""`@register_fitness(name)`: register `fn(student_logp (B,T,k), teacher_logp (B,T,k)) -> (B,T)`
per-token loss, where the student's log-probabilities are taken at the teacher's top-k tokens
up to a per-token constant (`topk_logprobs`, `gathered_losses`; a loss must not depend on it) and the teacher's
log-probs are renormalised over them; select it with `TyrConfig.fitness`."""

get_fitness = FITNESSES.get
"""The fitness registered under a name; an unknown name fails naming the registered ones."""


class Teacher(NamedTuple):
    """The dense model's top-k next-token log-probabilities (renormalised over the top-k)."""

    idx: np.ndarray  # (N, T, k) int32
    logp: np.ndarray  # (N, T, k) float32


@partial(jax.jit, static_argnames=("cfg", "k"))
def _teacher_from_hidden(head: Params, cfg: ModelConfig, h: jax.Array, k: int):
    top, idx = jax.lax.top_k(logits_from_hidden(head, cfg, h), k)
    return idx.astype(jnp.int32), jax.nn.log_softmax(top, axis=-1)


TEACHER_BATCH = 2  # windows per device of one teacher call


def check_teacher_budget(blocks: ModelBlocks, shape: tuple[int, int], k: int, batch: int, budget_bytes: int) -> None:
    """Fail naming the teacher when `budget_bytes` per device holds neither the hidden states of
    `batch` windows (of `shape` = (n_windows, length)) nor their whole-vocabulary logits."""
    n_local = -(-shape[0] // data_split(blocks.mesh))
    hidden_chunk(blocks, n_local, shape[1], batch, budget_bytes, "teacher")
    per_window = shape[1] * (blocks.cfg.vocab_size * LOGIT_BYTES + k * 8)  # full logits, top-k and its log-softmax
    chunking(n_local, per_window, budget_bytes, fixed_bytes=blocks.resident_bytes(), phase="teacher", multiple=batch)


def teacher_topk(
    params: Params | ModelBlocks, cfg: ModelConfig, windows: np.ndarray, k: int, batch: int = TEACHER_BATCH,
    mesh: Mesh | None = None, budget_bytes: int | None = None,
) -> Teacher:
    """Dense logits computed once; only the top-k per position are kept (ALGORITHMS.md §1.4).

    The windows run block by block (`blocks.run_blocks`), `batch` windows per device at a time;
    on a mesh they are split over the data axes. Hidden states that exceed `budget_bytes` per
    device (default: `parallel.memory.device_memory_bytes()`) stay on the host and stream to
    the device; the top-k of each `batch` windows comes back to the host as it is made."""
    blocks = as_blocks(params, cfg, mesh)
    k = min(k, cfg.vocab_size)
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    check_teacher_budget(blocks, np.shape(windows), k, batch, budget)
    h = run_blocks(blocks, windows, batch, budget_bytes=budget, phase="teacher")

    def top(hc: jax.Array):
        if blocks.mesh is None:
            return _teacher_from_hidden(blocks.head, cfg, hc, k)
        inputs = {"head": (blocks.head, blocks.head_axes()), "h": (hc, HIDDEN)}
        return sharded_call(_teacher_from_hidden, blocks.mesh, inputs, REPLICATED, head_dim=cfg.head_dim,
                            static={"cfg": cfg, "k": k})

    idx, logp = map_to_host(top, (h,), batch, blocks.mesh)
    return Teacher(idx, logp)


@register_fitness("kl")
def kl_topk(student_topk: jax.Array, t_logp: jax.Array) -> jax.Array:
    """KL(teacher ‖ student) over the teacher's top-k tokens, both renormalised there (so the
    student's values may be its logits or its log-probabilities there)."""
    s_logp = jax.nn.log_softmax(student_topk, axis=-1)
    return jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)


# A vocabulary chunk is as wide as the budget allows for a step of this many positions per window.
TOKENS_PER_VOCAB_STEP = 256
# Positions per step when the head's rows are gathered (at most; fewer when the budget says so):
# on CPU a step whose gathered rows stay near the cache's size runs fastest (4 windows × top-512
# of SmolLM2: 0.40 s at 4 positions, 0.55 s at 64).
GATHER_POSITIONS = 4
# FLOPs per byte read that a backend's matrix products sustain against a gather: measured on this
# project's CPUs (a 49152-column fp32 head at ~60 GFLOP/s against k-row gathers at ~5 GB/s);
# accelerators sit near their own FLOP/s to bandwidth ratio.
MACHINE_BALANCE = {"cpu": 12}
ACCELERATOR_BALANCE = 300


class FitnessChunks(NamedTuple):
    """How the student's head runs: `tokens` positions of every window per step, and either
    `vocab` columns of the head per step (`topk_logprobs`) or, with `gather`, the head's rows at
    the top-k ids (`gathered_losses`)."""

    tokens: int
    vocab: int
    gather: bool = False


def gathers_rows(k: int, cfg: ModelConfig, itemsize: int, platform: str) -> bool:
    """Whether reading the k head rows of each token (k·d·itemsize bytes) costs less than the
    whole head's matrix product over the vocabulary (2·V·d FLOPs) on `platform`: on CPUs for a
    top-k much narrower than the vocabulary, on accelerators almost never."""
    balance = MACHINE_BALANCE.get(platform, ACCELERATOR_BALANCE)
    return k * itemsize * balance < 2 * cfg.vocab_size


def head_rows(head: Params) -> jax.Array:
    """The LM head as rows (V, d): the embedding itself when tied."""
    return head["lm_head"].T if "lm_head" in head else head["embed"]


def by_position_chunks(a: jax.Array, step: int, axis: int) -> jax.Array:
    """`a` with its position axis `axis` padded to a multiple of `step` and split into
    (chunks, ..., step, ...), the chunks first."""
    t = a.shape[axis]
    padded = round_up(t, step)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, padded - t)
    split = jnp.pad(a, pad).reshape(*a.shape[:axis], padded // step, step, *a.shape[axis + 1:])
    return jnp.moveaxis(split, axis, 0)


def topk_logprobs(head: Params, cfg: ModelConfig, h: jax.Array, t_idx: jax.Array,
                  chunks: FitnessChunks) -> jax.Array:
    """The student's log-probabilities (B, T, k) at the teacher's top-k tokens `t_idx (B, T, k)`
    from the last block's output `h (B, T, d)`.

    The LM head runs on `chunks.tokens` positions (of every window) at a time, and over
    `chunks.vocab` columns at a time (`model.vocab.logits_at`: no head rows gathered, no more
    than positions × columns logits per window at once, the log-normaliser subtracted). The
    chunk sizes are static, so one compiled function serves every chunk. (Chunks with `gather`
    are `gathered_losses`'.)"""
    hn = final_hidden(head, cfg, h)
    w = lm_head_weight(head)  # (d, V)
    t = t_idx.shape[1]

    def positions(args):
        h_c, i_c = args  # (B, step, d), (B, step, k)
        picked, log_normaliser = logits_at(h_c, w, i_c, chunks.vocab)
        return picked - log_normaliser[..., None]

    out = jax.lax.map(positions, (by_position_chunks(hn, chunks.tokens, 1), by_position_chunks(t_idx, chunks.tokens, 1)))
    return jnp.moveaxis(out, 0, 1).reshape(t_idx.shape[0], -1, t_idx.shape[2])[:, :t]  # (B, T, k)


def gathered_losses(head: Params, cfg: ModelConfig, h: jax.Array, t_idx: jax.Array, t_logp: jax.Array,
                    loss_fn: Fitness, step: int) -> jax.Array:
    """Per-token losses (C, B, T) of C candidates `h (C, B, T, d)` against the teacher's top-k
    (`t_idx`, `t_logp`: (B, T, k)), the student's values taken on the k head rows of each
    position (k·d per token instead of the vocabulary's V·d; the log-normaliser, a per-token
    constant, is left out). The candidates share the teacher's ids, so each step of `step`
    positions gathers their rows once for all C candidates."""
    rows = head_rows(head)
    t = t_idx.shape[1]

    def positions(args):
        h_c, i_c, lp_c = args  # (C, B, step, d), (B, step, k), (B, step, k)
        student = jnp.einsum("cbtd,btkd->cbtk", final_hidden(head, cfg, h_c), rows[i_c],
                             preferred_element_type=jnp.float32)
        return jax.vmap(loss_fn, (0, None))(student, lp_c)  # (C, B, step)

    out = jax.lax.map(positions, (by_position_chunks(h, step, 2), by_position_chunks(t_idx, step, 1),
                                  by_position_chunks(t_logp, step, 1)))  # (n, C, B, step)
    return jnp.moveaxis(out, 0, 2).reshape(*h.shape[:2], -1)[..., :t]


def fitness_chunks(windows: int, length: int, k: int, cfg: ModelConfig, budget_bytes: int, fixed_bytes: float = 0,
                   itemsize: int = 4, platform: str | None = None, candidates: int = 1) -> FitnessChunks:
    """The largest chunks of `topk_logprobs` for `windows` (per device) × `length` positions
    whose temporaries fit `budget_bytes` next to `fixed_bytes` (what the phase holds anyway), on
    `platform` (default: JAX's default backend) for a head of `itemsize`-byte weights.

    Gathering rows (`gathers_rows`): up to `GATHER_POSITIONS` positions per step, the rows of a
    step shared by the `candidates` scored at once (`gathered_losses`). Otherwise the
    vocabulary chunk is as wide as fits for a step of up to `TOKENS_PER_VOCAB_STEP` positions
    (the narrowest chunk where not even that fits) and the position chunk then fills the
    budget. A budget below one position of one chunk fails here, naming the phase and the
    smallest budget that works."""
    per_token = 4 * cfg.hidden_size + 16 * k  # normed hidden (fp32 at most), ids, picked, gathered and output
    if gathers_rows(k, cfg, itemsize, platform or jax.default_backend()):
        shared = 8 * k + k * cfg.hidden_size * itemsize  # ids, teacher log-probs and gathered rows
        each = 4 * cfg.hidden_size + 8 * k  # a candidate's normed hidden state and its values at the top-k
        fit = chunking(length, windows * (shared + candidates * each), budget_bytes,
                       fixed_bytes=fixed_bytes, phase="search scoring").size
        return FitnessChunks(min(fit, GATHER_POSITIONS), 0, gather=True)
    step = windows * min(length, TOKENS_PER_VOCAB_STEP)
    narrowest = min(VOCAB_MULTIPLE, cfg.vocab_size)
    if fixed_bytes + step * (per_token + LOGIT_BYTES * narrowest) <= budget_bytes:
        vocab = widest_vocab_chunk(cfg.vocab_size, step, budget_bytes, fixed_bytes + step * per_token, "search scoring")
    else:  # fewer positions per step, each over the narrowest chunk
        vocab = narrowest
    tokens = chunking(length, windows * (per_token + LOGIT_BYTES * vocab), budget_bytes,
                      fixed_bytes=fixed_bytes, phase="search scoring").size
    return FitnessChunks(tokens, vocab)


CANDIDATE_LEVELS = BlockLevels(wo=Axes(None, "candidate", "heads", "embed"), head_keep=Axes(None, "candidate"),
                               w_down=Axes(None, "candidate", "mlp", "embed"), ffn_keep=Axes(None, "candidate"))
CANDIDATE_HIDDEN = Axes("candidate", "batch", "seq", "embed")  # (C, B, T, d): each candidate's hidden states
BLOCK_STATES = Axes(None, "candidate", "batch", "seq", "embed")  # (k + 1, C, B, T, d)

# Each call of a compiled function costs about a tenth of a SmolLM2 block on CPU (its buffers
# are set up afresh), so small blocks share a call: up to MAX_BLOCKS_PER_CALL of them, as many as
# keep the levels and the block parameters of one call within BYTES_PER_CALL.
MAX_BLOCKS_PER_CALL = 8
BYTES_PER_CALL = 128 * 2**20


def _candidate_block(p: Params, cfg: ModelConfig, levels: BlockLevels, h: jax.Array) -> jax.Array:
    """One block of C candidates: `h (C, B, T, d)` through each candidate's own o_proj/down_proj
    level and head/neuron masks (`levels`, one entry per candidate)."""
    cos, sin = rope_tables(cfg, jnp.arange(h.shape[2]))
    kv_map = cfg.kv_map(0)

    def one(wo, head_keep, w_down, ffn_keep, x):
        # Levels stored in another dtype than the model's (--supernet-dtype) compute in the model's.
        q = dict(p, wo=wo.astype(p["wo"].dtype), w_down=w_down.astype(p["w_down"].dtype))
        return decoder_layer(q, cfg, x, cos, sin, kv_map, head_keep.astype(jnp.float32), ffn_keep.astype(jnp.float32))[0]

    return jax.vmap(one)(*levels, h)


@partial(jax.jit, static_argnames=("cfg", "with_states"))
def candidate_blocks(layers: Params, cfg: ModelConfig, n_run: jax.Array, levels: BlockLevels, h: jax.Array,
                     with_states: bool = False) -> jax.Array:
    """k consecutive blocks of a batch of C candidates: block i has the parameters `layers[i]`
    (stacked, k, ...) and the candidates' own levels `levels[i]` (k, C, ...); blocks from
    `n_run` on pass `h` through. Returns the output (C, B, T, d), or with `with_states` the state
    entering each of the k blocks and the output (k + 1, C, B, T, d).

    How many blocks run is traced, so every stretch of k blocks of the model (and every batch of
    the same size) runs one compiled function."""

    def step(x, xs):
        i, p, block_levels = xs
        out = jax.lax.cond(i < n_run, lambda x: _candidate_block(p, cfg, block_levels, x), lambda x: x, x)
        return out, x if with_states else None

    k = levels.wo.shape[0]
    out, entering = jax.lax.scan(step, h, (jnp.arange(k), layers, levels))
    return jnp.concatenate([entering, out[None]]) if with_states else out


@jax.jit
def parent_embedding(head: Params, tokens: jax.Array) -> jax.Array:
    """The hidden state entering block 0, as a batch of one candidate (1, B, T, d)."""
    return embed(head, tokens)[None]


@partial(jax.jit, static_argnames="n")
def repeat_candidates(h: jax.Array, n: int) -> jax.Array:
    """One hidden state (1, B, T, d) as the starting state of `n` candidates (n, B, T, d)."""
    return jnp.broadcast_to(h, (n, *h.shape[1:]))


@partial(jax.jit, static_argnames=("cfg", "fitness", "chunks"))
def candidate_fitness(head: Params, cfg: ModelConfig, h: jax.Array, t_idx: jax.Array, t_logp: jax.Array,
                      fitness: str = "kl", chunks: FitnessChunks | None = None,
                      valid: jax.Array | None = None) -> jax.Array:
    """Mean per-token fitness (C,) of each candidate from its last block's output `h (C, B, T, d)`;
    `head` holds the embedding / LM head and the final norm. The student's log-probabilities run
    in `chunks` (default: all positions and the whole vocabulary in one step): one candidate at
    a time over the vocabulary, or with `chunks.gather` every candidate at once on the head rows
    gathered for a step (`gathered_losses`). With `valid` (a
    traced count), the sum of the per-token losses over the first `valid` windows instead: what
    a chunk of windows (the rest padding) adds to the mean."""
    loss_fn = get_fitness(fitness)
    chunks = chunks or FitnessChunks(h.shape[2], cfg.vocab_size)

    def reduce(loss):  # (B, T) -> ()
        if valid is None:
            return loss.mean()
        return jnp.sum(jnp.where((jnp.arange(loss.shape[0]) < valid)[:, None], loss, 0.0))

    if chunks.gather:
        return jax.vmap(reduce)(gathered_losses(head, cfg, h, t_idx, t_logp, loss_fn, chunks.tokens))
    return jax.lax.map(lambda hc: reduce(loss_fn(topk_logprobs(head, cfg, hc, t_idx, chunks), t_logp)), h)


def host_buffer(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialised host array whose data starts on an `align`-byte boundary: the CPU backend
    uses such an array in place (`jax.device_put` without a copy), which for the levels of a
    batch is most of the cost of moving them."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = -raw.ctypes.data % align
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def blocks_per_call(level_bytes: int, batch: int, n_blocks: int, block_bytes: int = 0) -> int:
    """How many blocks one call of `candidate_blocks` runs for a batch of `batch` candidates,
    where one level of one block (o_proj, down_proj and their masks) takes `level_bytes` and
    the block's parameters `block_bytes`."""
    fit = BYTES_PER_CALL // (batch * level_bytes + block_bytes)
    return int(np.clip(fit, 1, min(MAX_BLOCKS_PER_CALL, n_blocks)))


def default_blocks_per_call(supernet: Supernet, model: ModelBlocks, batch: int) -> int:
    block_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(model.block(0)))
    return blocks_per_call(sum(a[0].nbytes for a in supernet.block(0)), batch, supernet.n_blocks, block_bytes)


def first_changed_block(genomes: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """For each genome, the first block whose attention or MLP level differs (L if none)."""
    changed = np.logical_or(*split(genomes != parent[None]))  # (C, L)
    return np.where(changed.any(1), changed.argmax(1), changed.shape[1])


def scoring_window_bytes(cfg: ModelConfig, batch: int, length: int, k: int, itemsize: int) -> int:
    """Per-device bytes one window adds to the scoring of `batch` candidates (per device): their
    hidden states in and out and one block's temporaries each, the parent's state entering
    every block, and the teacher's top-k."""
    hidden = length * cfg.hidden_size * itemsize
    return (batch * (2 * hidden + block_activation_bytes(cfg, length)) + (cfg.n_layers + 1) * hidden
            + length * k * 8)


def call_bytes(cfg: ModelConfig, batch: int, blocks: int, itemsize: int, level_itemsize: int, tensor: int = 1) -> int:
    """Per-device bytes of one call's blocks and the levels its candidates use (o_proj,
    down_proj and their masks), with an fp32 copy of each candidate's levels when they are
    narrower: XLA on CPU computes their matmuls on such copies (counted on every platform, so a
    search takes the same chunks everywhere). `tensor`: over how many devices heads and
    neurons are split (1: everything on one device, an upper bound on a mesh)."""
    q = cfg.n_heads * cfg.head_dim
    level_params = (q + cfg.intermediate_size) * cfg.hidden_size
    level = level_params * (level_itemsize + fp32_copy(level_itemsize)) // tensor + cfg.n_heads + cfg.intermediate_size
    return blocks * (batch * level + cfg.attn_mlp_params() // cfg.n_layers * itemsize // tensor)


def fp32_copy(itemsize: int) -> int:
    """Bytes per element of the fp32 copy XLA on CPU makes of a narrower matmul operand."""
    return 4 if itemsize < 4 else 0


def scoring_windows(cfg: ModelConfig, batch: int, windows: int, length: int, k: int, budget_bytes: int,
                    fixed_bytes: float, itemsize: int) -> int:
    """Windows per device of one forward of the search's scoring: all `windows` when they fit
    `budget_bytes` beside `fixed_bytes` (the weights held and one call's blocks and levels),
    else the most that fit (the token batch then runs in chunks of that many windows, the last
    padded). Fails naming the phase when not even one window fits."""
    per_window = scoring_window_bytes(cfg, batch, length, k, itemsize)
    return chunking(windows, per_window, budget_bytes, fixed_bytes=fixed_bytes, phase="search scoring").size


def scoring_chunks(model: ModelBlocks, batch: int, windows: int, length: int, k: int,
                   budget_bytes: int) -> FitnessChunks:
    """The head's chunks for `batch` candidates on `windows` × `length` tokens: what fits the
    budget next to the model held on the device, the candidates' hidden states (in and out)
    and the teacher's top-k."""
    per_device = windows // data_split(model.mesh) or 1
    itemsize = model.head["embed"].dtype.itemsize
    held = 2 * batch * per_device * length * model.cfg.hidden_size * itemsize + per_device * length * k * 8
    return fitness_chunks(per_device, length, k, model.cfg, budget_bytes, model.resident_bytes() + held, itemsize,
                          candidates=batch)


class BatchScorer:
    """Scores genomes on a token batch with the parent-prefix cache, `batch` candidates per call.

    Block by block: for each batch of candidates, from the first block any of them changes, the
    levels the batch uses are gathered on the host from the supernet (memory-mapped when it
    lives on disk) and `candidate_blocks` runs them, `blocks_per_call` blocks at a time (default:
    `default_blocks_per_call`); no more than that many blocks' levels of one batch are held at once.
    On a mesh the candidates of a call are split over the `candidate` mesh axes (`batch` is
    rounded up to a multiple of their size), the token windows over the remaining data axes,
    heads and neurons over tensor; the scores come back replicated. The LM head of the fitness
    runs in position and vocabulary chunks sized to `budget_bytes` per device (default:
    `parallel.memory.device_memory_bytes()`).
    """

    def __init__(self, params: Params | ModelBlocks, cfg: ModelConfig, supernet: Supernet, batch: int,
                 fitness: str = "kl", mesh: Mesh | None = None, blocks_per_call: int | None = None,
                 budget_bytes: int | None = None):
        get_fitness(fitness)
        self.cfg, self.fitness, self.supernet = cfg, fitness, supernet
        self.model = as_blocks(params, cfg, mesh)
        self.mesh = self.model.mesh
        self.batch = batch if self.mesh is None else round_up(batch, axis_size(self.mesh, "candidate"))
        if blocks_per_call is None:
            blocks_per_call = default_blocks_per_call(supernet, self.model, self.batch)
        self.blocks_per_call = max(1, min(blocks_per_call, cfg.n_layers))
        self.head = self.model.head
        self.budget = device_memory_bytes() if budget_bytes is None else budget_bytes
        self.fitness_chunks(1, 1, 1)  # a budget below one position of the head fails before any work

    def fitness_chunks(self, windows: int, length: int, k: int) -> FitnessChunks:
        return scoring_chunks(self.model, self.batch, windows, length, k, self.budget)

    def windows_per_forward(self, windows: int, length: int, k: int) -> int:
        """Windows (all devices) of one forward for a token batch of `windows` × `length`
        (`scoring_windows`, for the candidates and windows of one device)."""
        split = data_split(self.mesh)
        n_local = -(-windows // split)
        itemsize = self.model.head["embed"].dtype.itemsize
        level_itemsize = self.supernet.block(0).wo.dtype.itemsize
        batch = self.batch // axis_size(self.mesh, "candidate") if self.mesh is not None else self.batch
        tensor = axis_size(self.mesh, "mlp") if self.mesh is not None else 1
        fixed = self.model.resident_bytes() + call_bytes(self.cfg, batch, self.blocks_per_call, itemsize,
                                                         level_itemsize, tensor)
        size = scoring_windows(self.cfg, batch, n_local, length, k, self.budget, fixed, itemsize)
        return min(windows, size * split)

    def __call__(self, genomes: np.ndarray, parent: np.ndarray, tokens: np.ndarray, t_idx: np.ndarray,
                 t_logp: np.ndarray, use_prefix: bool = True) -> np.ndarray:
        """Each genome's mean per-token fitness on the token batch. A batch larger than one
        forward (`windows_per_forward`) runs in chunks of windows of one size, the last padded;
        the chunks' loss sums make the mean."""
        genomes, parent = np.asarray(genomes, np.int32), np.asarray(parent, np.int32)
        n, length, k = np.shape(t_idx)
        size = self.windows_per_forward(n, length, k)
        if size >= n:
            return self._scores(genomes, parent, jnp.asarray(tokens), jnp.asarray(t_idx), jnp.asarray(t_logp),
                                use_prefix)
        tokens, t_idx, t_logp = (padded_windows(np.asarray(a), size) for a in (tokens, t_idx, t_logp))
        sums = np.zeros(len(genomes), np.float64)
        for start in range(0, n, size):
            part = slice(start, start + size)
            sums += self._scores(genomes, parent, jnp.asarray(tokens[part]), jnp.asarray(t_idx[part]),
                                 jnp.asarray(t_logp[part]), use_prefix, valid=min(size, n - start))
        return sums / (n * length)

    def _scores(self, genomes: np.ndarray, parent: np.ndarray, tokens: jax.Array, t_idx: jax.Array,
                t_logp: jax.Array, use_prefix: bool, valid: int | None = None) -> np.ndarray:
        """Each genome's mean fitness on these windows, or with `valid` its loss sum over the first `valid`."""
        chunks = self.fitness_chunks(*t_idx.shape)
        starts = first_changed_block(genomes, parent) if use_prefix else np.zeros(len(genomes), np.int64)
        order = np.argsort(starts, kind="stable")
        batches = [order[i:i + self.batch] for i in range(0, len(order), self.batch)]
        batch_starts = [int(starts[idx].min()) for idx in batches]
        entering = self.parent_inputs(parent, tokens, set(batch_starts))
        scores = np.empty(len(genomes), np.float64)
        for idx, start in zip(batches, batch_starts):
            chunk = genomes[idx]
            if len(idx) < self.batch:  # pad with copies so every call has one shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(idx), 0)])
            h = self._repeat(entering[start])
            for first in range(start, self.cfg.n_layers, self.blocks_per_call):
                h = self._blocks(first, self.cfg.n_layers, chunk, h)
            scores[idx] = np.asarray(self._fitness(h, t_idx, t_logp, chunks, valid))[: len(idx)]
        return scores

    def parent_inputs(self, parent: np.ndarray, tokens: jax.Array, blocks: set[int]) -> dict[int, jax.Array]:
        """The parent's hidden state (1, B, T, d) entering each of `blocks` (n_layers: its last
        block's output), computed block by block up to the last one asked for."""
        if self.mesh is None:
            h = parent_embedding(self.head, tokens)
        else:
            inputs = {"head": (self.head, self.model.head_axes()), "tokens": (tokens, Axes("batch", "seq"))}
            h = sharded_call(parent_embedding, self.mesh, inputs, CANDIDATE_HIDDEN, head_dim=self.cfg.head_dim)
        out = {0: h} if 0 in blocks else {}
        stop = max(blocks)
        for first in range(0, stop, self.blocks_per_call):
            states = self._blocks(first, stop, parent[None], h, with_states=True)
            out.update({b: states[b - first] for b in blocks if first < b <= first + self.blocks_per_call})
            h = states[-1]
        return out

    def call_blocks(self, first: int, stop: int) -> list[int]:
        """The blocks of the call starting at `first`: blocks from `stop` on (which are not run)
        repeat the last block before it, so only blocks that run are read."""
        return [min(b, stop - 1) for b in range(first, first + self.blocks_per_call)]

    def candidate_levels(self, blocks: list[int], genomes: np.ndarray) -> BlockLevels:
        """The levels `genomes (C, 2L)` use in `blocks`, stacked (k, C, ...) on the host."""
        shapes = self.supernet.block(blocks[0])
        g = Genome(genomes)
        levels = BlockLevels(*(host_buffer((len(blocks), len(genomes), *a.shape[1:]), a.dtype) for a in shapes))
        for j, b in enumerate(blocks):
            if j and b == blocks[j - 1]:  # a repeated block: a copy of the one before, not read again
                for a in levels:
                    a[j] = a[j - 1]
            else:
                self.supernet.gather(b, g.attention[:, b], g.mlp[:, b], out=BlockLevels(*(a[j] for a in levels)))
        return levels

    def put_levels(self, levels: BlockLevels) -> BlockLevels:
        """Levels from `candidate_levels` on the device(s) that run them (on a mesh, candidates
        over the candidate axes, heads and neurons over tensor)."""
        if self.mesh is None:
            return jax.device_put(levels)
        return put_axes(levels, CANDIDATE_LEVELS, self.mesh, self.cfg.head_dim)

    def _blocks(self, first: int, stop: int, genomes: np.ndarray, h: jax.Array, with_states: bool = False) -> jax.Array:
        """The call of the blocks from `first` on `h`, the output of the call before: this
        call's levels are read while that one runs, and put on the device once it has finished,
        so one call's levels and blocks are on the device at a time (dispatch runs no further ahead)."""
        blocks = self.call_blocks(first, stop)
        host_levels = self.candidate_levels(blocks, genomes)
        jax.block_until_ready(h)
        levels = self.put_levels(host_levels)
        layers = self.model.stacked(blocks)
        n_run = jnp.int32(stop - first)
        if self.mesh is None:
            return candidate_blocks(layers, self.cfg, n_run, levels, h, with_states=with_states)
        inputs = {
            "layers": (layers, stacked_axes(layers)),
            "n_run": (n_run, REPLICATED),
            "levels": (levels, CANDIDATE_LEVELS),
            "h": (h, CANDIDATE_HIDDEN),
        }
        return sharded_call(candidate_blocks, self.mesh, inputs, BLOCK_STATES if with_states else CANDIDATE_HIDDEN,
                            head_dim=self.cfg.head_dim, static={"cfg": self.cfg, "with_states": with_states})

    def _repeat(self, h: jax.Array) -> jax.Array:
        if self.mesh is None:
            return repeat_candidates(h, self.batch)
        return sharded_call(repeat_candidates, self.mesh, {"h": (h, CANDIDATE_HIDDEN)}, CANDIDATE_HIDDEN,
                            head_dim=self.cfg.head_dim, static={"n": self.batch})

    def _fitness(self, h: jax.Array, t_idx: jax.Array, t_logp: jax.Array, chunks: FitnessChunks,
                 valid: int | None = None) -> jax.Array:
        extra = {} if valid is None else {"valid": jnp.int32(valid)}
        if self.mesh is None:
            return candidate_fitness(self.head, self.cfg, h, t_idx, t_logp, fitness=self.fitness, chunks=chunks,
                                     **extra)
        inputs = {
            "head": (self.head, self.model.head_axes()),
            "h": (h, CANDIDATE_HIDDEN),
            "t_idx": (t_idx, Axes("batch", "seq")),
            "t_logp": (t_logp, Axes("batch", "seq")),
            **{name: (value, REPLICATED) for name, value in extra.items()},
        }
        return sharded_call(candidate_fitness, self.mesh, inputs, REPLICATED, head_dim=self.cfg.head_dim,
                            static={"cfg": self.cfg, "fitness": self.fitness, "chunks": chunks})
