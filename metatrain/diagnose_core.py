"""Estimation core of ``lopt diagnose``: samples of each estimator and of the reference gradient.

The meta-objective every estimator of :mod:`lopt.metatrain.estimators` targets
is the *full-episode* one: for each task, the meta-loss terms of a whole
episode from a fresh start, summed, divided by the expected episode length
(the per-step meta-loss in the long run, which is what PES's mean estimates
over a stationary chain of staggered truncations: a truncation lands in an
episode with probability proportional to its length). With
``meta_loss: last`` a truncation's last step lands at a uniformly random
episode step (staggered starts), so the same per-step mean is the objective.

:class:`EpisodeObjective` computes it with the project's own
:class:`~lopt.metatrain.unroll.Unroller` (one branch, no stagger), advanced in
chunks under ``jax.checkpoint`` so that exact backprop through a 2,000-step
episode costs memory for ~sqrt(T) states rather than T. Where even that does
not fit, :mod:`lopt.metatrain.diagnose_subspace`'s directional derivatives
of it (or on request antithetic full-episode ES with common random numbers).

The estimators themselves are the trainer's (``ESTIMATORS``), built from the
config's unroller exactly as :func:`lopt.metatrain.build.build_estimator`
builds them; samples come from ``chains`` independent chains (a ``vmap`` over
estimator states) after a burn-in of one longest episode, so that every task
has left its shortened first episode and the chain is near stationarity.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lopt.metatrain.diagnose_compile import CHEAP_COMPILE, CompileTime, jit_with
from lopt.metatrain.estimators import ESTIMATORS
from lopt.metatrain.unroll import EpisodeSchedule, MetaTrainError, Unroller

KINDS = tuple(ESTIMATORS)  # es, pes, full_es, backprop


@dataclasses.dataclass(frozen=True)
class EstimatorSettings:
    """The estimator part of a config (``estimator.*``), plus full_es's episode length."""

    std: float = 0.01
    nonfinite: str = "clip"
    sign: bool = False
    episode_length: int = 2000  # full_es runs constant episodes of this length (as build_unroller does)


