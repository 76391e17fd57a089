"""tyrjax models as lm-evaluation-harness language models.

`TyrjaxLM` answers the harness's three request types (`loglikelihood`,
`loglikelihood_rolling`, `generate_until`) for dense, masked (head/ffn masks) and compact
(pruned) models. Scoring is batched and jitted: rows are sorted by length and padded to a few
bucketed lengths so that a whole task compiles a handful of times, and the LM head (a large
share of a small model's forward) runs only at the positions whose log-probabilities a
request asks for.
"""
from __future__ import annotations

import importlib
from functools import partial
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.generate import decode_step, empty_caches, sample_next
from tyrjax.model.layers import KVCache
from tyrjax.checkpoints.loading import Model, require_tokenizer
from tyrjax.model.decoder import (
    Params,
    embed,
    final_hidden,
    is_stacked,
    lm_head_weight,
    run_layers_compact,
    run_layers_masked,
    to_compact,
)
INSTALL_HINT = "install it with `pip install 'tyrjax[eval]'` (or `pip install lm_eval==0.4.13`)"


def require_lm_eval() -> None:
    """Fail with one clear message when lm-evaluation-harness is not installed."""
    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise TyrjaxError(
            f"zero-shot tasks need lm-evaluation-harness (lm_eval), which is not installed; {INSTALL_HINT}"
        ) from None


require_lm_eval()

from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

TokenRequest = tuple[Any, list[int], list[int]]
PREFILL_CHUNK = 64


# --- jitted scoring ------------------------------------------------------------------------
def hidden_states(
    params: Params, cfg: ModelConfig, tokens: jax.Array, head_mask: jax.Array | None, ffn_mask: jax.Array | None
) -> jax.Array:
    """The last block's output (B, T, d) of either form; masks apply to the masked form."""
    x = embed(params, tokens)
    if is_stacked(params):
        return run_layers_masked(params["layers"], cfg, x, head_mask, ffn_mask)
    x, _ = run_layers_compact(params["layers"], cfg, x, jnp.arange(tokens.shape[1]))
    return x


