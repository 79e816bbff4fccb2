"""Where the meta-training state lives: the task axis split over every device.

The engine's per-task state has the task axis first (see
:mod:`lopt.metatrain.unroll`), so data parallelism is one ``NamedSharding`` per
task group: each device (of one host or of many, see
:mod:`lopt.metatrain.distributed`) holds and advances its share of the tasks,
both antithetic branches of a task staying together. Meta-parameters, the
meta-optimizer state, task data and metrics are replicated. Nothing else
changes: the estimators reduce with plain means/sums over the task axis, which
XLA turns into an all-reduce inside the same jitted step, and every random
key is derived per task index (never per device), so the result does not
depend on the device count -- up to float summation order.

Task groups of a mixture may have any size. The devices are arranged as a
mesh with one axis per prime factor of the device count, and a group of
``n`` tasks is split over the axes whose product divides ``n``: over
``gcd(n, devices)`` devices, replicated over the rest. A group whose size is
a multiple of the device count (the efficient case) is split over all of
them; :meth:`TaskMesh.describe` names any group that is not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@functools.cache
def _replicator(sharding: NamedSharding):
    """A jitted copy of a pytree, fully replicated (so every process can read all of it)."""
    return jax.jit(lambda tree: tree, out_shardings=sharding)


@dataclasses.dataclass(frozen=True)
class TaskMesh:
    """A device mesh whose axes (all ``tasks*``) together split the task axis."""

    mesh: Mesh

    @classmethod
    def create(cls, devices: Sequence[jax.Device] | None = None) -> "TaskMesh":
        """All devices of all processes by default (``jax.devices()`` order: by process)."""
        devices = list(jax.devices() if devices is None else devices)
        shape = _prime_factors(len(devices)) or [1]
        names = tuple(f"tasks{i}" for i in range(len(shape)))
        return cls(Mesh(np.array(devices, dtype=object).reshape(shape), names))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def task_axes(self, num_tasks: int) -> tuple[str, ...]:
        """Mesh axes that split ``num_tasks`` tasks (their product is gcd(num_tasks, devices))."""
        axes, used = [], 1
        for name, size in self.mesh.shape.items():
            if num_tasks % (used * size) == 0:
                axes.append(name)
                used *= size
        return tuple(axes)

    def devices_per_group(self, num_tasks: int) -> int:
        return math.gcd(num_tasks, self.num_devices)

    def tasks(self, num_tasks: int) -> NamedSharding:
        """Sharding of an array whose leading axis holds ``num_tasks`` tasks."""
        axes = self.task_axes(num_tasks)
        return NamedSharding(self.mesh, PartitionSpec(axes if axes else None))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def describe(self, group_sizes: Sequence[int]) -> str | None:
        """A one-line note when some group cannot use every device (None when all can)."""
        partial = [(n, self.devices_per_group(n)) for n in group_sizes if n % self.num_devices]
        if not partial:
            return None
        detail = ", ".join(f"{n} tasks over {d}" for n, d in partial)
        return (
            f"task groups not a multiple of the {self.num_devices} devices run partly replicated "
            f"({detail}); use multiples of {self.num_devices} tasks for full speed"
        )

    # -------------------------------------------------------------- host <-> device
    def put(self, tree: Any, shardings: Any) -> Any:
        """Host (numpy) values -> global arrays; each process supplies only its own shards.

        Works with one process or many (every process passes the same full values).
        """
        def one(x, sharding):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

        if isinstance(shardings, NamedSharding):
            return jax.tree.map(lambda x: one(x, shardings), tree)
        return jax.tree.map(one, tree, shardings)

    def gather(self, tree: Any) -> Any:
        """Global arrays -> full numpy values on every process (a collective with >1 process)."""
        if jax.process_count() > 1:  # one jitted all-gather for the whole tree
            tree = _replicator(self.replicated)(tree)
        return jax.device_get(tree)

    def state_shardings(self, state: Any, group_sizes: Sequence[int]) -> Any:
        """Shardings of the trainer state ``{"meta_params", "opt_state", "est"}``.

        ``state`` may be abstract (``jax.eval_shape``). Everything is replicated
        except the estimator's per-group inner states and PES accumulators,
        which are split on their leading task axis.
        """
        rep = self.replicated
        est = state["est"]
        per_group = [self.tasks(n) for n in group_sizes]
        groups = tuple(jax.tree.map(lambda _, s=s: s, g) for g, s in zip(est.groups, per_group))
        accum = est.accum
        if accum is not None:
            accum = tuple(jax.tree.map(lambda _, s=s: s, a) for a, s in zip(accum, per_group))
        return {
            "meta_params": jax.tree.map(lambda _: rep, state["meta_params"]),
            "opt_state": jax.tree.map(lambda _: rep, state["opt_state"]),
            "est": est.replace(groups=groups, accum=accum),
        }
