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
not fit, the reference is an antithetic full-episode ES over the same
objective (common random numbers for both branches).

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

        @jax.checkpoint
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


# Module-level jits with the (hashable, frozen) estimator or objective static: equal
# estimators share one compile across calls (tests, sweeps that revisit a setting).
@functools.partial(jax.jit, static_argnums=0)
def _reference_grad(objective: "EpisodeObjective", meta_params, key, data):
    return _flat(jax.grad(objective)(meta_params, key, data))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _reference_es_pairs(objective: "EpisodeObjective", std: float, meta_params, keys, data):
    vec, unravel = ravel_pytree(meta_params)

    def pair(k):
        k_eps, k_obj = jax.random.split(k)
        eps = std * jax.random.normal(k_eps, vec.shape, jnp.float32)
        diff = objective(unravel(vec + eps), k_obj, data) - objective(unravel(vec - eps), k_obj, data)
        return eps * diff / (2.0 * std * std)

    return jax.vmap(pair)(keys)


@functools.partial(jax.jit, static_argnums=0)
def _init_chains(est: Any, meta_params, keys):
    return jax.vmap(lambda k: est.init(meta_params, k))(keys)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _step_chains(est: Any, meta_params, states, keys, data):
    def one(state, k):
        g, state, metrics = est.step(meta_params, state, k, data)
        return _flat(g), state, metrics["nonfinite_frac"]

    return jax.vmap(one)(states, keys)


def _timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def _memory_bytes(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return float(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def reference_backprop(objective: EpisodeObjective, meta_params, data, key, num_samples: int, tick=None,
                       max_bytes: float | None = None) -> Samples | None:
    """Exact full-episode gradients, one per sample (all tasks of the config); None if over ``max_bytes``.

    Compiled ahead of time so that its memory need is known before it runs.
    """
    t0 = time.perf_counter()
    compiled = _reference_grad.lower(objective, meta_params, key, data).compile()
    compile_s = time.perf_counter() - t0
    need = _memory_bytes(compiled)
    if max_bytes is not None and need is not None and need > max_bytes:
        return None
    out, spent = [], 0.0
    for i in range(num_samples):
        g, dt = _timed(compiled, meta_params, jax.random.fold_in(key, i), data)
        out.append(np.asarray(g))
        spent += dt
        if tick:
            tick()
    u = objective.unroller
    steps = u.schedule.longest * u.num_tasks
    return Samples(np.stack(out)[None], spent / num_samples, compile_s, steps, {"memory_bytes": need})


def reference_es(objective: EpisodeObjective, meta_params, data, key, num_samples: int, std: float,
                 pairs_per_call: int = 4, tick=None) -> Samples:
    """Antithetic full-episode ES on the objective: ``num_samples`` pairs (common random numbers)."""
    calls = -(-num_samples // pairs_per_call)
    out, times = [], []
    for i in range(calls):
        keys = jax.random.split(jax.random.fold_in(key, i), pairs_per_call)
        g, dt = _timed(_reference_es_pairs, objective, float(std), meta_params, keys, data)
        out.append(np.asarray(g))
        times.append(dt)
        if tick:
            tick()
    per_call = float(np.mean(times[1:])) if calls > 1 else times[0]
    u = objective.unroller
    steps = u.schedule.longest * u.num_tasks * 2
    return Samples(np.concatenate(out)[:num_samples][None], per_call / pairs_per_call, max(0.0, times[0] - per_call), steps)


def burn_in_steps(est: Any) -> int:
    """Truncations until every task has started an episode of the configured distribution."""
    u = est.unroller
    if isinstance(est, ESTIMATORS["full_es"]):
        return 0
    return -(-u.schedule.longest // u.truncation_length)


def sample_estimator(est: Any, meta_params, data, key, num_samples: int, chains: int = 2,
                     burn_in: int | None = None, tick=None) -> Samples:
    """``num_samples`` consecutive estimates on each of ``chains`` independent chains, after a burn-in.

    One estimate is one ``est.step`` call (all the config's tasks), exactly
    what one meta-training step receives; meta-parameters are held fixed.
    The first call's extra time is reported as compile time.
    """
    burn = burn_in_steps(est) if burn_in is None else burn_in
    k_init, k_run = jax.random.split(key)
    state = _init_chains(est, meta_params, jax.random.split(k_init, chains))
    keys = lambda i: jax.random.split(jax.random.fold_in(k_run, i), chains)
    first = None
    for i in range(burn):
        (_, state, _), dt = _timed(_step_chains, est, meta_params, state, keys(i), data)
        first = dt if first is None else first
        if tick:
            tick()
    out, nonfinite, times = [], [], []
    for i in range(num_samples):
        (g, state, nf), dt = _timed(_step_chains, est, meta_params, state, keys(burn + i), data)
        first = dt if first is None else first
        out.append(np.asarray(g))
        nonfinite.append(float(np.mean(nf)))
        times.append(dt)
        if tick:
            tick()
    per_call = float(np.median(times[1:] if len(times) > 1 else times))
    grads = np.stack(out, axis=1)  # (chains, steps, d)
    return Samples(
        grads,
        per_call / chains,
        max(0.0, first - per_call),
        inner_steps_per_estimate(est),
        {"burn_in": burn, "chains": chains, "inner_nonfinite_frac": float(np.mean(nonfinite))},
    )
