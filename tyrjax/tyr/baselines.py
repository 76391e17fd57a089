"""Structured baselines on a whole model: Wanda-sp, magnitude and FLAP (ALGORITHMS.md §3).

They prune the same groups as Týr (query heads = `o_proj` input groups, neurons = `down_proj`
inputs) and return the masked form, so they are evaluated, exported and compared exactly
like a Týr result.

- `wanda-sp`, `magnitude`: every layer removes the counts of the uniform distribution (the
  centre of Týr's first grid, `initial_grid(...).centre`, MLP counts multiples of
  `mlp_multiple`); the lowest-scoring groups go; no weight changes. A block whose heads free
  KV heads removes fewer neurons in its MLP, worth their parameters (`budget.KVLedger`), so
  the compact model removes `sparsity` of the attention+MLP parameters. Wanda-sp calibrates
  block by block on the stream of the *already pruned* blocks (attention before the MLP, which
  sees the pruned attention's output), like the other pruners. Magnitude needs no data.
- `flap`: one forward pass of the *dense* model (as the FLAP paper) gives every layer's
  fluctuation scores `Var(X_p)·||W_p||²`; they are standardised per layer and ranked
  globally across all layers and both module types. Groups are removed lowest first, each
  costing its parameters (a head its q columns and o rows, plus its KV head's k/v columns when
  it is the last query head of that KV head; a neuron its gate/up/down weights), and the
  removed prefix whose total is closest to `sparsity · cfg.attn_mlp_params()` plus the
  compensation biases FLAP adds is taken (the FLAP reference's rule; ties: fewer removals), so
  the compact model is within half a group's parameters of the budget. Any layer may lose all
  its heads or all its neurons, and a block both (it then adds only the compensation biases:
  depth pruning, which FLAP's global ranking can choose); the masked and compact forms handle zero-width layers. Removed channels are
  compensated by biases `bo`, `b_down` (`flap_bias` with the dense-pass means), added to
  existing ones, and the returned config has `o_bias=down_bias=True`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from tyrjax.calibration.statistics import (InputStats, attention_inputs, attention_residual, check_finite, embed_windows,
                                           mlp_inputs, mlp_residual)

from tyrjax.model.blocks import ModelBlocks, data_split, device_bytes, layer, map_chunks
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import Params, compact_from_blocks, compact_from_masked, is_stacked, kept_layout
from tyrjax.parallel.sharding import host_array, resolve_mesh
from tyrjax.structured.scores import (flap_bias, flap_scores, flap_standardise, keep_lowest_removed,
                                         magnitude_scores, wanda_sp_scores)
from tyrjax.tyr.budget import KVLedger, kv_head_params, neuron_params, query_head_params
from tyrjax.tyr.genome import split
from tyrjax.parallel.memory import device_memory_bytes
from tyrjax.tyr.pipeline import TyrConfig, initial_grid, removed_groups
from tyrjax.tyr.supernet import Capture, capture_windows

METHODS = ("wanda-sp", "magnitude", "flap")
CHUNK = 8  # calibration windows per attention call (bounds the attention scores' memory)
# fp32 copies of a layer's captured input a window needs while its residual runs on every
# captured window in one call: the input, its masked copy and the projection's operand
RESIDUAL_COPIES = 3

Model = Params | ModelBlocks  # the masked (stacked) form held in memory, or served block by block
BaselineResult = tuple[Model, ModelConfig, np.ndarray, np.ndarray, dict[str, Any]]


def structured_baseline(
    params: Model,
    cfg: ModelConfig,
    calib_windows: np.ndarray | None,
    sparsity: float,
    method: str,
    *,
    mlp_multiple: int = 32,
    progress: bool = True,
    mesh: Mesh | None = None,
    budget_bytes: int | None = None,
) -> BaselineResult:
    """Prune the dense masked-form model with a baseline: `(params, cfg, head_mask, ffn_mask, info)`.

    Masks are bool `(L, H)` / `(L, F)`, True = kept. `params`/`cfg` come back unchanged except
    for FLAP, which adds the compensation biases. `calib_windows` (`(n, T)` token ids) is
    ignored by `magnitude`. `info` holds the per-layer removed heads/neurons, the removed
    attention+MLP parameters (KV heads freed by GQA included) and the achieved fraction.
    On a mesh (default: the one of `sharding.use_mesh`, if any) the calibration passes run
    sharded, windows over the data axes, heads and neurons over tensor; the result equals the
    one-device one and comes back on this process. A layer's captured inputs for every window
    are held when they fit `budget_bytes` per device (default: what the device reports), else
    summed over chunks of windows (`tyr.supernet.capture_windows`) and captured again for the
    next block's input.

    `params` may be `ModelBlocks` (e.g. `checkpoints.streaming.StreamedBlocks`): every pass then
    asks for one block at a time, on the blocks' mesh, and the first element returned is
    `ModelBlocks` too (FLAP's biases added as each block is asked for); `compact_model` makes
    the compact model of either form. The masks and biases equal the held model's.
    """
    if method not in METHODS:
        raise TyrjaxError(f"structured baseline: method {method!r} unknown; use one of {', '.join(METHODS)}")
    _check_model(params, cfg)
    mesh = params.mesh if isinstance(params, ModelBlocks) else resolve_mesh(mesh)
    extra: dict[str, Any] = {}
    if method == "flap":
        params_out, cfg_out, head, ffn, extra = _flap(params, cfg, _windows(calib_windows), sparsity, progress, mesh,
                                                      budget_bytes)
    else:
        counts = initial_grid(cfg, sparsity, TyrConfig(mlp_multiple=mlp_multiple)).centre
        ledger = KVLedger(cfg, mlp_multiple)
        if method == "magnitude":
            head, ffn = _magnitude_masks(params, cfg, counts, ledger)
        else:
            head, ffn = _wanda_sp_masks(params, cfg, _windows(calib_windows), counts, ledger, progress, mesh,
                                        budget_bytes)
        params_out, cfg_out = params, cfg
    info = {**_info(method, cfg, sparsity, head, ffn), **extra}
    return params_out, cfg_out, head, ffn, info


# --- validation ---------------------------------------------------------------------------
def _check_model(params: Model, cfg: ModelConfig) -> None:
    stacked = isinstance(params, ModelBlocks) or is_stacked(params)  # blocks served one by one have no form
    if not stacked or cfg.is_compact:
        raise TyrjaxError("structured baseline: expects a dense model in the masked (stacked) form, not a pruned one")


def _windows(calib_windows: np.ndarray | None) -> np.ndarray:
    windows = None if calib_windows is None else np.asarray(calib_windows)
    if windows is None or windows.ndim != 2 or windows.size == 0:
        shape = None if windows is None else windows.shape
        raise TyrjaxError(f"structured baseline: expected calibration windows (n_windows, length), got {shape}")
    return windows


# --- the model, held or block by block -----------------------------------------------------
def _block(params: Model, index: int, cfg: ModelConfig, mesh: Mesh | None) -> Params:
    """Block `index` laid out on `mesh`: a slice of the held layers, or the one `ModelBlocks` serves."""
    return params.block(index) if isinstance(params, ModelBlocks) else layer(params, index, cfg, mesh)


def _head(params: Model) -> Params:
    """The parameters outside the blocks (the embedding is all the passes use of them)."""
    return params.head if isinstance(params, ModelBlocks) else params


def _resident_bytes(params: Model) -> int:
    """Bytes per device a pass holds beside its captures: what the model keeps resident (all of
    it when held, the head when served block by block) and one block."""
    if isinstance(params, ModelBlocks):
        return params.resident_bytes() + device_bytes(params.block(0))
    return device_bytes(params) + device_bytes(layer(params, 0))


def compact_model(params: Model, cfg: ModelConfig, head: np.ndarray, ffn: np.ndarray) -> tuple[Params, ModelConfig]:
    """The compact model of a baseline's result (`structured_baseline`'s first two elements)
    under its masks; `ModelBlocks` are compacted one block at a time."""
    if isinstance(params, ModelBlocks):
        return compact_from_blocks(params.head, (params.block(i) for i in range(cfg.n_layers)), cfg, head, ffn)
    return compact_from_masked(params, cfg, head, ffn)


# --- uniform baselines --------------------------------------------------------------------
def _magnitude_masks(params: Model, cfg: ModelConfig, counts: np.ndarray,
                     ledger: KVLedger) -> tuple[np.ndarray, np.ndarray]:
    """Data-free: the lowest group norms of o_proj / down_proj rows, uniform counts (the MLP's
    settled by `ledger`)."""
    head_counts, ffn_counts = split(counts)
    head, ffn = [], []
    for b in range(cfg.n_layers):
        p = params.block(b) if isinstance(params, ModelBlocks) else {k: params["layers"][k][b] for k in ("wo", "w_down")}
        head.append(np.asarray(keep_lowest_removed(magnitude_scores(p["wo"], cfg.head_dim), int(head_counts[b]))))
        n_neurons = ledger.mlp_removal(head[-1], int(ffn_counts[b]))
        ffn.append(np.asarray(keep_lowest_removed(magnitude_scores(p["w_down"], 1), n_neurons)))
    return np.stack(head), np.stack(ffn)


def _wanda_keep(W: jnp.ndarray, stats: InputStats, group_size: int, n_remove: int, where: str) -> jnp.ndarray:
    """Keep mask of one layer: drop the `n_remove` lowest Wanda-sp scores of its inputs' statistics."""
    check_finite(stats, where)
    return keep_lowest_removed(wanda_sp_scores(W, jnp.sqrt(stats.sq_norm), group_size), n_remove)


