"""Multi-host meta-training on JAX's distributed runtime.

Every process runs the same program (``lopt train --distributed`` on every
host); :func:`initialize` connects them before JAX touches a device, after
which ``jax.devices()`` lists the devices of all hosts and the trainer's
:class:`~lopt.metatrain.sharding.TaskMesh` spans them, so each process holds and
advances its share of the tasks. Process 0 alone writes checkpoints, metrics
and the final optimizer; every process reads the checkpoint on resume (the
output directory must be visible to all of them, e.g. a shared file system).

Coordinator address, process count and process id come from the flags, else
from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``,
else from JAX's auto-detection (Cloud TPU pod slices, SLURM, Open MPI, ...).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from lopt.metatrain.unroll import MetaTrainError


class DistributedError(MetaTrainError):
    """The distributed runtime could not be set up, or the processes disagree."""


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not an integer") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Join the distributed runtime; must run before any JAX computation in this process."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"number of processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"process id {process_id} is not in [0, {num_processes})")
    # CPU hosts need a collectives backend for cross-process all-reduces (GPUs/TPUs bring their
    # own); keep one the user chose (e.g. JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi).
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"could not join the distributed runtime (coordinator={coordinator}, "
            f"num_processes={num_processes}, process_id={process_id}): {first}"
        ) from None


def is_main_process() -> bool:
    """True on the process that writes files (process 0; the only one without --distributed)."""
    return jax.process_index() == 0


def all_values(value: int) -> list[int]:
    """``value`` from every process, in process order (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)]


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a collective)."""
    return any(all_values(int(bool(flag))))


def preemption_step_reached(step: int) -> bool:
    """True on every process at the same step once any of them got SIGTERM (a preemption notice).

    JAX's preemption service (active after :func:`initialize`) catches SIGTERM and
    agrees on a common step in the background; must be called at every step.
    """
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))
