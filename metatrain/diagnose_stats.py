"""Statistics of ``lopt diagnose``: bias, variance and samples-to-signal of a gradient estimator.

Pure numpy on flattened gradients, so it is testable without any training.

Notation. An estimator's samples ``g_i`` (one estimate each, the vector a
meta-training step would receive) have mean ``m`` and per-sample variance
``V = E|g - m|^2`` (the trace of their covariance). The reference samples
``r_j`` estimate the true gradient ``r*`` of the full-episode meta-objective.
The mean of ``n`` independent estimates then has, to first order, cosine

    c(n) = (m . r*/|r*|) / sqrt(|m|^2 + V / n)

with the true gradient. It tends to ``cos(m, r*)`` (the *bias* cosine) as
``n -> inf``; an estimator reaches a target cosine ``c`` after
``n = V / ((m.r^)^2 / c^2 - |m|^2)`` samples, or never when its bias
cosine is below ``c``. Plain plug-in estimates of ``|m|^2`` and ``|r*|^2``
are inflated by the noise of the sample means (``V / S``), which would make
a noisy estimator look biased; every squared norm below is corrected for it
(unbiased), and confidence intervals come from a bootstrap over samples.

Consecutive estimates of a stateful estimator (PES, truncated ES, truncated
backprop along one chain of inner states) are correlated; ``tau`` (the
integrated autocorrelation time, from the means of independent chains and of
blocks within each chain) says how many consecutive meta-steps are worth one
independent sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_TINY = 1e-30


def _norm2(x: np.ndarray) -> float:
    return float(np.dot(x, x))


def per_sample_variance(x: np.ndarray) -> float:
    """Trace of the sample covariance of rows of ``x`` (unbiased; 0 for one row)."""
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    if len(x) < 2:
        return 0.0
    return float(np.sum(np.var(x, axis=0, ddof=1)))


def autocorrelation_time(chains: np.ndarray) -> float:
    """Integrated autocorrelation time of samples laid out (chains, steps, dim); >= 1.

    Var(mean of a block of b consecutive samples) ~= V * tau / b for blocks
    longer than the correlation. Blocks are whole chains (if more than one)
    and the largest split of each chain into at least 4 blocks; the larger
    estimate is kept (short blocks underestimate tau).
    """
    chains = np.asarray(chains, np.float64)
    c, s, _ = chains.shape
    v = per_sample_variance(chains)
    if v <= _TINY or s < 2:
        return 1.0
    taus = []
    if c >= 2:
        taus.append(s * per_sample_variance(chains.mean(axis=1)) / v)
    b = s // 4
    if b >= 2:
        blocks = chains[:, : 4 * b].reshape(c * 4, b, -1).mean(axis=1)
        taus.append(b * per_sample_variance(blocks) / v)
    return float(max([1.0] + taus))


def chains_tau(chains: np.ndarray) -> float:
    """:func:`autocorrelation_time` of (chains, steps, d) samples; 1 when any is non-finite (order is lost)."""
    return autocorrelation_time(chains) if np.all(np.isfinite(chains)) else 1.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / math.sqrt(max(_norm2(a) * _norm2(b), _TINY)))


def _core(x: np.ndarray, ref: np.ndarray, tau: float = 1.0) -> dict[str, float]:
    """Point estimates from estimator samples ``x`` (n, d) and reference samples ``ref`` (k, d).

    ``tau``: autocorrelation time of ``x`` (its mean's noise is ``V tau / n``).
    """
    n, k = len(x), len(ref)
    m, r = x.mean(axis=0), ref.mean(axis=0)
    v, vr = per_sample_variance(x), per_sample_variance(ref)
    m2 = max(_norm2(m) - v * tau / n, _TINY)  # unbiased |m|^2 (floored)
    r2 = max(_norm2(r) - vr / k, _TINY)
    dot = float(np.dot(m, r))  # unbiased m . r* (independent samples)
    cos = dot / math.sqrt(m2 * r2)
    err2 = _norm2(m - r) - v * tau / n - vr / k
    return {
        "cosine": float(np.clip(cos, -1.0, 1.0)),
        "cosine_raw": _cosine(m, r),
        "rel_error": math.sqrt(max(err2, 0.0) / r2),
        "proj": dot / math.sqrt(r2),  # m . r^ : the useful part of the mean
        "mean_norm2": m2,
        "variance": v,
    }


def samples_to_cosine(proj: float, mean_norm2: float, variance: float, target: float) -> float:
    """Independent samples whose mean has expected cosine ``target`` with the truth (inf if never)."""
    if proj <= 0:
        return math.inf
    room = proj * proj / (target * target) - mean_norm2
    if room <= 0:
        return math.inf
    return max(1.0, variance / room)


def expected_cosine(proj: float, mean_norm2: float, variance: float, n: np.ndarray) -> np.ndarray:
    """c(n) of the module docstring for an array of sample counts."""
    n = np.asarray(n, np.float64)
    return proj / np.sqrt(np.maximum(mean_norm2 + variance / n, _TINY))


def empirical_cosines(x: np.ndarray, ref_mean: np.ndarray, ns: list[int], rng: np.random.Generator, reps: int = 16):
    """Mean cosine with ``ref_mean`` of the mean of ``n`` random samples of ``x``, for each n in ``ns``."""
    out = []
    for n in ns:
        vals = [_cosine(x[rng.choice(len(x), n, replace=False)].mean(axis=0), ref_mean) for _ in range(reps)]
        out.append(float(np.mean(vals)))
    return out


def compare(
    samples: np.ndarray,
    ref: np.ndarray,
    target: float = 0.5,
    seed: int = 0,
    bootstrap: int = 200,
    random_coords: int = 0,
    tau: float | None = None,
) -> dict[str, Any]:
    """Bias, variance and samples-to-signal of ``samples`` (chains, steps, d) against ``ref`` (k, d).

    ``random_coords``: the last this many coordinates are independent random
    projections (:mod:`lopt.metatrain.diagnose_subspace`), each an unbiased
    term of every dot product; the bootstrap then resamples them too, so the
    intervals include the projection's error as well as the samples'.
    ``tau``: the samples' autocorrelation time when it is known better than
    from ``samples`` (from the unprojected samples: it is the estimator's own
    property, and a ratio of traces over a few block means is noisy in a few
    random coordinates).
    """
    samples = np.asarray(samples, np.float64)
    if samples.ndim == 2:
        samples = samples[None]
    ref = np.asarray(ref, np.float64)
    flat = samples.reshape(-1, samples.shape[-1])
    finite = np.all(np.isfinite(flat), axis=1)
    dropped = int(np.sum(~finite))
    flat = flat[finite]
    if len(flat) < 2:
        return {"usable_samples": int(len(flat)), "nonfinite_samples": dropped, "error": "fewer than 2 finite samples"}
    if tau is None:
        tau = chains_tau(samples)
    point = _core(flat, ref, tau)
    rng = np.random.default_rng(seed)
    # block bootstrap: blocks of ~tau consecutive estimates keep the chains' correlation
    b = max(1, min(int(round(tau)), samples.shape[1]))
    blocks = samples[:, : (samples.shape[1] // b) * b].reshape(-1, b, samples.shape[-1]) if dropped == 0 else flat[:, None]
    boot = []
    for _ in range(bootstrap):
        bx = blocks[rng.integers(0, len(blocks), len(blocks))].reshape(-1, samples.shape[-1])
        br = ref[rng.integers(0, len(ref), len(ref))]
        if random_coords:
            fixed = ref.shape[1] - random_coords
            cols = np.concatenate([np.arange(fixed), fixed + rng.integers(0, random_coords, random_coords)])
            bx, br = bx[:, cols], br[:, cols]
        boot.append(_core(bx, br, tau)["cosine"])
    lo, hi = np.percentile(boot, [5, 95]) if boot else (math.nan, math.nan)
    n_iid = samples_to_cosine(point["proj"], point["mean_norm2"], point["variance"], target)
    total = len(flat)
    ns = sorted({int(n) for n in np.unique(np.round(np.geomspace(1, total, num=min(8, total))))})
    return {
        "usable_samples": int(total),
        "nonfinite_samples": dropped,
        "cosine": point["cosine"],
        # False: the mean's noise (V tau / n) is as large as the mean itself, so the bias
        # cosine is not measured (its interval says what is known); more samples would tell
        "mean_resolved": bool(point["mean_norm2"] > point["variance"] * tau / total),
        "cosine_ci90": [float(lo), float(hi)],
        "cosine_raw": point["cosine_raw"],
        "rel_error": point["rel_error"],
        "variance": point["variance"],
        "mean_norm": math.sqrt(point["mean_norm2"]),
        "snr": point["mean_norm2"] / max(point["variance"], _TINY),
        "autocorr_time": tau,
        "target_cosine": target,
        "samples_to_target": n_iid,
        "steps_to_target": n_iid * tau,
        "curve_n": ns,
        "curve_expected": [float(c) for c in expected_cosine(point["proj"], point["mean_norm2"], point["variance"], ns)],
        "curve_empirical": empirical_cosines(flat, ref.mean(axis=0), ns, rng),
    }


# Below this expected cosine with the true gradient the reference is too noisy to rank estimators against.
NOISY_REFERENCE_COSINE = 0.5


def reference_is_noise(reference: dict) -> bool:
    """Whether a reference (``reference_quality``'s fields) is too noisy to rank estimators against."""
    return reference.get("expected_cosine_to_truth", 1.0) < NOISY_REFERENCE_COSINE


def reference_quality(ref: np.ndarray) -> dict[str, float]:
    """How well the reference mean points at the truth: expected cosine and a split-half check."""
    ref = np.asarray(ref, np.float64)
    k = len(ref)
    r = ref.mean(axis=0)
    vr = per_sample_variance(ref)
    r2 = max(_norm2(r) - vr / k, _TINY)
    out = {
        "samples": int(k),
        "norm": math.sqrt(r2),
        "variance": vr,
        "expected_cosine_to_truth": float(min(1.0, math.sqrt(r2 / max(_norm2(r), _TINY)))),
    }
    if k >= 2:
        out["split_half_cosine"] = _cosine(ref[: k // 2].mean(axis=0), ref[k // 2 :].mean(axis=0))
    return out