def unroller_for(kind: str, base: Unroller, settings: EstimatorSettings) -> Unroller:
    """The unroller ``kind`` runs on (mirrors :func:`lopt.metatrain.build.build_unroller`)."""
    if kind not in ESTIMATORS:
        raise MetaTrainError(f"unknown estimator {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "full_es":
        n = settings.episode_length
        return dataclasses.replace(
            base, truncation_length=n, schedule=EpisodeSchedule("constant", n), stagger=False, num_branches=2
        )
    return dataclasses.replace(base, num_branches=1 if kind == "backprop" else 2)


def make_estimator(kind: str, base: Unroller, settings: EstimatorSettings) -> Any:
    """The trainer's estimator ``kind`` (mirrors :func:`lopt.metatrain.build.build_estimator`)."""
    u = unroller_for(kind, base, settings)
    cls = ESTIMATORS[kind]
    if kind == "backprop":
        return cls(u, nonfinite=settings.nonfinite)
    if kind == "full_es":
        return cls(u, std=settings.std, nonfinite=settings.nonfinite, sign=settings.sign)
    return cls(u, std=settings.std, nonfinite=settings.nonfinite)


def inner_steps_per_estimate(est: Any) -> int:
    u = est.unroller
    return u.truncation_length * u.num_tasks * u.num_branches


def expected_episode_length(schedule: EpisodeSchedule) -> float:
    """E[T] of the schedule, exactly (log_uniform: the floor of a log-uniform draw, clipped)."""
    if schedule.kind == "constant":
        return float(schedule.length)
    lo, hi = schedule.min_length, schedule.max_length
    ks = np.arange(lo, hi + 1, dtype=np.float64)
    probs = (np.log(ks + 1.0) - np.log(ks)) / (math.log(hi + 1.0) - math.log(lo))
    return float(np.sum(ks * probs))


def default_chunk(length: int) -> int:
    """Steps per checkpointed chunk: ~sqrt(T) balances stored states against recomputation."""
    return max(1, int(round(math.sqrt(length))))


@dataclasses.dataclass(frozen=True)
class EpisodeObjective:
    """The full-episode meta-objective of ``base`` (a callable: meta_params, key, data -> scalar)."""

    base: Unroller
    chunk: int = 0  # 0: default_chunk(longest episode)

    @property
    def unroller(self) -> Unroller:
        longest = self.base.schedule.longest
        chunk = self.chunk or default_chunk(longest)
        meta_loss = "mean" if self.base.meta_loss == "last" else self.base.meta_loss
        return dataclasses.replace(
            self.base, truncation_length=min(chunk, longest), num_branches=1, stagger=False, meta_loss=meta_loss
        )

    @property
    def num_chunks(self) -> int:
        u = self.unroller
        return -(-u.schedule.longest // u.truncation_length)

    def __call__(self, meta_params: Any, key: jax.Array, data: tuple) -> jax.Array:
        u = self.unroller
        k_init, k_run = jax.random.split(key)
        states = u.init_state(meta_params, k_init)  # differentiated: the init may depend on meta_params
        alive = tuple(jnp.ones((g.num_tasks,), bool) for g in u.groups)

        @functools.partial(jax.checkpoint, prevent_cse=False)  # safe inside scan, and faster to run
        def chunk(mp, states, k, data):
            return u.unroll(mp, None, states, k, data)

        def body(carry, j):
            states, alive = carry
            states, traces = chunk(meta_params, states, jax.random.fold_in(k_run, j), data)
            sums, new_alive = [], []
            for tr, a in zip(traces, alive):
                use = tr.pre & a[None]  # still in the first episode of this task
                sums.append(jnp.sum(jnp.where(use, tr.loss[:, :, 0], 0.0)))
                new_alive.append(a & tr.pre[-1])
            return (states, tuple(new_alive)), sum(sums)

        _, per_chunk = jax.lax.scan(body, (states, alive), jnp.arange(self.num_chunks))
        return jnp.sum(per_chunk) / (u.num_tasks * expected_episode_length(u.schedule))


@dataclasses.dataclass
class Samples:
    """Flattened gradient samples (chains, steps, dim) and what they cost."""

    grads: np.ndarray
    seconds_per_estimate: float
    compile_seconds: float
    inner_steps_per_estimate: int
    extra: dict = dataclasses.field(default_factory=dict)


def _flat(tree: Any) -> jax.Array:
    return ravel_pytree(tree)[0]


# Module-level jits with the (hashable, frozen) estimator or unroller static: equal
# estimators share one compile across calls (tests, sweeps that revisit a setting).
@jit_with(CHEAP_COMPILE, static_argnums=0)
def _init_groups(unroller: Unroller, meta_params, keys):
    return jax.vmap(lambda k: unroller.init_state(meta_params, k))(keys)


def _first_branches(groups, nb: int):
    """The first ``nb`` branches of each group (leaves of branches are (chains, tasks, branches, ...))."""
    return tuple(g.replace(branches=jax.tree.map(lambda x: x[:, :, :nb], g.branches)) for g in groups)


def shared_init_unroller(u: Unroller) -> Unroller:
    """The unroller whose compiled init :func:`_init_chains` shares between pes, es and backprop."""
    return dataclasses.replace(u, num_branches=2)


def _init_chains(est: Any, meta_params, keys, init_groups=None):
    """``est.init`` on each chain, from one compile shared by pes, es and backprop.

    Their unrollers differ at most in ``num_branches``; branches start equal
    (the same task params and optimizer state), so backprop's one branch is the
    first of the two. The rest of the state (PES's accumulators) starts at zero.
    ``init_groups`` replaces the compiled :func:`_init_groups` (its plain
    function, so that the state's shapes can be traced with ``jax.eval_shape``).
    """
    shape = jax.eval_shape(lambda: jax.vmap(lambda k: est.init(meta_params, k))(keys))
    if not shape.groups:  # full_es keeps no state
        return jax.vmap(lambda k: est.init(meta_params, k))(keys)
    u = est.unroller
    groups = (init_groups or _init_groups)(shared_init_unroller(u), meta_params, keys)
    if u.num_branches != 2:
        groups = _first_branches(groups, u.num_branches)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shape.accum)
    return shape.replace(groups=groups, accum=zeros)


# One vmapped step per call: a lax.scan over steps (one call per block) measured 9x slower per
# estimate and 2x longer to compile on the 2-core CPU (nested loops copy the inner states).
@jit_with(CHEAP_COMPILE, static_argnums=0, donate_argnums=2)
def _step_chains(est: Any, meta_params, states, keys, data):
    def one(state, k):
        g, state, metrics = est.step(meta_params, state, k, data)
        return _flat(g), state, metrics["nonfinite_frac"]

    return jax.vmap(one)(states, keys)


@jit_with(CHEAP_COMPILE, static_argnums=0, donate_argnums=2)
def _advance_chains(unroller: Unroller, meta_params, groups, keys, data):
    """Backprop's burn-in without gradients: the same inner states its steps would leave, at forward cost.

    Backprop's state is only the unperturbed inner state, advanced by
    ``unroller.unroll(meta_params, None, state, key)`` inside its step with the
    same key, so a forward-only unroll reproduces it exactly.
    """
    return jax.vmap(lambda g, k: unroller.unroll(meta_params, None, g, k, data)[0])(groups, keys)


def _timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def more_within(budget_s: float, spent: float, last: float, done: int, least: int = 2) -> bool:
    """Whether one more sample fits: always below ``least`` samples, else if it ends within the budget."""
    return budget_s <= 0 or done < least or spent + last <= budget_s


def forward_compile_seconds(objective: EpisodeObjective, meta_params, data, key, chains: int) -> CompileTime:
    """Time to trace and compile one forward truncation of every group, on ``chains`` chains.

    The program is truncated backprop's forward burn-in (the same static
    unroller and shapes), so when backprop is sampled later jit reuses this compile.
    Predictions use the CPU seconds: the wall time grows with whatever else the
    machine runs, and a prediction from it made the choice of reference depend
    on the load rather than on the config.
    """
    u = dataclasses.replace(objective.base, num_branches=1)
    keys = jax.random.split(key, chains)
    two = dataclasses.replace(u, num_branches=2)
    groups = jax.eval_shape(lambda: _first_branches(_init_groups.fun(two, meta_params, keys), 1))
    t0, c0 = time.perf_counter(), time.process_time()
    _advance_chains.lower(u, meta_params, groups, keys, data).compile()
    return CompileTime(time.perf_counter() - t0, time.process_time() - c0)


def burn_in_steps(est: Any) -> int:
    """Truncations until every task has started an episode of the configured distribution."""
    u = est.unroller
    if isinstance(est, ESTIMATORS["full_es"]):
        return 0
    return -(-u.schedule.longest // u.truncation_length)


def sample_estimator(est: Any, meta_params, data, key, num_samples: int, chains: int = 2,
                     burn_in: int | None = None, tick=None, budget_s: float = 0.0) -> Samples:
    """``num_samples`` consecutive estimates on each of ``chains`` independent chains, after a burn-in.

    One estimate is one ``est.step`` call (all the config's tasks), exactly
    what one meta-training step receives; meta-parameters are held fixed.
    Steps go through the module-level jits (equal estimators share a compile);
    compile time is a first call's excess over the steady time per call.
    Backprop burns in with a forward-only unroll (exactly the states its
    steps would leave). full_es stops early, never below 2
    samples, once the next estimate would pass ``budget_s`` of sampling.
    """
    burn = burn_in_steps(est) if burn_in is None else burn_in
    k_init, k_run = jax.random.split(key)
    state = _init_chains(est, meta_params, jax.random.split(k_init, chains))
    keys = lambda i: jax.random.split(jax.random.fold_in(k_run, i), chains)
    # Called through jit (not ahead of time) so that equal estimators share one compile across calls
    # (tests, sweeps); a first call's extra time over the steady per-call time is its compile time.
    forward = burn and isinstance(est, ESTIMATORS["backprop"])
    adv_times, first = [], None
    for i in range(burn):
        if forward:
            groups, dt = _timed(_advance_chains, est.unroller, meta_params, state.groups, keys(i), data)
            state = state.replace(groups=groups)
            adv_times.append(dt)
        else:
            (_, state, _), dt = _timed(_step_chains, est, meta_params, state, keys(i), data)
            first = dt if first is None else first
        if tick:
            tick()
    capped = isinstance(est, ESTIMATORS["full_es"])
    out, nonfinite, times = [], [], []
    for i in range(num_samples):
        if capped and not more_within(budget_s, float(np.sum(times[1:])), times[-1] if times else 0.0, i):
            break
        (g, state, nf), dt = _timed(_step_chains, est, meta_params, state, keys(burn + i), data)
        out.append(np.asarray(g))
        nonfinite.append(float(np.mean(nf)))
        times.append(dt)
        if tick:
            tick()
    per_call = float(np.median(times[1:] if len(times) > 1 else times))
    compile_s = max(0.0, (times[0] if first is None else first) - per_call)
    if forward:
        compile_s += max(0.0, adv_times[0] - float(np.median(adv_times[1:] if len(adv_times) > 1 else adv_times)))
    return Samples(
        np.stack(out, axis=1),  # (chains, steps, d)
        per_call / chains,
        compile_s,
        inner_steps_per_estimate(est),
        {"burn_in": burn, "chains": chains, "inner_nonfinite_frac": float(np.mean(nonfinite)),
         "requested": num_samples},
    )
