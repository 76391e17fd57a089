"""A supernet build of the default model's first 2 blocks (16 calibration windows, quick preset), timed.

    OPENBLAS_NUM_THREADS=1 python experiments/bench_supernet_threads.py /tmp/one.npz
    python experiments/bench_supernet_threads.py /tmp/default.npz

Saves every level and mask to the .npz given, to compare two builds (e.g. with and without
OPENBLAS_NUM_THREADS=1, which sets the threads of the LAPACK factorizations in the local pruner).
"""
import dataclasses
import sys
import time

import jax
import numpy as np

import tyrjax
from tyrjax.tyr.pipeline import PRESETS, initial_grid
from tyrjax.tyr.supernet import build_supernet
model = tyrjax.load_model()
cfg = dataclasses.replace(model.cfg, n_layers=2)
params = dict(model.params, layers=jax.tree_util.tree_map(lambda a: a[:2], model.params["layers"]))
calib = tyrjax.calibration_windows(model, calib_windows=16)
grid = initial_grid(cfg, 0.5, PRESETS["quick"])
build_supernet(params, cfg, calib[:2], grid, progress=False)  # compiles the calls the timed build makes
t = time.perf_counter()
sn = build_supernet(params, cfg, calib, grid, progress=False)
wall = time.perf_counter() - t
np.savez(sys.argv[1], *[np.asarray(a) for b in range(2) for a in sn.block(b)])
print(f"build {wall:.1f} s")
