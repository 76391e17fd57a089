"""Host memory XLA's CPU compiler takes to compile the local pruner's down_proj call (default model).

    python experiments/compile_memory.py

Compiles `_prune_levels_jit` for down_proj's shapes (1536 × 576, 9 levels, 16 rounds) from
abstract arrays, nothing executed, and prints how much the process's resident high-water mark
and resident set grew: memory a process-level peak counts and `memory_analysis()` does not.
"""
from pathlib import Path

import jax
import jax.numpy as jnp

from tyrjax.structured import local_pruner


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    jax.devices()
    S = jax.ShapeDtypeStruct
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts at the current resident set
    base = status_bytes("VmRSS")
    local_pruner._prune_levels_jit.lower(S((1536, 576), jnp.float32), S((1536, 1536), jnp.float32), S((9,), jnp.int32),
                                         1, 16, "tyr", S((), jnp.float32)).compile()
    print(f"compiling down_proj's pruner: peak +{(status_bytes('VmHWM') - base) / 1e9:.2f} GB, "
          f"resident +{(status_bytes('VmRSS') - base) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