@partial(jax.jit, static_argnums=1)
def target_logprobs(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    targets: jax.Array,
    head_mask: jax.Array | None = None,
    ffn_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Log-probability (B, K) of `targets` as the next token after each of `positions`, and
    whether each target is the argmax there; the head runs at those K positions only."""
    x = hidden_states(params, cfg, tokens, head_mask, ffn_mask)
    picked = jnp.take_along_axis(x, positions[:, :, None], axis=1)
    logits = jnp.einsum(
        "bkd,dv->bkv", final_hidden(params, cfg, picked), lm_head_weight(params), preferred_element_type=jnp.float32
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logp, targets[:, :, None], axis=-1)[..., 0]
    return chosen, jnp.argmax(logits, axis=-1) == targets


# --- batching ------------------------------------------------------------------------------
def bucket_length(n: int, cap: int, smallest: int = 16) -> int:
    """The padded length for `n` tokens: the smallest of 16, 24, 32, 48, 64, 96, ... that holds
    `n` (at most 1.5x the need), never above `cap`."""
    size = smallest
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, cap)


def bucket_count(n: int, smallest: int = 8) -> int:
    """Scored positions per row: a power of two, at least `smallest` (the head at a few
    extra positions costs less than compiling for each short continuation length)."""
    return max(smallest, 1 << max(n - 1, 0).bit_length())


def pack_groups(
    groups: list[tuple[list[int], list[tuple[int, int]]]], pad_id: int, length_cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded arrays for groups of (model input tokens, [(position, target), ...]): tokens (B, T),
    the input positions whose next-token log-probability is asked (B, K), the targets there
    (B, K) and which of the K slots are real (B, K)."""
    t = bucket_length(max(len(inputs) for inputs, _ in groups), length_cap)
    most = max(len(scored) for _, scored in groups)
    k = min(bucket_count(most), max(t, most))
    tokens = np.full((len(groups), t), pad_id, np.int32)
    positions = np.zeros((len(groups), k), np.int32)
    targets = np.zeros((len(groups), k), np.int32)
    valid = np.zeros((len(groups), k), bool)
    for i, (inputs, scored) in enumerate(groups):
        tokens[i, :len(inputs)] = inputs
        positions[i, :len(scored)] = [p for p, _ in scored]
        targets[i, :len(scored)] = [t for _, t in scored]
        valid[i, :len(scored)] = True
    return tokens, positions, targets, valid


def scored_pairs(seq: list[int], n: int) -> list[tuple[int, int]]:
    """(input position, target) of the last `n` tokens of `seq`, whose input is `seq[:-1]`."""
    inputs = len(seq) - 1
    return [(p, seq[p + 1]) for p in range(inputs - n, inputs)]


def pack_rows(
    rows: list[tuple[list[int], int]], pad_id: int, length_cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded arrays for rows of (token sequence, n): the sequence minus its last token is the
    model input, and its last n tokens are scored. Returns tokens (B, T), the input positions
    that predict them (B, K), those tokens (B, K) and which of the K slots are real (B, K)."""
    return pack_groups([(seq[:-1], scored_pairs(seq, n)) for seq, n in rows], pad_id, length_cap)


def shared_inputs(rows: list[tuple[list[int], int]]) -> list[tuple[list[int], list[int]]]:
    """Rows grouped by their model input (`seq[:-1]`): (input, indices of the rows), in first-seen
    order. Requests that differ only in their last token (one-token answers such as MMLU's
    A/B/C/D after the same prompt) share one forward pass."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (seq, _) in enumerate(rows):
        groups.setdefault(tuple(seq[:-1]), []).append(i)
    return [(list(key), members) for key, members in groups.items()]


ATTENTION_BUDGET = 16 * 1024 * 1024  # rows x length^2 of one batch: a batch of 16 rows of 1024 tokens


def rows_per_batch(length: int, batch_size: int, budget: int = ATTENTION_BUDGET) -> int:
    """Rows of `length` padded tokens scored together: `batch_size`, fewer where the attention
    scores (rows x length^2 per head) would pass `budget` (MMLU's longest 5-shot prompts run
    to thousands of tokens), at least one."""
    return max(1, min(batch_size, budget // (length * length)))


def length_batches(lengths: list[int], batch_size: int, length_cap: int) -> list[tuple[int, int]]:
    """(start, rows) of consecutive batches over rows sorted longest first: each batch takes
    `rows_per_batch` of its first (longest) row's padded length; the last of a size is padded."""
    batches, start = [], 0
    while start < len(lengths):
        size = rows_per_batch(bucket_length(lengths[start], length_cap), batch_size)
        batches.append((start, size))
        start += size
    return batches


def prefill(params: Params, cfg: ModelConfig, prompt: list[int], caches: list[KVCache]) -> tuple[jax.Array, list[KVCache]]:
    """Feed a prompt into the caches in chunks of `PREFILL_CHUNK` tokens, then one token at a
    time, so that prompts of any length share two compiled shapes; returns the last logits."""
    whole = len(prompt) - len(prompt) % PREFILL_CHUNK
    pieces = [prompt[s:s + PREFILL_CHUNK] for s in range(0, whole, PREFILL_CHUNK)] + [[t] for t in prompt[whole:]]
    for piece in pieces:
        logits, caches = decode_step(params, cfg, jnp.asarray([piece], jnp.int32), caches)
    return logits, caches


class TyrjaxLM(TemplateLM):
    """A tyrjax model (dense, masked or compact) answering lm-evaluation-harness requests.

    `head_mask (L, H)` and `ffn_mask (L, F)` prune a masked-form model without compacting it;
    `batch_size` rows are scored per call, fewer for long rows (`rows_per_batch`; a short batch
    is padded to the same size so that compilations depend on lengths only); `max_length` caps the context (default: the model's
    positions)."""

    def __init__(
        self,
        model: Model,
        batch_size: int = 16,
        max_length: int | None = None,
        head_mask: Any = None,
        ffn_mask: Any = None,
        max_gen_toks: int = 256,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise TyrjaxError(f"zero-shot batch size {batch_size} must be a positive integer")
        self.model = model
        self._tok = require_tokenizer(model)
        self.params, self.cfg = model.params, model.cfg
        if (head_mask is not None or ffn_mask is not None) and not is_stacked(model.params):
            raise TyrjaxError(
                "head/ffn masks apply to a masked (dense-shaped) model; this model is compact (already pruned): drop the masks"
            )
        self.head_mask = None if head_mask is None else jnp.asarray(head_mask, model.params["embed"].dtype)
        self.ffn_mask = None if ffn_mask is None else jnp.asarray(ffn_mask, model.params["embed"].dtype)
        self.batch_size = batch_size
        self.max_length = min(max_length or model.cfg.max_position_embeddings, model.cfg.max_position_embeddings)
        self.max_gen_toks = max_gen_toks
        self.progress = progress
        self._compact: tuple[Params, ModelConfig] | None = None

    # --- tokens ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.cfg.eos_token_id
        if eos is None:
            raise TyrjaxError(f"{self.model.source}: config.json has no eos_token_id, needed as the end-of-text token")
        return eos

    @property
    def prefix_token_id(self) -> int:
        """The token that stands for an empty context: BOS when the model has one, else EOS."""
        return self.cfg.bos_token_id if self.cfg.bos_token_id is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.source)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self._tok.encode(string, add_special_tokens=bool(add_special_tokens)).ids

    def tok_decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    # --- loglikelihood --------------------------------------------------------------------
    def _scored_row(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """One request as (token sequence of at most `max_length` + 1 tokens, truncated from
        the left; how many of its last tokens are the continuation to score)."""
        if not continuation:
            raise TyrjaxError("a loglikelihood request has an empty continuation; the task gives nothing to score")
        whole = (context + continuation)[-(self.max_length + 1):]
        return whole, min(len(continuation), len(whole) - 1)

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(summed log-probability, greedy?) of each continuation. Requests with the same model
        input share a row (`shared_inputs`); rows run longest first, in batches of `batch_size`
        (the last padded with copies of its first row)."""
        rows = [self._scored_row(ctx, cont) for _, ctx, cont in requests]
        groups = [(inputs, members, [pair for i in members for pair in scored_pairs(*rows[i])])
                  for inputs, members in shared_inputs(rows)]
        order = sorted(range(len(groups)), key=lambda g: -len(groups[g][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        batches = length_batches([len(groups[g][0]) for g in order], self.batch_size, self.max_length)
        for start, size in tqdm(batches, desc="loglikelihood", unit="batch", disable=disable_tqdm or not self.progress, leave=False):
            batch = order[start:start + size]
            batch = batch + [batch[0]] * (size - len(batch))
            tokens, positions, targets, valid = pack_groups(
                [(groups[g][0], groups[g][2]) for g in batch], self.eot_token_id, self.max_length
            )
            logp, greedy = target_logprobs(
                self.params, self.cfg, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(targets),
                self.head_mask, self.ffn_mask,
            )
            logp, greedy = np.asarray(logp).astype(np.float64), np.asarray(greedy)
            for r, g in enumerate(batch):  # padding rows repeat their group's values
                slot = 0
                for i in groups[g][1]:
                    n = rows[i][1]
                    results[i] = (float(logp[r, slot:slot + n].sum()), bool(greedy[r, slot:slot + n].all()))
                    slot += n
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each string, scored in disjoint windows of `max_length`
        tokens (each conditioned on as much preceding text as fits), the first after the
        prefix token."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            pieces = get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )
            for context, continuation in map(make_disjoint_window, pieces):
                windows.append((None, context, continuation))
                owners.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, scores):
            totals[owner] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generation -----------------------------------------------------------------------
    def _compact_params(self) -> tuple[Params, ModelConfig]:
        """The compact form for KV-cached decoding (masks applied), built once."""
        if self._compact is None:
            if self.head_mask is not None or self.ffn_mask is not None:
                from tyrjax.model.decoder import compact_from_masked

                self._compact = compact_from_masked(
                    self.params, self.cfg,
                    None if self.head_mask is None else np.asarray(self.head_mask),
                    None if self.ffn_mask is None else np.asarray(self.ffn_mask),
                )
            else:
                self._compact = to_compact(self.params, self.cfg)
        return self._compact

    def _generate_one(self, context: str, gen_kwargs: dict, seed: int) -> str:
        """Decode after `context` until a stop string appears or `max_gen_toks` tokens;
        returns the text before the first stop string."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.get("until"), eos=self.tok_decode([self.eot_token_id]))
        max_new = int(kwargs["max_gen_toks"])
        if max_new >= self.max_length:
            raise TyrjaxError(f"generate_until: max_gen_toks {max_new} must be below the context length {self.max_length}")
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        top_k, top_p = int(kwargs.get("top_k") or 0), float(kwargs.get("top_p") or 1.0)
        prompt = (self.tok_encode(context) or [self.prefix_token_id])[-(self.max_length - max_new):]
        params, cfg = self._compact_params()
        cache_len = -(-(len(prompt) + max_new) // PREFILL_CHUNK) * PREFILL_CHUNK
        caches = empty_caches(cfg, 1, cache_len, params["embed"].dtype)
        key = jax.random.PRNGKey(seed)
        logits, caches = prefill(params, cfg, prompt, caches)
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            key, sub = jax.random.split(key)
            token = int(np.asarray(sample_next(sub, logits, temperature, top_k, top_p))[0])
            new.append(token)
            text = self.tok_decode(new)
            if token == self.eot_token_id or any(stop in text for stop in until):
                break
            logits, caches = decode_step(params, cfg, jnp.asarray([[token]], jnp.int32), caches)
        for stop in until:
            text = text.split(stop)[0]
        return text

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for i, req in enumerate(tqdm(requests, desc="generate_until", disable=disable_tqdm or not self.progress, leave=False)):
            context, gen_kwargs = req.args
            text = self._generate_one(context, dict(gen_kwargs), seed=i)
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out
