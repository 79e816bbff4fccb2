"""A growing lower bound on the distance to a solution, used as the step size (Prodigy's D estimate).

Why: on short runs the step size matters more than anything a per-parameter
network learns, and the best one differs by 10x between client tasks (a CNN
wants 2e-2, a residual MLP 3e-3). A fixed prior schedule cannot be right for
both, and tuning is what users of a learned optimizer want to avoid. D-adaptation
and Prodigy (Defazio & Mishchenko 2023, arXiv 2301.07733; Mishchenko & Defazio
2023, arXiv 2306.06101) estimate the scale ``D`` of ``x0 - x*`` from the run
itself and use it as Adam's learning rate.

The estimate, with ``lambda_t`` the weight of step ``t`` (larger once ``d`` has
grown, so that early, too-small steps count less):

* ``num_t = beta * num_{t-1} + lambda_t * <g_t, x0 - x_t>`` (a scalar over all
  parameters: how far the gradients say the run has moved toward lower loss),
  with ``x_t - x0`` kept as the float32 sum of the updates applied so far
  (``moved``), not read off the parameters: bfloat16 parameters round a small
  step away, and ``D`` would then never grow from its tiny start,
* ``s_t = beta * s_{t-1} + lambda_t * g_t`` (shaped like the parameters),
* ``d_{t+1} = max(d_t, num_t / ||s_t||_1)``: it only grows, from a tiny ``d_0``.

Cost: two accumulators shaped like the parameters (``moved`` and ``s``) and two
reductions per tensor (``<g, moved>`` and ``||s||_1``). The functions below
are pieces an architecture calls inside its own per-tensor loop, so that XLA
can fuse them with the rest of the update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lopt import features as ft


def init(params: Any, initial: float) -> dict[str, Any]:
    """State for ``params``: nothing moved yet, zero sums and ``d = initial``."""
    return {
        "moved": jax.tree.map(ft.zeros_like_param, params),
        "s": jax.tree.map(ft.zeros_like_param, params),
        "d": jnp.asarray(initial, jnp.float32),
        "num": jnp.zeros((), jnp.float32),
    }


def step_weight(d: jax.Array, lr: jax.Array, initial: float) -> jax.Array:
    """``lambda_t = (d / d_0) * lr_t``: Prodigy's weighting (``lr_t`` already contains ``d``).

    Dividing by ``d_0`` keeps ``num`` and ``s`` in float32's range while ``d``
    is still near its tiny starting value; it cancels in ``num / ||s||_1``.
    """
    return (d / initial) * lr


def accumulate(s: jax.Array, g: jax.Array, decay: float, weight: jax.Array) -> jax.Array:
    """``decay * s + weight * g`` (one tensor)."""
    return decay * s + weight * g


def guarded_accumulate(s: jax.Array, g: jax.Array, decay: float, weight: jax.Array, ok: jax.Array) -> jax.Array:
    """:func:`accumulate` if ``ok``, else ``s`` exactly, in one loop (see :func:`lopt.features.guarded_ema`)."""
    return ft.guarded(lambda s_, g_: accumulate(s_, g_, decay, weight), s, g, ok)


def leaf_terms(g: jax.Array, moved: jax.Array, s: jax.Array, decay: float, weight: jax.Array):
    """One tensor's part: ``(new s, <g, x0 - x>, ||new s||_1)`` with ``x - x0 = moved``."""
    s_new = accumulate(s, g, decay, weight)
    return s_new, -jnp.sum(g * moved), jnp.sum(jnp.abs(s_new))


def next_estimate(d: jax.Array, num: jax.Array, dot: jax.Array, l1: jax.Array, decay: float, weight: jax.Array):
    """``(d_{t+1}, num_t, finite)`` from the summed per-tensor terms.

    ``finite`` is False when ``num``, ``||s||_1`` or the new ``d`` is not
    finite (the step must then be skipped, or ``d`` would stay broken for the
    rest of the run). With every gradient zero so far ``||s||_1`` is 0 and
    ``d`` simply stays.
    """
    num_new = decay * num + weight * dot
    ratio = jnp.where(l1 > 0, num_new / jnp.where(l1 > 0, l1, 1.0), 0.0)
    d_new = jnp.maximum(d, ratio)
    finite = jnp.isfinite(num_new) & jnp.isfinite(l1) & jnp.isfinite(d_new)
    return d_new, num_new, finite
