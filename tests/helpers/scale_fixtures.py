"""A tiny model, its calibration windows and Týr settings for the multi-device, multi-host and
resume checks. The checks run as scripts in child processes because the simulated device count
(XLA_FLAGS) must be in the environment before jax is imported; `run_check` starts them."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.tyr.pipeline import TyrConfig

CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, intermediate_size=32)
TCFG = TyrConfig(iterations=1, generations=2, offspring=6, stages=((6, 32), (2, 32), (1, 32)), topk=8,
                 candidate_batch=4, mlp_multiple=8, interval=0.25, reprune_final=False)
SPARSITY = 0.4
HERE = Path(__file__).parent


def configure_jax() -> None:
    """What a check process sets before computing: the suite's matmul precision, and one-device
    programs run on the calling thread (the same results, without a thread hand-off per program,
    which dominates these tiny checks on a busy 2-core machine)."""
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.config.update("jax_cpu_enable_async_dispatch", False)


def tiny_model():
    """(params, calibration windows): eight windows of 16 tokens, so windows split over 8 devices."""
    params = init_random_params(CFG, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
    return params, calib


def tyr_config(**changes) -> TyrConfig:
    return dataclasses.replace(TCFG, **changes)


def compile_cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment variables that make child processes share XLA executables through `cache_dir`:
    a process that compiles what an earlier one did reads it back instead (the same programs,
    so the same results), whatever the compile took."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def device_env(n_devices: int, cache_dir: Path | None = None) -> dict[str, str]:
    """The environment of a child process that sees `n_devices` simulated CPU devices (and shares
    compiled programs with the other children given the same `cache_dir`)."""
    env = dict(os.environ)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={n_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    if cache_dir is not None:
        env.update(compile_cache_env(cache_dir))
    return env


def run_check(script: str, args: list[str], n_devices: int, timeout: float = 900,
              cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run `tests/script` in a fresh process with `n_devices` CPU devices; its output is captured."""
    return subprocess.run([sys.executable, str(HERE / script), *args], env=device_env(n_devices, cache_dir),
                          capture_output=True, text=True, timeout=timeout)
