"""The per-step and per-tensor scalars of ``normed_fc`` (:mod:`lopt.architectures.normed_fc`).

Kept apart from the rule so that every implementation of its update (XLA's and
the fused kernels of :mod:`lopt.kernels.normed_fc_fused`) shares one definition.

**Which step's tensor statistics** (``tensor_stats``). Three per-tensor
statistics enter the update: ``rms(a)`` and ``rms(p)`` feed the per-parameter
network and the step scale, and the network's output ``d`` is normalized by
``rms(d)``. Taken from the current step (``"current"``), they depend on each
other, so the update has to pass over every tensor three times before it can
write anything (statistics, then ``rms(d)``, then the update). Taken from the
previous applied step (``"previous"``), the update is one pass: it uses the
stored statistics and computes this step's for the next one on the way. The
step's magnitude depends on them only through the ratio ``rms(a) / rms(d)``
and the slowly moving features ``log rms(a)``, ``log rms(p)``. Before the first
step the stored values are ``rms(a) = rms(d) = 1`` (exact for Adam's direction
on the first step, whose elements are +-1 where the gradient is not zero) and
``rms(p)`` of the initial parameters.

With ``"previous"`` nothing this step computes can be allowed to decide the
guard, since a one-pass update has written its accumulators by the time it
knows them. So the guard is what is known before the pass: every gradient
bounded (:func:`lopt.base.gradients_bounded`) and the step's scalars finite. A
statistic or distance estimate that comes out non-finite anyway is not stored
(the previous one is kept).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt import distance

LOSS_DECAY = 0.95  # running mean of the loss used by the loss feature
STEP_LOW, STEP_HIGH = math.log(0.01), math.log(10.0)  # bounds of the learned log step multiplier
RELATIVE_STEP_RMS = ("current", "initial")  # whose RMS normed_fc's relative step reads
PARAM_RMS_FLOOR = 1e-3  # log rms(p) feature uses max(rms(p), this)
TINY_RMS = 1e-30  # added to mean squares before a division / log
TENSOR_STATS = ("current", "previous")


class StepScalars(NamedTuple):
    """The scalars of one step that every tensor's update uses (:meth:`NormedFC.step_scalars`)."""

    beta_m: jax.Array  # momentum decays, one per momentum
    beta_v: jax.Array  # second-moment decay
    corr_m: jax.Array  # bias corrections of the momenta
    corr_v: jax.Array  # bias correction of the second moment
    loss_mean: jax.Array  # running mean of the loss before this step
    lr_t: jax.Array  # this step's learning rate of the gradient step
    wd: jax.Array  # decoupled weight decay rate of this run
    lr_decay: jax.Array  # the learning rate the decay is scaled by
    weight: jax.Array | None  # the D estimate's weight of this step (None: fixed step size)
    bias_step: jax.Array  # first layer's bias from the step features (hidden,)
    log_step_time: jax.Array  # the log step multiplier's step-feature part


def bounded(x: jax.Array) -> jax.Array:
    """Smooth clip of the learned log step multiplier into [STEP_LOW, STEP_HIGH] (slope 1 at 0)."""
    return jnp.where(x > 0, STEP_HIGH * jnp.tanh(x / STEP_HIGH), -STEP_LOW * jnp.tanh(x / -STEP_LOW))


def rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)) + TINY_RMS)


def rms_from_sum(total: jax.Array, n: int) -> jax.Array:
    """:func:`rms` of a tensor of ``n`` elements from the sum of its squares."""
    return jnp.sqrt(total / n + TINY_RMS)


def horizon_factor(num_steps: jax.Array, horizon: int, exponent: float) -> jax.Array:
    """``min(1, horizon / num_steps)**exponent``: 1 for runs planned for at most ``horizon`` steps (0: always 1)."""
    if not horizon:
        return jnp.ones((), jnp.float32)
    factor = jnp.minimum(1.0, horizon / jnp.maximum(num_steps.astype(jnp.float32), 1.0))
    return factor if exponent == 1.0 else factor**exponent


# ------------------------------------------------------------ stored statistics (tensor_stats="previous")
def initial_rms(p: jax.Array) -> jax.Array:
    """A tensor's RMS at initialization, exactly 0 for an all-zero or empty tensor (the relative step's scale)."""
    x = jnp.asarray(p, jnp.float32)
    return jnp.sqrt(jnp.mean(jnp.square(x))) if x.size else jnp.zeros((), jnp.float32)


def initial_stats(p: jax.Array) -> jax.Array:
    """``[rms(a), rms(p), rms(d)]`` before the first step: 1, the initial parameters' RMS, 1."""
    rms_p = rms(jnp.asarray(p, jnp.float32)) if jnp.size(p) else jnp.ones((), jnp.float32)
    return jnp.stack([jnp.ones((), jnp.float32), rms_p, jnp.ones((), jnp.float32)])


def next_stats(rms_a: jax.Array, rms_p: jax.Array, rms_d: jax.Array, old: jax.Array) -> jax.Array:
    """This step's statistics to store for the next one; any that is not finite keeps its old value."""
    new = jnp.stack([rms_a, rms_p, rms_d])
    return jnp.where(jnp.isfinite(new), new, old)


def next_distance(lagged: bool, inner: dict, dot: jax.Array, l1: jax.Array, decay: float, weight: jax.Array):
    """``(d, num, finite)``: the D estimate after this step (:func:`lopt.distance.next_estimate`) and whether
    the guard should let the step through.

    With this step's statistics a non-finite estimate skips the step. With the
    previous step's the guard is decided before the pass, so a non-finite
    estimate is not stored (the old one is kept) and ``finite`` is True.
    """
    d, num, finite = distance.next_estimate(inner["d"], inner["num"], dot, l1, decay, weight)
    if not lagged:
        return d, num, finite
    return jnp.where(finite, d, inner["d"]), jnp.where(finite, num, inner["num"]), jnp.asarray(True)
