import os
import sys
from pathlib import Path

# Shared fixtures and the scripts some tests run as subprocesses live in tests/helpers/.
sys.path.insert(0, str(Path(__file__).parent / "helpers"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
