"""The reference gradient of ``lopt diagnose``: which one is drawn, and its quality.

``--reference auto`` draws exact full-episode backprop where its compile is
predicted within ``--reference-compile-budget-s`` and it fits in memory and
comes out finite; otherwise the subspace reference
(:mod:`lopt.metatrain.diagnose_subspace`), which is drawn *after* the
estimators, along their means. ``--reference es`` keeps the full-dimensional
antithetic ES. Every choice and fallback is recorded with its reason.

The exact and the full-ES samplers live here too; the subspace one has its own
module. All three estimate the gradient of :class:`~lopt.metatrain.diagnose_core.EpisodeObjective`.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lopt.metatrain import diagnose_stats as stats
from lopt.metatrain import diagnose_subspace as subspace
from lopt.metatrain.config import ConfigError
from lopt.metatrain.diagnose_compile import (CHEAP_COMPILE, REFERENCE_COMPILE, REFERENCE_COMPILE_RATIO, CompileTime,
                                             jit_with)
from lopt.metatrain.diagnose_core import EpisodeObjective, Samples, _flat, _timed, more_within
from lopt.metatrain.diagnose_options import DiagnoseOptions


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


def finite_mean(grads: np.ndarray) -> np.ndarray:
    """The mean of the finite samples of ``grads`` (..., d); NaN when there are none."""
    flat = np.asarray(grads, np.float64).reshape(-1, np.shape(grads)[-1])
    flat = flat[np.all(np.isfinite(flat), axis=1)]
    return flat.mean(axis=0) if len(flat) else np.full(np.shape(grads)[-1], np.nan)


def draw(objective, meta_params, data, key, settings, opt: DiagnoseOptions, bar,
         probe: CompileTime = CompileTime(0.0, 0.0), num_jobs: int = 0):
    """``(reference, None)``, or ``(None, pending)`` for the subspace reference.

    ``pending(bar, means)`` samples the subspace reference once the
    estimators' means are known (they are its exact directions) and returns
    the reference; its program is compiled here, while the estimators' compile
    on the worker thread. ``probe``: one forward truncation's compile time (0: none).
    """
    k_ref = jax.random.fold_in(key, 1)
    budget = opt.max_memory_gb * 1e9 if opt.max_memory_gb > 0 else 0.5 * _available_bytes()
    samples, method, why, predicted, discarded = None, "backprop", "", None, 0
    if opt.reference == "auto" and probe.cpu > 0:
        predicted = REFERENCE_COMPILE_RATIO * probe.cpu
        if opt.reference_compile_budget_s > 0 and predicted > opt.reference_compile_budget_s:
            why = (f"backprop through the episode would take ~{predicted:.0f} CPU s to compile "
                   f"({REFERENCE_COMPILE_RATIO:g}x the {probe.cpu:.1f} CPU s of one forward truncation), "
                   f"over --reference-compile-budget-s {opt.reference_compile_budget_s:g}")
    if opt.reference == "backprop" or (opt.reference == "auto" and not why):
        bar.phase("reference: full-episode backprop")
        samples = reference_backprop(objective, meta_params, data, k_ref, opt.reference_samples, tick=bar.tick,
                                     max_bytes=budget if opt.reference == "auto" else None,
                                     budget_s=opt.sample_budget_s, max_samples=16 * opt.reference_samples)
        if samples is None:
            why = f"backprop through the episode needs more than {budget / 1e9:.1f} GB"
        elif opt.reference == "auto" and np.sum(np.all(np.isfinite(samples.grads[0]), axis=1)) < 2:
            bad = int(np.sum(~np.all(np.isfinite(samples.grads[0]), axis=1)))
            discarded = len(samples.grads[0])
            why = (f"backprop through the episode gave non-finite gradients in {bad} of {len(samples.grads[0])} "
                   "samples (exploding or undefined derivatives through the unroll)")
            samples = None
    info = {"fallback_reason": why, "predicted_backprop_compile_seconds": predicted,
            "probe_compile_seconds": probe.wall,  # the forward truncation compiled for the prediction (backprop reuses it)
            "probe_compile_cpu_seconds": probe.cpu}  # what the prediction uses: independent of the machine's load
    if samples is None and opt.reference == "es":
        bar.phase("reference: full-episode antithetic ES")
        samples = reference_es(objective, meta_params, data, k_ref, opt.reference_es_samples, settings.std,
                               tick=bar.tick, budget_s=opt.sample_budget_s)
        return result("es", samples, objective, info), None
    if samples is not None:
        return result(method, samples, objective, info), None
    # "subspace", or "auto" where backprop does not fit
    bar.phase("reference: compiling the subspace reference")
    bar.bar.total += discarded  # ticks of a backprop reference drawn and then set aside
    pending = subspace.SubspaceReference.compile(objective, meta_params, data, k_ref, settings.std, num_jobs,
                                                 opt.subspace_dims, opt.seed)

    def finish(bar, means: list[np.ndarray]) -> dict:
        j, k = pending.num_exact, opt.subspace_dims
        bar.phase(f"reference: directional derivatives ({j} + {k} directions)")
        basis, samples = pending.sample(means, opt.reference_samples, tick=bar.tick, budget_s=opt.sample_budget_s)
        out = result("subspace", samples, objective, info, basis)
        out.update(subspace_exact_dims=j, subspace_random_dims=k)
        return out

    return None, finish


def result(method: str, samples: Samples, objective, info: dict, basis=None) -> dict:
    """The reference's record: its finite samples (``grads``), their quality and what they cost."""
    grads = samples.grads[0]
    finite = np.all(np.isfinite(grads), axis=1)
    if np.sum(finite) < 2:
        raise ConfigError(f"the {method} reference gradient was non-finite in {int(np.sum(~finite))} of {len(grads)} "
                          "samples: the meta-objective diverges at these meta-parameters")
    grads = grads[finite]
    quality = stats.reference_quality(grads)
    return {
        "method": method,
        **info,
        **quality,
        "seconds_per_sample": samples.seconds_per_estimate,
        "compile_seconds": samples.compile_seconds,
        "inner_steps_per_sample": samples.inner_steps_per_estimate,
        "memory_bytes": samples.extra.get("memory_bytes"),
        "chunk": objective.unroller.truncation_length,
        "nonfinite_samples": int(np.sum(~finite)),
        "requested_samples": samples.extra.get("requested"),
        "grads": grads,
        "basis": basis,  # the subspace reference's: estimators are compared in its coordinates
    }


