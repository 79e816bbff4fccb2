"""The reference gradient of ``lopt diagnose``: which one is drawn, and its quality.

``--reference auto`` draws exact full-episode backprop where its compile is
predicted within ``--reference-compile-budget-s`` and it fits in memory and
comes out finite; otherwise the subspace reference
(:mod:`lopt.metatrain.diagnose_subspace`), which is drawn *after* the
estimators, along their means. ``--reference es`` keeps the full-dimensional
antithetic ES. Every choice and fallback is recorded with its reason.
"""

from __future__ import annotations

import jax
import numpy as np

from lopt.metatrain import diagnose_core as core
from lopt.metatrain import diagnose_stats as stats
from lopt.metatrain import diagnose_subspace as subspace
from lopt.metatrain.config import ConfigError
from lopt.metatrain.diagnose_compile import REFERENCE_COMPILE_RATIO, CompileTime
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
        samples = core.reference_backprop(objective, meta_params, data, k_ref, opt.reference_samples, tick=bar.tick,
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
        samples = core.reference_es(objective, meta_params, data, k_ref, opt.reference_es_samples, settings.std,
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


def result(method: str, samples: core.Samples, objective, info: dict, basis=None) -> dict:
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
