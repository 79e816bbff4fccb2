"""Compile the estimators' programs in a background thread while the reference runs.

A ``lopt diagnose`` run is mostly compiling (BENCHMARKS.md: 50-70% of its wall
time), and one XLA:CPU compile keeps about one core busy. So on a machine with
two or more cores the estimators' programs are compiled ahead of time, one at a
time, on a worker thread, while the main thread compiles and samples the
reference gradient and samples the estimators whose programs are ready. Warming
starts after the probe that predicts backprop's compile time, whose CPU seconds
(all threads of the process) must not include another compile. ``jax.jit``
keeps what ``lower(...).compile()`` built, so each estimator's sampling finds
its programs compiled: the samples are the same numbers as without warming
(same programs, same inputs; tested).

The main thread waits for an estimator's warm-up before sampling it, so no
program is ever compiled twice at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from typing import Any

import jax

from lopt.metatrain import diagnose_core as core
from lopt.metatrain.diagnose_compile import CompileTime
from lopt.metatrain.estimators import ESTIMATORS


def warm_estimator(est: Any, meta_params, data, key, chains: int) -> CompileTime:
    """Compile every program :func:`~lopt.metatrain.diagnose_core.sample_estimator` will call for ``est``.

    ``key`` and ``chains`` are those of the later sampling call (only their
    shapes matter: programs are cached per static estimator and input shapes).
    The CPU seconds are this thread's (the process's would include whatever
    the main thread does meanwhile; XLA's own helper threads are not counted).
    """
    t0, c0 = time.perf_counter(), time.thread_time()
    keys = jax.random.split(key, chains)
    state = jax.eval_shape(lambda: core._init_chains(est, meta_params, keys, init_groups=core._init_groups.fun))
    if state.groups:  # full_es keeps no state: nothing to initialize
        core._init_groups.lower(core.shared_init_unroller(est.unroller), meta_params, keys).compile()
    if core.burn_in_steps(est) and isinstance(est, ESTIMATORS["backprop"]):
        core._advance_chains.lower(est.unroller, meta_params, state.groups, keys, data).compile()
    core._step_chains.lower(est, meta_params, state, keys, data).compile()
    return CompileTime(time.perf_counter() - t0, time.thread_time() - c0)


class Warmer:
    """Warms estimators in submission order on one worker thread (a no-op pool on a 1-core machine)."""

    def __init__(self, enabled: bool = True):
        self.pool = cf.ThreadPoolExecutor(1, thread_name_prefix="lopt-diagnose-warm") if enabled else None
        self.futures: dict[int, cf.Future] = {}

    @staticmethod
    def useful() -> bool:
        """Whether a second compile thread has a core to run on."""
        return (os.cpu_count() or 1) >= 2

    def submit(self, index: int, est: Any, meta_params, data, key, chains: int) -> None:
        if self.pool is not None:
            self.futures[index] = self.pool.submit(warm_estimator, est, meta_params, data, key, chains)

    def wait(self, index: int) -> CompileTime | None:
        """The warm-up's compile time once it is done (None if ``index`` was not warmed); re-raises its error."""
        fut = self.futures.pop(index, None)
        return None if fut is None else fut.result()

    def close(self) -> None:
        if self.pool is not None:
            for fut in self.futures.values():
                fut.cancel()
            self.pool.shutdown(wait=True)
