"""Multi-host runs: one JAX process per host, joined by `jax.distributed`; process 0 writes.

Every process runs the same program on the same inputs; arrays laid out on a mesh spanning
all processes' devices make the hosts compute one result together, and host-side decisions
(the search's selection) see identical values everywhere, so every process ends with the same
result. Only process 0 writes run files (`rundir.write_atomic` is the guard); resumable state
is read by every process, so the work directory must be on a filesystem all hosts share.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import numpy as np

from tyrjax.errors import TyrjaxError

ENV_COORDINATOR = "TYRJAX_COORDINATOR"
ENV_NUM_PROCESSES = "TYRJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "TYRJAX_PROCESS_ID"
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where this process joins: the coordinator's host:port, the process count and its index.

    `coordinator == "auto"` lets JAX detect all three (Cloud TPU, SLURM, Open MPI).
    """

    coordinator: str
    num_processes: int | None = None
    process_id: int | None = None


def _int_from_env(value: str | None, flag: str, env: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise TyrjaxError(f"${env}={value!r} is not an integer; set it (or {flag}) to a whole number") from None


def cluster_from(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Cluster | None:
    """The cluster the flags describe, each unset flag taken from `$TYRJAX_*`; None for a
    single-process run."""
    environ = os.environ if environ is None else environ
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_from_env(environ.get(ENV_NUM_PROCESSES), "--num-processes", ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _int_from_env(environ.get(ENV_PROCESS_ID), "--process-id", ENV_PROCESS_ID)
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise TyrjaxError(
                f"--num-processes / --process-id need --coordinator HOST:PORT (or ${ENV_COORDINATOR}); "
                "use --coordinator auto on a TPU pod or SLURM cluster"
            )
        return None
    if coordinator == AUTO:
        return Cluster(AUTO, num_processes, process_id)
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TyrjaxError(f"--coordinator {coordinator!r} must be HOST:PORT of process 0 (e.g. 10.0.0.1:1234) or auto")
    if num_processes is None or process_id is None:
        raise TyrjaxError(
            f"--coordinator {coordinator} needs --num-processes N and --process-id I (or ${ENV_NUM_PROCESSES}, "
            f"${ENV_PROCESS_ID})"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise TyrjaxError(
            f"--process-id {process_id} must lie in [0, --num-processes) = [0, {num_processes}) and "
            "--num-processes must be at least 1"
        )
    return Cluster(coordinator, num_processes, process_id)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Join the run's other processes when flags or `$TYRJAX_*` describe a cluster.

    Must run before anything else touches JAX's devices. CPU processes exchange data with gloo
    collectives. Returns True when this process is part of a multi-process run.
    """
    cluster = cluster_from(coordinator, num_processes, process_id, environ)
    if cluster is None:
        return is_distributed()
    if not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if cluster.coordinator == AUTO:
            jax.distributed.initialize(num_processes=cluster.num_processes, process_id=cluster.process_id)
        else:
            jax.distributed.initialize(
                coordinator_address=cluster.coordinator,
                num_processes=cluster.num_processes,
                process_id=cluster.process_id,
            )
    return is_distributed()


def is_distributed() -> bool:
    """True in a run of several JAX processes (this never starts a backend by itself)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    """True on the process that writes run files: process 0, or the only process."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def agree(value: int, what: str) -> int:
    """`value`, checked to be the same on every process (e.g. how much of a run is already
    done); one clear error everywhere when the processes disagree."""
    if not is_distributed():
        return value
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)
    if np.any(values != values[0]):
        raise TyrjaxError(
            f"{what}: the processes see different values {values.tolist()}; put the run's work directory on a "
            "filesystem every host shares, or delete it to start over"
        )
    return int(values[0])
