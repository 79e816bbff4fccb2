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

The main thread waits for every warm-up to finish before sampling any
estimator (:meth:`Warmer.drain`, which also runs queued warm-ups on the main
thread), so no program is ever compiled twice at once and no compile runs
while an estimator is timed.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import threading
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
    """Warms estimators in submission order on one worker thread (a no-op on a 1-core machine).

    :meth:`drain` lets the main thread take queued warm-ups itself once it has
    nothing else to compile, and waits for the rest: after it, no compile runs,
    so the estimators' seconds per estimate are measured on an otherwise quiet
    machine (a compile on the other core slowed a PES step 1.6x).
    """

    def __init__(self, enabled: bool = True):
        self.pool = cf.ThreadPoolExecutor(1, thread_name_prefix="lopt-diagnose-warm") if enabled else None
        self.futures: dict[int, cf.Future] = {}
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()

    @staticmethod
    def useful() -> bool:
        """Whether a second compile thread has a core to run on."""
        return (os.cpu_count() or 1) >= 2

    def submit(self, index: int, est: Any, meta_params, data, key, chains: int) -> None:
        if self.pool is None:
            return
        fut: cf.Future = cf.Future()
        self.futures[index] = fut
        with self._lock:
            self._queue.append((fut, (est, meta_params, data, key, chains)))
        self.pool.submit(self._run_next)

    def _run_next(self) -> bool:
        """Runs the oldest queued warm-up on this thread; False when none was left."""
        with self._lock:
            if not self._queue:
                return False
            fut, args = self._queue.popleft()
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(warm_estimator(*args))
            except BaseException as err:  # re-raised by wait()
                fut.set_exception(err)
        return True

    def drain(self) -> None:
        """Run what is still queued on the calling thread too, then wait until every warm-up is done."""
        while self._run_next():
            pass
        cf.wait(list(self.futures.values()))

    def wait(self, index: int) -> CompileTime | None:
        """The warm-up's compile time once it is done (None if ``index`` was not warmed); re-raises its error."""
        fut = self.futures.pop(index, None)
        return None if fut is None else fut.result()

    def close(self) -> None:
        if self.pool is not None:
            for fut in self.futures.values():
                fut.cancel()
            self.pool.shutdown(wait=True)
