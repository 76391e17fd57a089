"""Size flags checked against the memory they need, before any work: each refusal names the
flag, what the size needs and its largest workable value.

The byte counts are the activations a phase holds at once for one item (a calibration window, a
batch row), in fp32, against the per-device budget (`parallel.memory.device_memory_bytes`, set
by `--device-memory` where a command has it) less the parameters held beside them. On a mesh
the items are split over the devices of the data axes, so each device holds its share.
"""
from __future__ import annotations

import math

from tyrjax.api.configs import DataConfig
from tyrjax.checkpoints.loading import Model
from tyrjax.data.corpora import CALIB_LENGTH, EVAL_LENGTH
from tyrjax.errors import TyrjaxError
from tyrjax.model.blocks import ModelBlocks, data_split, device_bytes
from tyrjax.model.config import ModelConfig
from tyrjax.parallel.memory import GB
from tyrjax.parallel.sharding import resolve_mesh

F32 = 4


def calibration_bytes_per_window(cfg: ModelConfig, length: int, streams: int = 1) -> int:
    """The calibration activations one window holds for the whole run: its hidden states, per
    stream (the pruned model's, and the dense model's where a method also follows it). A block's
    own activations are not counted: each phase runs them in window chunks sized to the budget."""
    return streams * length * F32 * cfg.hidden_size


def evaluation_bytes_per_window(cfg: ModelConfig, length: int) -> int:
    """One evaluation window's activations in a block's forward: the hidden states, one head's
    attention scores at a time for every head (`n_heads x length x length`) and the MLP's three
    activations."""
    return length * F32 * (3 * cfg.hidden_size + cfg.n_heads * length + 3 * cfg.intermediate_size)


def largest_fitting(per_item: float, budget_bytes: int, resident_bytes: float, devices: int = 1) -> int:
    """How many items fit `budget_bytes` per device beside `resident_bytes`, split over `devices`."""
    room = budget_bytes - resident_bytes
    return max(int(room // per_item), 0) * devices if per_item > 0 else 1 << 62


def check_fits(flag: str, count: int, per_item: float, budget_bytes: int, resident_bytes: float, what: str,
               devices: int = 1, budget_flag: str | None = None) -> None:
    """Refuse `count` items of `per_item` bytes when they do not fit the budget beside the
    resident parameters; `budget_flag` names the flag that sets the budget, if the command has one."""
    largest = largest_fitting(per_item, budget_bytes, resident_bytes, devices)
    if count <= largest:
        return
    need = resident_bytes + -(-count // devices) * per_item
    if largest > 0:
        fix = f"use {flag} {largest} or fewer"
        if budget_flag:
            fix += f", or a larger {budget_flag} if the device has the memory"
    elif budget_flag:
        fix = f"even one does not fit; the smallest budget that works is {budget_flag} {smallest_gb(resident_bytes + per_item)}"
    else:
        fix = f"even one does not fit; use {flag} 1 on a larger device"
    raise TyrjaxError(
        f"{flag} {count}: {what} need {gigabytes(need)} per device with the parameters, but the per-device budget "
        f"is {gigabytes(budget_bytes)}; {fix}")


def smallest_gb(n: float) -> str:
    """`n` bytes as a --device-memory value, rounded up to two significant digits."""
    value = n / GB
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return f"{math.ceil(value / scale) * scale:.6g}"


def gigabytes(n: float) -> str:
    value = n / GB
    return f"{value:,.0f} GB" if value >= 100 else f"{value:.3g} GB"


def check_calibration_windows(cfg: ModelConfig, count: int, length: int, budget_bytes: int, resident_bytes: float,
                              streams: int = 1, devices: int = 1, budget_flag: str | None = None) -> None:
    """`--calib-windows` against the memory of the calibration activations (`calibration_bytes_per_window`)."""
    check_fits("--calib-windows", count, calibration_bytes_per_window(cfg, length, streams), budget_bytes,
               resident_bytes, f"{count} calibration windows of {length} tokens", devices, budget_flag)


def check_eval_batch(cfg: ModelConfig, batch: int, eval_windows: int, length: int, budget_bytes: int,
                     resident_bytes: float, budget_flag: str | None = None) -> None:
    """`--batch-size` against the evaluation windows there are and the memory of one batch's forward."""
    if batch > eval_windows:
        raise TyrjaxError(f"--batch-size {batch}: there are {eval_windows} evaluation windows per corpus "
                          f"(--eval-windows); use --batch-size {eval_windows} or fewer")
    check_fits("--batch-size", batch, evaluation_bytes_per_window(cfg, length), budget_bytes, resident_bytes,
               f"batches of {batch} windows of {length} tokens", budget_flag=budget_flag)


def decode_bytes_per_row(cfg: ModelConfig, prompt: int, new_tokens: int, itemsize: int) -> int:
    """One batch row of a KV-cached decode: the caches of every layer for the prompt and the new
    tokens, and the prefill's logits, attention scores and hidden and MLP activations (fp32)."""
    positions = prompt + new_tokens
    cache = sum(2 * positions * cfg.kv_heads(i) * cfg.head_dim for i in range(cfg.n_layers)) * itemsize
    widest_heads = max(cfg.heads(i) for i in range(cfg.n_layers))
    widest_mlp = max(cfg.ffn(i) for i in range(cfg.n_layers))
    prefill = prompt * F32 * (cfg.vocab_size + widest_heads * positions + 3 * cfg.hidden_size + 3 * widest_mlp)
    return cache + prefill


def check_decode_batch(cfg: ModelConfig, batch: int, prompt: int, new_tokens: int, itemsize: int, budget_bytes: int,
                       resident_bytes: float, flag: str = "--batch-sizes") -> None:
    """The largest batch of a decode benchmark against the memory of its caches and its prefill."""
    check_fits(flag, batch, decode_bytes_per_row(cfg, prompt, new_tokens, itemsize), budget_bytes, resident_bytes,
               f"batches of {prompt}-token prompts and {new_tokens} new tokens")


def held_bytes(model: Model) -> int:
    """Bytes per device of the parameters a loaded model holds (a streamed model: its head)."""
    params = model.params
    return params.resident_bytes() if isinstance(params, ModelBlocks) else device_bytes(params)


def check_run_sizes(model: Model, data: DataConfig, calib_windows: int | None, budget_bytes: int,
                    streams: int = 1, budget_flag: str | None = None) -> None:
    """A run's calibration windows (None: it calibrates nothing) and evaluation batch against
    the memory they need, on the active mesh, before any work."""
    resident = held_bytes(model)
    if calib_windows is not None and streams:
        check_calibration_windows(model.cfg, calib_windows, CALIB_LENGTH, budget_bytes, resident, streams,
                                  data_split(resolve_mesh(None)), budget_flag)
    check_eval_batch(model.cfg, data.batch_size, data.eval_windows, EVAL_LENGTH, budget_bytes, resident, budget_flag)
