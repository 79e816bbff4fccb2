"""One inner training step, written once for every loop that trains a task.

Meta-training's unroll engine, evaluation runs, meta-validation, the step-time
benchmark and the throughput measurement all advance a task the same way:
sample a batch inside ``jit``, take the loss and its gradients, ask the
optimizer for an update (passing the loss as optax's ``value=``), apply it.
Writing that once keeps them from drifting apart: an evaluation measures
exactly the step that meta-training optimized, and a benchmark times exactly
the step users run.

The optimizer is any ``update(grads, state, params, loss) -> (updates, state)``
function: :func:`optax_update` adapts an optax transformation (plain ones
ignore the loss), and meta-training passes a learned optimizer's ``update``
with its meta-parameters bound. The non-finite guard belongs to the optimizer
(:meth:`lopt.base.LearnedOptimizer.update` skips a step whose update or
accumulators are not finite), so it is the same in every loop.

Task augmentation (meta-training only) is two optional scalars: the optimizer
sees parameters ``p`` while the task is evaluated at ``p * param_scale``, and
it sees the loss times ``loss_scale``; the returned loss is always the task's
own, unscaled loss, measured at the parameters before the update.

The task is duck-typed (``sample_batch(data, key, split, hparams)`` and
``loss(params, batch, hparams)``, as :class:`lopt.tasks.base.Task` has), so
this module imports only jax and optax and sits below both ``lopt.metatrain``
and ``lopt.eval``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

UpdateFn = Callable[[Any, Any, Any, jax.Array], tuple[Any, Any]]


def optax_update(tx: optax.GradientTransformation) -> UpdateFn:
    """``tx.update`` as an :data:`UpdateFn`; the loss goes in as ``value=``."""
    tx = optax.with_extra_args_support(tx)

    def update(grads, state, params, loss):
        return tx.update(grads, state, params, value=loss)

    return update


def inner_step(
    task: Any,
    data: Any,
    update: UpdateFn,
    params: Any,
    opt_state: Any,
    key: jax.Array,
    hparams: Any,
    param_scale: jax.Array | None = None,
    loss_scale: jax.Array | None = None,
) -> tuple[Any, Any, jax.Array]:
    """One step on a batch drawn with ``key``: returns (new params, new state, loss before the update)."""
    batch = task.sample_batch(data, key, "train", hparams)

    def seen_loss(p):
        real = p if param_scale is None else jax.tree.map(lambda x: x * param_scale, p)
        raw = task.loss(real, batch, hparams)
        return (raw if loss_scale is None else raw * loss_scale), raw

    (seen, raw), grads = jax.value_and_grad(seen_loss, has_aux=True)(params)
    updates, opt_state = update(grads, opt_state, params, seen)
    return optax.apply_updates(params, updates), opt_state, raw
