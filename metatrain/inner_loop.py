"""Train one task with any optax optimizer in a single scanned, jittable function.

This is the plain "inner loop" shared by meta-validation (a learned optimizer
wrapped as an optax transformation), the Adam baseline of the throughput
benchmark, and ``eval/``. It is a pure function: ``jax.jit`` it with the
static arguments bound, and ``jax.vmap`` it over keys to train many seeds at
once. Batches are sampled inside the scan from ``data`` (passed as an
argument, never closed over), so a whole training run is one compiled program
with no host round-trip per step.

The loss of the current batch is passed to the optimizer as ``value=loss``, as
``optax.GradientTransformationExtraArgs`` expects (plain transformations are
wrapped with :func:`optax.with_extra_args_support` and ignore it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.inner_step import inner_step, optax_update
from lopt.tasks.base import Data, HParams, Task


def eval_steps(num_steps: int, eval_every: int) -> np.ndarray:
    """Inner steps after which validation runs: 0, eval_every, 2*eval_every, ..., num_steps.

    Step 0 is the initial parameters; ``num_steps`` is always included even
    when it is not a multiple of ``eval_every``.
    """
    if num_steps < 0 or eval_every <= 0:
        raise ValueError(f"need num_steps >= 0 and eval_every > 0, got {num_steps} and {eval_every}")
    steps = list(range(0, num_steps + 1, eval_every))
    if steps[-1] != num_steps:
        steps.append(num_steps)
    return np.asarray(steps, np.int32)


def _validate(task: Task, data: Data, params: Any, key: jax.Array, hparams: HParams, eval_batches: int | None):
    """Validation loss and aux metrics: the whole split (``None``) or the mean of ``eval_batches`` sampled batches."""
    if eval_batches is None:
        return task.valid_loss_full(params, data, hparams)

    def one(k):
        batch = task.sample_batch(data, k, "valid", hparams)
        return task.loss_and_aux(params, batch, hparams)

    loss, aux = jax.vmap(one)(jax.random.split(key, eval_batches))
    return jnp.mean(loss), jax.tree.map(jnp.mean, aux)


def train_task(
    task: Task,
    data: Data,
    tx: optax.GradientTransformation,
    key: jax.Array,
    num_steps: int,
    hparams: HParams | None = None,
    eval_every: int = 100,
    eval_batches: int | None = None,
    return_params: bool = False,
    eval_params: Callable[[Any, Any], Any] | None = None,
) -> dict[str, Any]:
    """Train ``task`` for ``num_steps`` steps of ``tx`` from a fresh init drawn with ``key``.

    Args:
      task: the task (static).
      data: ``task.load_data()`` (device arrays; traced).
      tx: any optax transformation; receives ``value=loss`` on every update.
      key: PRNG key; init, batches and validation batches are derived from it.
      num_steps: number of inner steps (static).
      hparams: traced task hyperparameters; ``task.default_hparams()`` if None.
      eval_every: validation period in steps (static); see :func:`eval_steps`.
      eval_batches: None (default) validates on the whole validation split
        (:meth:`Task.valid_loss_full`: noise-free, the same examples for every
        optimizer, what evaluation reports); an int averages that many sampled
        batches instead (cheaper, what meta-validation uses).
      return_params: also return the final parameters and optimizer state.
      eval_params: ``(opt_state, params) -> params`` to validate at other
        parameters than the iterate, e.g. schedule-free's averaged ones
        (``optax.contrib.schedule_free_eval_params``); training is unchanged.

    Returns a dict of arrays:
      ``train_loss`` (num_steps,) loss of each step's batch before its update;
      ``valid_loss`` (E,) and ``valid_aux`` {name: (E,)} at :func:`eval_steps`;
      ``eval_step`` (E,) the step numbers; ``final_params`` and
      ``final_opt_state`` if requested.
    """
    hp = task.default_hparams() if hparams is None else hparams
    update = optax_update(tx)
    k_init, k_train, k_valid = jax.random.split(key, 3)
    params = task.init(k_init, hp)
    opt_state = tx.init(params)

    def step(carry, t):
        params, opt_state, loss = inner_step(task, data, update, *carry, jax.random.fold_in(k_train, t), hp)
        return (params, opt_state), loss

    def run(carry, start, length):
        return jax.lax.scan(step, carry, start + jnp.arange(length, dtype=jnp.int32))

    def evaluate(carry, i):
        params, opt_state = carry
        at = params if eval_params is None else eval_params(opt_state, params)
        return _validate(task, data, at, jax.random.fold_in(k_valid, i), hp, eval_batches)

    steps = eval_steps(num_steps, eval_every)
    num_chunks, remainder = divmod(num_steps, eval_every)

    def chunk(carry, i):
        carry, losses = run(carry, i * eval_every, eval_every)
        return carry, (losses, evaluate(carry, i + 1))

    carry = (params, opt_state)
    v0 = evaluate(carry, 0)
    carry, (losses, (vloss, vaux)) = jax.lax.scan(chunk, carry, jnp.arange(num_chunks, dtype=jnp.int32))
    losses = losses.reshape(-1)
    vloss = jnp.concatenate([v0[0][None], vloss])
    vaux = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), v0[1], vaux)
    if remainder:
        carry, tail = run(carry, num_chunks * eval_every, remainder)
        vl, va = evaluate(carry, num_chunks + 1)
        losses = jnp.concatenate([losses, tail])
        vloss = jnp.concatenate([vloss, vl[None]])
        vaux = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), vaux, va)
    out = {"train_loss": losses, "valid_loss": vloss, "valid_aux": vaux, "eval_step": jnp.asarray(steps)}
    if return_params:
        out["final_params"], out["final_opt_state"] = carry
    return out
