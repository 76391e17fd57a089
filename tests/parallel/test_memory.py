"""The per-device memory budget and the chunk sizes derived from it."""
import jax
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.parallel.memory import CPU_DEFAULT_BYTES, GB, chunking, device_memory_bytes


def test_budget_from_the_flag_or_the_device():
    assert device_memory_bytes(2.5) == 2_500_000_000
    # CPU devices report no allocation limit, so the documented fixed default applies
    assert jax.devices()[0].platform == "cpu"
    assert device_memory_bytes() == CPU_DEFAULT_BYTES
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(TyrjaxError, match="--device-memory"):
            device_memory_bytes(bad)


def test_chunk_is_the_largest_that_fits_and_a_multiple():
    c = chunking(1000, bytes_per_item=10, budget_bytes=1000, fixed_bytes=200, phase="search")
    assert c.size == 80 and c.n_chunks == 13 and c.padded == 1040
    assert 200 + c.size * 10 <= 1000 < 200 + (c.size + 1) * 10
    c = chunking(1000, bytes_per_item=10, budget_bytes=1000, fixed_bytes=200, phase="search", multiple=32)
    assert c.size == 64 and c.n_chunks == 16
    # everything fits: one chunk of all items (rounded up to the multiple)
    assert chunking(10, 1, 10**9, phase="p").size == 10
    assert chunking(10, 1, 10**9, phase="p", multiple=4).size == 12


def test_too_small_a_budget_names_the_phase_and_the_smallest_budget():
    with pytest.raises(TyrjaxError) as err:
        chunking(100, bytes_per_item=1 * GB, budget_bytes=int(2 * GB), fixed_bytes=1.5 * GB, phase="supernet")
    text = str(err.value)
    assert text.startswith("supernet needs at least 2.5 GB") and "--device-memory 2.5" in text
