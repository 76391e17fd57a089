"""Fine-tuning losses: KL from the dense teacher at its top-k tokens, the next-token loss, or both."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params, logits_from_hidden
from tyrjax.model.vocab import LOGIT_BYTES, VOCAB_MULTIPLE, widest_vocab_chunk
from tyrjax.parallel.memory import chunking
from tyrjax.tyr.fitness import TOKENS_PER_VOCAB_STEP, FitnessChunks, topk_logprobs

LOSSES = ("kd", "lm", "kd+lm")


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise TyrjaxError(f"--loss {loss}: unknown; use one of {', '.join(LOSSES)}")


def uses_teacher(loss: str) -> bool:
    return "kd" in loss.split("+")


def uses_lm(loss: str) -> bool:
    return "lm" in loss.split("+")


def kd_loss(head: Params, cfg: ModelConfig, h: jax.Array, t_idx: jax.Array, t_logp: jax.Array,
            chunks: FitnessChunks) -> jax.Array:
    """Mean over positions of KL(teacher ‖ student) at the teacher's top-k tokens: the teacher's
    log-probabilities renormalised over its top-k, the student's over the whole vocabulary.

    Unlike the search's fitness (`tyr.fitness.kl_topk`, which renormalises the student over the
    top-k too and so only ranks candidates), this is zero only when the student puts all its mass
    on the top-k, as the teacher's renormalised distribution does: a student trained on it cannot
    move probability outside the top-k unpunished. `chunks` must not gather rows (whose values
    leave out the student's normaliser)."""
    s_logp = topk_logprobs(head, cfg, h, t_idx, chunks)
    return jnp.mean(jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1))


def kd_chunks(cfg: ModelConfig, windows: int, length: int, k: int, budget_bytes: int, fixed_bytes: float) -> FitnessChunks:
    """The largest chunks of the KD loss's head (`topk_logprobs`, whole-vocabulary normaliser) for
    `windows` of `length` positions per device beside `fixed_bytes`, within `budget_bytes`."""
    per_token = 4 * cfg.hidden_size + 16 * k
    step = windows * min(length, TOKENS_PER_VOCAB_STEP)
    narrowest = min(VOCAB_MULTIPLE, cfg.vocab_size)
    if fixed_bytes + step * (per_token + LOGIT_BYTES * narrowest) <= budget_bytes:
        vocab = widest_vocab_chunk(cfg.vocab_size, step, budget_bytes, fixed_bytes + step * per_token, "fine-tuning")
    else:
        vocab = narrowest
    tokens = chunking(length, windows * (per_token + LOGIT_BYTES * vocab), budget_bytes, fixed_bytes=fixed_bytes,
                      phase="fine-tuning").size
    return FitnessChunks(tokens, vocab)


def lm_loss(head: Params, cfg: ModelConfig, h: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood of the windows `tokens` (B, T)."""
    logp = jax.nn.log_softmax(logits_from_hidden(head, cfg, h[:, :-1]), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def lm_loss_bytes(cfg: ModelConfig, windows: int, length: int) -> int:
    """Per-device bytes of the next-token loss's logits, their log-softmax and gradient."""
    return 3 * 4 * windows * length * cfg.vocab_size