# Module-level jits with the (hashable, frozen) objective static: equal objectives share one compile.
@jit_with(REFERENCE_COMPILE, static_argnums=0)
def _reference_grad(objective: "EpisodeObjective", meta_params, key, data):
    return _flat(jax.grad(objective)(meta_params, key, data))


@jit_with(CHEAP_COMPILE, static_argnums=(0, 1))
def _reference_es_pairs(objective: "EpisodeObjective", std: float, meta_params, keys, data):
    vec, unravel = ravel_pytree(meta_params)

    def pair(k):
        k_eps, k_obj = jax.random.split(k)
        eps = std * jax.random.normal(k_eps, vec.shape, jnp.float32)
        diff = objective(unravel(vec + eps), k_obj, data) - objective(unravel(vec - eps), k_obj, data)
        return eps * diff / (2.0 * std * std)

    return jax.vmap(pair)(keys)


def _memory_bytes(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return float(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def reference_cosine(grads: np.ndarray) -> float:
    """Expected cosine of the mean of ``grads`` (k, d) with their expectation (noise-corrected)."""
    k = len(grads)
    if not np.all(np.isfinite(grads)):
        return math.nan
    if k < 2:
        return 0.0
    m = grads.mean(axis=0).astype(np.float64)
    n2 = float(m @ m)
    noise = float(np.sum(np.var(grads.astype(np.float64), axis=0, ddof=1))) / k
    return math.sqrt(max(n2 - noise, 0.0) / n2) if n2 > 0 else 0.0


def reference_backprop(objective: EpisodeObjective, meta_params, data, key, num_samples: int, tick=None,
                       max_bytes: float | None = None, budget_s: float = 0.0, max_samples: int = 0,
                       until_cosine: float = 0.99) -> Samples | None:
    """Exact full-episode gradients, one per sample (all tasks of the config); None if over ``max_bytes``.

    Compiled ahead of time so that its memory need is known before it runs.
    Stops before ``num_samples`` (never below 2) once the next one would pass
    ``budget_s``; past ``num_samples`` it goes on, up to ``max_samples`` and
    within the budget, while the mean's expected cosine with the true gradient
    is below ``until_cosine`` (tasks differ: on cheap configs a few samples are noisy).
    """
    t0 = time.perf_counter()
    compiled = _reference_grad.lower(objective, meta_params, key, data).compile()
    compile_s = time.perf_counter() - t0
    need = _memory_bytes(compiled)
    if max_bytes is not None and need is not None and need > max_bytes:
        return None
    out, spent, dt = [], 0.0, 0.0
    for i in range(max_samples or num_samples):
        if not more_within(budget_s, spent, dt, i):
            break
        if i >= num_samples and not reference_cosine(np.stack(out)) < until_cosine:
            break  # more than num_samples only while the mean is noisy (never when non-finite)
        g, dt = _timed(compiled, meta_params, jax.random.fold_in(key, i), data)
        out.append(np.asarray(g))
        spent += dt
        if tick:
            tick()
    u = objective.unroller
    steps = u.schedule.longest * u.num_tasks
    return Samples(np.stack(out)[None], spent / len(out), compile_s, steps,
                   {"memory_bytes": need, "requested": num_samples})


def reference_es(objective: EpisodeObjective, meta_params, data, key, num_samples: int, std: float,
                 pairs_per_call: int = 4, tick=None, budget_s: float = 0.0) -> Samples:
    """Antithetic full-episode ES on the objective: ``num_samples`` pairs (common random numbers).

    Stops early (never below 2 calls) once the next call would pass ``budget_s`` of sampling.
    """
    calls = -(-num_samples // pairs_per_call)
    out, times = [], []
    for i in range(calls):
        # the first call includes the compile: budget on the later ones' time
        if i >= 2 and not more_within(budget_s, float(np.sum(times[1:])), times[-1], i):
            break
        keys = jax.random.split(jax.random.fold_in(key, i), pairs_per_call)
        g, dt = _timed(_reference_es_pairs, objective, float(std), meta_params, keys, data)
        out.append(np.asarray(g))
        times.append(dt)
        if tick:
            tick()
    per_call = float(np.mean(times[1:])) if len(times) > 1 else times[0]
    u = objective.unroller
    steps = u.schedule.longest * u.num_tasks * 2
    return Samples(np.concatenate(out)[:num_samples][None], per_call / pairs_per_call, max(0.0, times[0] - per_call),
                   steps, {"requested": num_samples})
