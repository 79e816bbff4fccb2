"""A learned optimizer as an ordinary optax ``GradientTransformationExtraArgs``.

``as_optax(arch, meta_params, num_steps)`` closes over the weights and the
planned number of steps and returns ``init(params)`` / ``update(grads, state,
params, *, value=None)``, so it drops into ``optax.chain`` (e.g. after
``optax.clip_by_global_norm``), ``optax.MultiSteps``, flax ``TrainState`` and
``nnx.Optimizer`` like any optax optimizer.

The loss reaches the optimizer through optax's ``value=`` keyword, the same
convention as ``optax.contrib.reduce_on_plateau`` and line searches::

    updates, state = tx.update(grads, state, params, value=loss)

Without ``value`` the loss features are zero: the optimizer still works but
cannot react to the loss (``TrainState.apply_gradients`` is such a caller).
Learned optimizers always need ``params`` (parameter values are features).

Guard: a step whose update or any new accumulator is not finite (NaN/inf
gradients, an overflow, a gradient so large its square overflows) is skipped -- the returned updates are zeros, so the parameters are unchanged,
the accumulators keep their old values -- and counted in ``state.skipped``
(``state`` is a :class:`lopt.OptState`; inside ``optax.chain`` it is one
element of the chain's tuple).

``num_steps`` is the length of training the optimizer plans for (its time
features say what fraction of it is done); pass the real length of your run.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from lopt import kernels
from lopt.base import LearnedOptimizer, OptimizerError, check_num_steps


def as_optax(
    arch: LearnedOptimizer,
    meta_params: Any,
    num_steps: int,
    update_scales: Any | None = None,
    kernel: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``arch`` with fixed ``meta_params`` into an optax transformation.

    ``update_scales`` is an optional pytree like the params of per-leaf float
    multipliers applied to each leaf's update (the muP mode); default all ones.
    ``kernel`` picks how the update runs: ``"xla"``, the fused ``"cpu"`` kernel, the
    ``"pallas"`` kernel (GPUs), or ``"auto"`` (the CPU kernel on large single-device CPU
    models; :mod:`lopt.kernels`).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, jnp.integer)) or int(num_steps) < 1:
        raise OptimizerError(f"num_steps must be a positive integer (the planned run length), got {num_steps!r}")
    check_num_steps(num_steps)  # fits the int32 step counter
    num_steps = int(num_steps)
    kernel = kernels.check_kernel(kernel)

    def init_fn(params: Any) -> Any:
        return arch.init(meta_params, params, num_steps, update_scales)

    def update_fn(updates: Any, state: Any, params: Any = None, *, value: Any = None, **extra: Any):
        del extra  # other transformations' extra arguments (optax passes them to everyone)
        if params is None:
            raise OptimizerError(
                f"learned optimizer {arch.arch!r} needs the parameters: call tx.update(grads, state, params)"
            )
        fused = kernels.fused_update(kernel, arch, params)
        if fused is not None:
            return fused(arch, meta_params, state, updates, params, value)
        return arch.update(meta_params, state, updates, params, value)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
