"""The per-device memory budget every phase is chunked to.

A run has one budget, `--device-memory GB`: by default what the device reports it may
allocate (`memory_stats()["bytes_limit"]` on GPUs and TPUs), and `CPU_DEFAULT_BYTES` on CPU
devices, which report none. A phase splits what can be split (windows, tokens, vocabulary
rows, levels, candidates) into chunks of one size fixed before its loop, so every chunk runs
the same compiled function; the last chunk is padded to that size by the caller.
"""
from __future__ import annotations

import dataclasses
import math

import jax

from tyrjax.errors import TyrjaxError

GB = 1e9
CPU_DEFAULT_BYTES = 16 * 10**9  # a fixed, documented default: CPU devices report no limit


def device_memory_bytes(gb: float | None = None, device: jax.Device | None = None) -> int:
    """The budget in bytes: `gb` when given, else what `device` (default: the first device)
    reports it may allocate, else `CPU_DEFAULT_BYTES`."""
    if gb is not None:
        if not math.isfinite(gb) or gb <= 0:
            raise TyrjaxError(f"--device-memory {gb}: must be a positive number of GB (e.g. --device-memory 16)")
        return int(gb * GB)
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory statistics raise various errors)
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else CPU_DEFAULT_BYTES


@dataclasses.dataclass(frozen=True)
class Chunking:
    """`n_items` split into `n_chunks` chunks of `size` items (the last padded to `size`)."""

    n_items: int
    size: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.size)

    @property
    def padded(self) -> int:
        return self.n_chunks * self.size


def chunking(n_items: int, bytes_per_item: float, budget_bytes: int, *, fixed_bytes: float = 0, phase: str,
             multiple: int = 1) -> Chunking:
    """The largest chunk of `n_items` (a multiple of `multiple`, at most `n_items` rounded up to
    it) for which `fixed_bytes + size * bytes_per_item` fits `budget_bytes`.

    A budget below one chunk of `multiple` items stops here, naming the phase and the smallest
    budget that works, before any work starts."""
    if n_items < 1 or multiple < 1:
        raise ValueError(f"{phase}: n_items {n_items} and multiple {multiple} must be positive")
    smallest = fixed_bytes + multiple * bytes_per_item
    if smallest > budget_bytes:
        raise TyrjaxError(
            f"{phase} needs at least {smallest / GB:.3g} GB per device (one chunk of {multiple}), but the budget is "
            f"{budget_bytes / GB:.3g} GB; pass --device-memory {math.ceil(smallest / GB * 100) / 100:g} or more, "
            f"or use more devices")
    fit = int((budget_bytes - fixed_bytes) // bytes_per_item) if bytes_per_item > 0 else n_items
    most = -(-n_items // multiple) * multiple
    size = max(multiple, min(most, fit // multiple * multiple))
    return Chunking(n_items, size)