def capture_chunk(params: Model, cfg: ModelConfig, windows: np.ndarray, mesh: Mesh | None,
                  budget_bytes: int | None) -> int | None:
    """Windows (all devices) whose captured layer inputs a block pass holds at once, or None
    when every window's fit `budget_bytes` (default: what the device reports)."""
    split = data_split(mesh)
    n_local, length = -(-len(windows) // split), windows.shape[1]
    budget = device_memory_bytes() if budget_bytes is None else budget_bytes
    resident = _resident_bytes(params)
    size = capture_windows(cfg, n_local, length, budget, resident, "structured baseline", RESIDUAL_COPIES)
    return None if size >= n_local else size * split


def _capture(fn, x: jax.Array, size: int | None, mesh: Mesh | None) -> Capture:
    """`tyr.supernet.Capture` of `fn` applied `CHUNK` windows (per device) at a time."""
    return Capture(lambda xs: map_chunks(fn, xs, CHUNK), x, size, mesh)


def _wanda_sp_masks(params: Model, cfg: ModelConfig, windows: np.ndarray, counts: np.ndarray, ledger: KVLedger,
                    progress: bool, mesh: Mesh | None, budget_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Block by block on the pruned stream: attention, then the MLP on the pruned attention's output
    (its count settled by `ledger`)."""
    size = capture_chunk(params, cfg, windows, mesh, budget_bytes)
    x = embed_windows(_head(params), windows, mesh)
    head_counts, ffn_counts = split(counts)
    head, ffn = [], []
    for b in tqdm(range(cfg.n_layers), desc="wanda-sp", unit="block", disable=not progress):
        p = _block(params, b, cfg, mesh)
        heads = _capture(lambda xs, p=p: attention_inputs(p, cfg, xs, mesh=mesh)[1], x, size, mesh)
        keep_h = _wanda_keep(p["wo"], heads.stats, cfg.head_dim, int(head_counts[b]), f"block {b} o_proj")
        x = heads.next_stream(lambda xs, h, p=p: attention_residual(p, cfg, xs, h, keep_h), x)
        del heads
        hidden = _capture(lambda xs, p=p: mlp_inputs(p, cfg, xs, mesh=mesh)[1], x, size, mesh)
        n_neurons = ledger.mlp_removal(host_array(keep_h), int(ffn_counts[b]))
        keep_f = _wanda_keep(p["w_down"], hidden.stats, 1, n_neurons, f"block {b} down_proj")
        x = hidden.next_stream(lambda xs, h, p=p: mlp_residual(p, xs, h, keep_f), x)
        del hidden
        head.append(host_array(keep_h))
        ffn.append(host_array(keep_f))
    return np.stack(head), np.stack(ffn)


# --- FLAP -----------------------------------------------------------------------------------
class FlapStats(NamedTuple):
    """Per block: standardised scores of heads / neurons and the mean o_proj / down_proj inputs."""

    z_heads: np.ndarray  # (L, H)
    z_neurons: np.ndarray  # (L, F)
    mean_heads: jnp.ndarray  # (L, H*hd)
    mean_hidden: jnp.ndarray  # (L, F)


def flap_pass(params: Model, cfg: ModelConfig, windows: np.ndarray, progress: bool = False,
              mesh: Mesh | None = None, budget_bytes: int | None = None) -> FlapStats:
    """One forward pass of the dense model collecting FLAP's scores and input means (captures
    chunked to `budget_bytes` per device as `structured_baseline` says)."""
    size = capture_chunk(params, cfg, windows, mesh, budget_bytes)
    x = embed_windows(_head(params), windows, mesh)
    z_h, z_n, m_h, m_n = [], [], [], []
    for b in tqdm(range(cfg.n_layers), desc="flap", unit="block", disable=not progress):
        p = _block(params, b, cfg, mesh)
        heads = _capture(lambda xs, p=p: attention_inputs(p, cfg, xs, mesh=mesh)[1], x, size, mesh)
        stats = heads.stats
        check_finite(stats, f"block {b} o_proj")
        z_h.append(flap_standardise(flap_scores(p["wo"], stats.var, cfg.head_dim)))
        m_h.append(stats.mean)
        x = heads.next_stream(lambda xs, h, p=p: attention_residual(p, cfg, xs, h), x)
        del heads
        hidden = _capture(lambda xs, p=p: mlp_inputs(p, cfg, xs, mesh=mesh)[1], x, size, mesh)
        stats = hidden.stats
        check_finite(stats, f"block {b} down_proj")
        z_n.append(flap_standardise(flap_scores(p["w_down"], stats.var, 1)))
        m_n.append(stats.mean)
        x = hidden.next_stream(lambda xs, h, p=p: mlp_residual(p, xs, h), x)
        del hidden
    return FlapStats(np.stack([host_array(z) for z in z_h]), np.stack([host_array(z) for z in z_n]),
                     jnp.asarray(np.stack([host_array(m) for m in m_h])), jnp.asarray(np.stack([host_array(m) for m in m_n])))


def _removal_costs(cfg: ModelConfig, order_rank: np.ndarray) -> np.ndarray:
    """Parameters freed by removing each head (first L·H entries) and neuron, in the global order.

    A head also frees its KV head's k/v columns when it is the last of that KV head's query
    heads to go (the highest rank in its group), so prefix sums are the exact removed totals.
    """
    L, H, F = cfg.n_layers, cfg.n_heads, cfg.intermediate_size
    head_p, neuron_p, kv_p = query_head_params(cfg), neuron_params(cfg), kv_head_params(cfg)
    head_cost = np.full((L, cfg.n_kv_heads, cfg.group_size), head_p, np.int64)
    ranks = order_rank[: L * H].reshape(L, cfg.n_kv_heads, cfg.group_size)
    last = ranks.argmax(axis=2)
    np.put_along_axis(head_cost, last[..., None], head_p + kv_p, axis=2)
    return np.concatenate([head_cost.reshape(-1), np.full(L * F, neuron_p, np.int64)])


def flap_select(cfg: ModelConfig, z_heads: np.ndarray, z_neurons: np.ndarray,
                budget: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Global ranking: remove the lowest standardised scores (heads and neurons of every layer)
    until the removed parameters are closest to `budget`; returns (head keep, ffn keep, removed).

    Ties in score: heads before neurons, lower block first (stable order).
    """
    L, H, F = cfg.n_layers, cfg.n_heads, cfg.intermediate_size
    scores = np.concatenate([np.ravel(z_heads), np.ravel(z_neurons)]).astype(np.float64)
    order = np.argsort(scores, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    totals = np.concatenate([[0], np.cumsum(_removal_costs(cfg, rank)[order])])
    n_remove = int(np.argmin(np.abs(totals - budget)))  # first minimum: fewer removals on ties
    keep = np.ones(order.size, bool)
    keep[order[:n_remove]] = False
    return keep[: L * H].reshape(L, H), keep[L * H:].reshape(L, F), int(totals[n_remove])


def _add_bias(layers: Params, name: str, bias: jnp.ndarray, dtype: Any) -> jnp.ndarray:
    """The stacked bias `name` plus `bias`, in the weights' dtype (zeros where it did not exist)."""
    old = layers.get(name)
    return (bias if old is None else old.astype(jnp.float32) + bias).astype(dtype)


def flap_compensate(params: Params, cfg: ModelConfig, stats: FlapStats, head: np.ndarray,
                    ffn: np.ndarray) -> tuple[Params, ModelConfig]:
    """Add FLAP's biases for the removed channels; the config gains `o_bias`/`down_bias`."""
    lay = params["layers"]
    bo = jnp.stack([flap_bias(lay["wo"][b].astype(jnp.float32), stats.mean_heads[b], jnp.asarray(head[b]),
                              cfg.head_dim) for b in range(cfg.n_layers)])
    bd = jnp.stack([flap_bias(lay["w_down"][b].astype(jnp.float32), stats.mean_hidden[b], jnp.asarray(ffn[b]), 1)
                    for b in range(cfg.n_layers)])
    layers = dict(lay, bo=_add_bias(lay, "bo", bo, lay["wo"].dtype),
                  b_down=_add_bias(lay, "b_down", bd, lay["w_down"].dtype))
    return dict(params, layers=layers), cfg.replace(o_bias=True, down_bias=True)


class CompensatedBlocks(ModelBlocks):
    """`ModelBlocks` with FLAP's biases for the removed channels added to each block as it is
    asked for (`flap_compensate` block by block); `cfg` has `o_bias`/`down_bias`."""

    def __init__(self, blocks: ModelBlocks, stats: FlapStats, head: np.ndarray, ffn: np.ndarray):
        self.blocks, self.stats, self.head_mask, self.ffn_mask = blocks, stats, head, ffn
        self.cfg = blocks.cfg.replace(o_bias=True, down_bias=True)
        self.head, self.mesh = blocks.head, blocks.mesh

    def block(self, index: int) -> Params:
        p, hd = self.blocks.block(index), self.cfg.head_dim
        bo = flap_bias(p["wo"].astype(jnp.float32), self.stats.mean_heads[index], jnp.asarray(self.head_mask[index]), hd)
        bd = flap_bias(p["w_down"].astype(jnp.float32), self.stats.mean_hidden[index],
                       jnp.asarray(self.ffn_mask[index]), 1)
        return dict(p, bo=_add_bias(p, "bo", bo, p["wo"].dtype), b_down=_add_bias(p, "b_down", bd, p["w_down"].dtype))

    def resident_bytes(self) -> int:
        return self.blocks.resident_bytes()


def _flap(params: Model, cfg: ModelConfig, windows: np.ndarray, sparsity: float,
          progress: bool, mesh: Mesh | None, budget_bytes: int | None = None) -> BaselineResult:
    if not 0.0 < sparsity < 1.0:
        raise TyrjaxError(f"--sparsity {sparsity}: must lie strictly between 0 and 1")
    stats = flap_pass(params, cfg, windows, progress, mesh, budget_bytes)
    added = cfg.hidden_size * cfg.n_layers * ((not cfg.o_bias) + (not cfg.down_bias))
    budget = sparsity * cfg.attn_mlp_params() + added  # the compact model keeps the added biases
    head, ffn, _ = flap_select(cfg, stats.z_heads, stats.z_neurons, budget)
    if isinstance(params, ModelBlocks):
        params_out: Model = CompensatedBlocks(params, stats, head, ffn)
        cfg_out = params_out.cfg
    else:
        params_out, cfg_out = flap_compensate(params, cfg, stats, head, ffn)
    return params_out, cfg_out, head, ffn, {"budget_params": int(round(budget)), "added_bias_params": int(added)}


# --- report ---------------------------------------------------------------------------------
def kept_attn_mlp_params(cfg: ModelConfig, head: np.ndarray, ffn: np.ndarray) -> int:
    """Attention+MLP parameters of the compact model these masks give (freed KV heads dropped)."""
    layouts = [kept_layout(h, cfg.group_size) for h in np.asarray(head, bool)]
    compact = cfg.replace(
        layer_heads=tuple(len(lay[0]) for lay in layouts),
        layer_kv_heads=tuple(len(lay[1]) for lay in layouts),
        layer_ffn=tuple(int(n) for n in np.asarray(ffn, bool).sum(1)),
        layer_kv_map=tuple(lay[2] for lay in layouts),
    )
    return compact.attn_mlp_params()


def _info(method: str, cfg: ModelConfig, sparsity: float, head: np.ndarray, ffn: np.ndarray) -> dict[str, Any]:
    total = cfg.attn_mlp_params()
    removed = total - kept_attn_mlp_params(cfg, head, ffn)
    return {
        "method": method,
        "target_sparsity": float(sparsity),
        "removed_heads": [int(n) for n in (~head).sum(1)],
        "removed_neurons": [int(n) for n in (~ffn).sum(1)],
        "removed": removed_groups(head, ffn).tolist(),
        "removed_params": int(removed),
        "total_params": int(total),
        "achieved_sparsity": removed / total,
    }
