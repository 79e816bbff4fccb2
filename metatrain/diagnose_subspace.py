"""A reference gradient in a subspace, for meta-parameters too many for an ES reference.

Why. Where backprop through whole episodes does not fit (memory, or a compile
over budget), the reference used to be a full-episode antithetic ES estimate.
Its mean's cosine with the true gradient grows only like ``sqrt(n / d)`` in
``n`` pairs over ``d`` meta-parameters: with ``hyper``'s 2,525 numbers, the
16 pairs a minute buys are noise, and nothing could be ranked.

What an estimator is judged by is a handful of dot products with the true
gradient ``r``: its mean's ``m . r``, and ``|r|^2``. Both are measured here
without estimating ``r`` itself, in coordinates of two kinds (:class:`Basis`):

* **exact** coordinates along an orthonormal basis ``E`` of the estimators'
  own means (``E`` spans every mean, so ``m . r`` is measured directly, with
  no projection error);
* **random** coordinates ``P x_perp``, with ``P = G / sqrt(k)`` for a ``k x d``
  standard normal ``G`` and ``x_perp`` the part of ``x`` off ``E``: a Gaussian
  projection keeps dot products in expectation, ``E[(P a) . (P b)] = a . b``,
  and every row of ``G`` adds one independent unbiased term. So ``|r|^2`` and
  the noise of the estimators' samples off ``E`` are measured without bias,
  and resampling these coordinates in the bootstrap
  (:func:`lopt.metatrain.diagnose_stats.compare`'s ``random_coords``) puts the
  projection's error into every interval.

In these coordinates every dot product of the statistics is unbiased for the
full-space one, so :mod:`lopt.metatrain.diagnose_stats` runs on them unchanged.

The reference's coordinates are directional derivatives of the full-episode
objective along each row of ``E`` and ``G``, by central differences at the
estimators' perturbation size ``std``: the objective as ES smooths it, the
same quantity the full-dimensional ES reference estimates. All directions of
one sample share its task draw and data (common random numbers), so a sample
is the coordinates of one full-episode gradient; samples over different
draws measure the reference's own noise. One sample costs ``j + k``
antithetic pairs of whole episodes, whatever ``d`` is.

Where the unrolled objective has kinks (clipping, ReLUs, the guard), the
smoothed derivative and the exact one differ: measured on ``mup`` along the
exact gradient's direction, central differences gave 1.33x the exact
derivative at std 0.01 and 1.11x at 3e-4 (BENCHMARKS.md). Exact forward-mode
derivatives (``jax.jvp``) would avoid this, but on ``hyper`` they came out
NaN under ``jit`` (finite without it); this is not resolved.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lopt.metatrain.diagnose_compile import REFERENCE_COMPILE, jit_with
from lopt.metatrain.diagnose_core import Samples, _timed, more_within

_DEGENERATE = 1e-8  # a mean whose part off the earlier ones is below this (relative) adds no exact direction


@dataclasses.dataclass(frozen=True)
class Basis:
    """``exact``: (j, d) orthonormal rows; ``random``: (k, d) rows of ``G / sqrt(k)``."""

    exact: np.ndarray
    random: np.ndarray

    @property
    def dims(self) -> tuple[int, int]:
        return len(self.exact), len(self.random)

    @property
    def num_meta_params(self) -> int:
        return self.random.shape[1]  # exact is (0, d) when empty, random has at least 2 rows

    def coords(self, x: np.ndarray) -> np.ndarray:
        """Vectors ``(..., d)`` in this basis: ``(..., j + k)``; dot products are kept in expectation over ``G``."""
        x = np.asarray(x, np.float64)
        along = x @ self.exact.T
        perp = x - along @ self.exact
        return np.concatenate([along, perp @ self.random.T], axis=-1)

    def directions(self) -> np.ndarray:
        """Rows to differentiate along, all of squared norm ~d (as the ES perturbations' directions are)."""
        scaled = [self.exact * np.sqrt(self.num_meta_params), self.random * np.sqrt(len(self.random))]
        return np.concatenate(scaled).astype(np.float32)

    def reference_coords(self, derivs: np.ndarray) -> np.ndarray:
        """Directional derivatives ``(n, j + k)`` along :meth:`directions` -> the gradients' coordinates."""
        j, k = self.dims
        derivs = np.asarray(derivs, np.float64)
        along = derivs[:, :j] / np.sqrt(self.num_meta_params)  # e . r
        pr = derivs[:, j:] / np.sqrt(k)  # P r
        return np.concatenate([along, pr - along @ (self.random @ self.exact.T).T], axis=-1)  # P r_perp


def random_rows(num_meta_params: int, dims: int, seed: int) -> np.ndarray:
    """``G / sqrt(k)``: ``dims x num_meta_params`` Gaussian rows (float64), from ``seed`` alone."""
    rng = np.random.default_rng([seed, 17])  # a stream of its own: independent of every jax key of the run
    return rng.standard_normal((dims, num_meta_params)) / np.sqrt(dims)


def make_basis(means: list[np.ndarray], num_exact: int, random: np.ndarray, seed: int) -> Basis:
    """``num_exact`` orthonormal rows spanning ``means`` (padded with random ones), and the random rows.

    Non-finite or degenerate means add nothing; the padding keeps the number of
    rows, so the program compiled for ``num_exact`` directions fits.
    """
    d = random.shape[1]
    rng = np.random.default_rng([seed, 23])
    rows: list[np.ndarray] = []
    candidates = [np.asarray(m, np.float64) for m in means if np.all(np.isfinite(m))]
    while len(rows) < num_exact:
        v = candidates.pop(0) if candidates else rng.standard_normal(d)
        norm0 = np.linalg.norm(v)
        for _ in range(2):  # Gram-Schmidt, twice for float rounding
            for e in rows:
                v = v - (v @ e) * e
        if norm0 > 0 and np.linalg.norm(v) > _DEGENERATE * norm0:
            rows.append(v / np.linalg.norm(v))
    return Basis(np.stack(rows) if rows else np.zeros((0, d)), random)


@jit_with(REFERENCE_COMPILE, static_argnums=(0, 1))
def _directional(objective, std: float, meta_params, directions, key, data):
    """Central differences of the objective along each row of ``directions``, one shared draw ``key``."""
    vec, unravel = ravel_pytree(meta_params)

    def along(u):
        eps = std * u.astype(vec.dtype)
        return (objective(unravel(vec + eps), key, data) - objective(unravel(vec - eps), key, data)) / (2.0 * std)

    return jax.vmap(along)(directions)


@dataclasses.dataclass
class SubspaceReference:
    """The subspace reference, compiled first and sampled once the estimators' means are known."""

    objective: Any
    meta_params: Any
    data: Any
    key: jax.Array
    std: float
    num_exact: int
    random: np.ndarray
    seed: int
    compiled: Any = None
    compile_seconds: float = 0.0

    @classmethod
    def compile(cls, objective, meta_params, data, key, std: float, num_exact: int, dims: int, seed: int):
        d = int(sum(np.size(x) for x in jax.tree.leaves(meta_params)))
        num_exact = min(num_exact, d)
        ref = cls(objective, meta_params, data, key, float(std), num_exact, random_rows(d, dims, seed), seed)
        rows = jax.ShapeDtypeStruct((num_exact + dims, d), jnp.float32)
        t0 = time.perf_counter()
        ref.compiled = _directional.lower(objective, ref.std, meta_params, rows, key, data).compile()
        ref.compile_seconds = time.perf_counter() - t0
        return ref

    def sample(self, means: list[np.ndarray], num_samples: int, tick=None, budget_s: float = 0.0):
        """``(Basis, Samples)``: up to ``num_samples`` gradients' coordinates (never below 2 within ``budget_s``)."""
        basis = make_basis(means, self.num_exact, self.random, self.seed)
        rows = jnp.asarray(basis.directions())
        out, spent, dt = [], 0.0, 0.0
        for i in range(num_samples):
            if not more_within(budget_s, spent, dt, i):
                break
            derivs, dt = _timed(self.compiled, self.meta_params, rows, jax.random.fold_in(self.key, i), self.data)
            out.append(np.asarray(derivs))
            spent += dt
            if tick:
                tick()
        u = self.objective.unroller
        steps = u.schedule.longest * u.num_tasks * 2 * len(rows)
        coords = basis.reference_coords(np.stack(out))
        return basis, Samples(coords[None], spent / len(out), self.compile_seconds, steps,
                              {"requested": num_samples})
