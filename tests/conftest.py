import os
import sys
from pathlib import Path

# Shared fixtures and the scripts some tests run as subprocesses live in tests/helpers/.
sys.path.insert(0, str(Path(__file__).parent / "helpers"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite's programs are small, so XLA's CPU compile is most of its time; LLVM at -O0 compiles
# them in about half the time. Their results differ from the default level's only by float
# rounding (contracted multiply-adds), within the suite's tolerances. Child processes inherit the
# flag (`scale_fixtures.device_env`); every figure in README and RESULTS is at the default level.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0'.strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
