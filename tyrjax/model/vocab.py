"""The LM head over the vocabulary in chunks: chosen tokens' logits and the log-normaliser.

A step computes the logits of one chunk of vocabulary columns, picks the logits of the tokens
asked for that fall in it (scalars, no head rows gathered per token) and updates a running
log-sum-exp; no more than tokens × chunk logits exist at once. The chunk width is static, so
one compiled function serves every chunk; the last chunk is shifted back to end at the
vocabulary's end and its columns already counted are masked out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tyrjax.parallel.memory import chunking

# Vocabulary chunks are multiples of this many columns (an accelerator's lane width).
VOCAB_MULTIPLE = 128
# fp32 values alive per logit of a vocabulary chunk: the logits, the masked logits, their exponentials.
LOGIT_TEMPORARIES = 3
LOGIT_BYTES = 4 * LOGIT_TEMPORARIES


def logits_at(h: jax.Array, w: jax.Array, ids: jax.Array, vocab_chunk: int) -> tuple[jax.Array, jax.Array]:
    """fp32 logits (..., m) of tokens `ids (..., m)` and the log-normaliser (...) over the whole
    vocabulary, from normed hidden states `h (..., d)` and the head `w (d, V)`, computed
    `vocab_chunk` columns at a time."""
    vocab = w.shape[1]
    c = min(vocab_chunk, vocab)

    def step(carry, j):
        top, total, picked = carry
        start = j * c
        first = jnp.minimum(start, vocab - c)
        logits = jnp.einsum("...d,dv->...v", h, jax.lax.dynamic_slice_in_dim(w, first, c, axis=1),
                            preferred_element_type=jnp.float32)
        new = jnp.where(first + jnp.arange(c) >= start, logits, -jnp.inf)
        top_new = jnp.maximum(top, new.max(-1))
        total = total * jnp.exp(top - top_new) + jnp.exp(new - top_new[..., None]).sum(-1)
        at_ids = jnp.take_along_axis(logits, jnp.clip(ids - first, 0, c - 1), axis=-1)
        inside = (ids >= start) & (ids < start + c)
        return (top_new, total, jnp.where(inside, at_ids, picked)), None

    init = (jnp.full(ids.shape[:-1], -jnp.inf, jnp.float32), jnp.zeros(ids.shape[:-1], jnp.float32),
            jnp.zeros(ids.shape, jnp.float32))
    (top, total, picked), _ = jax.lax.scan(step, init, jnp.arange(-(-vocab // c)))
    return picked, top + jnp.log(total)


def widest_vocab_chunk(vocab: int, tokens: int, budget_bytes: int, fixed_bytes: float, phase: str) -> int:
    """The widest vocabulary chunk whose logits for `tokens` tokens fit `budget_bytes` next to
    `fixed_bytes`; fails naming `phase` when not even one chunk of `VOCAB_MULTIPLE` columns fits."""
    size = chunking(vocab, tokens * LOGIT_BYTES, budget_bytes, fixed_bytes=fixed_bytes, phase=phase,
                    multiple=min(VOCAB_MULTIPLE, vocab)).size
    return min(size, vocab)
