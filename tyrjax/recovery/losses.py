"""Fine-tuning losses: KL from the dense teacher at its top-k tokens, the next-token loss, or both."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import Params, logits_from_hidden
from tyrjax.tyr.fitness import FitnessChunks, kl_topk, topk_logprobs

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
    """Mean over positions of KL(teacher ‖ student) at the teacher's top-k tokens, both renormalised
    there (the search's fitness, `tyr.fitness.kl_topk`)."""
    return jnp.mean(kl_topk(topk_logprobs(head, cfg, h, t_idx, chunks), t_logp))


def lm_loss(head: Params, cfg: ModelConfig, h: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood of the windows `tokens` (B, T)."""
    logp = jax.nn.log_softmax(logits_from_hidden(head, cfg, h[:, :-1]), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def lm_loss_bytes(cfg: ModelConfig, windows: int, length: int) -> int:
    """Per-device bytes of the next-token loss's logits, their log-softmax and gradient."""
    return 3 * 4 * windows * length * cfg.vocab_size
