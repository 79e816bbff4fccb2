"""Step time and optimizer memory of learned optimizers against ``optax.adam``.

Step time: ``num_steps`` training steps (batch sampling, forward, backward,
optimizer update) in one ``lax.scan`` under one ``jit``, timed after a warm-up
compile; each optimizer is timed ``repeats`` times, interleaved with the others
so that load from other processes hits all of them alike, and the minimum is
kept. Reported as milliseconds per step and as the ratio to Adam measured in
the same process -- ratios are what survive a noisy, shared machine.

Memory: bytes of optimizer state per parameter, from ``jax.eval_shape`` of
``tx.init`` (exact, allocates nothing), against Adam's.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.inner_step import inner_step, optax_update
from lopt.tasks.base import Task

REFERENCE_MODELS = ("mlp_digits", "cnn_digits", "char_lm")
PRETRAINED_PREFIX = "pretrained:"  # --architectures pretrained:NAME measures a shipped optimizer


def scanned_training(task: Task, tx: optax.GradientTransformation, num_steps: int) -> Callable:
    """jit(fn(data, key) -> final loss) running ``num_steps`` steps of ``tx`` in one scan.

    Only the step is measured (no validation, unlike ``train_task``), so the
    ratio to Adam is the ratio of step costs.
    """
    update = optax_update(tx)
    hp = task.default_hparams()

    def run(data, key):
        k_init, k_batch = jax.random.split(key)
        params = task.init(k_init, hp)
        state = tx.init(params)

        def step(carry, t):
            params, state, loss = inner_step(task, data, update, *carry, jax.random.fold_in(k_batch, t), hp)
            return (params, state), loss

        _, losses = jax.lax.scan(step, (params, state), jnp.arange(num_steps, dtype=jnp.int32))
        return losses[-1]

    return jax.jit(run)


def learned_txs(num_steps: int, architectures: list[str] | None = None) -> dict[str, optax.GradientTransformation]:
    """Each architecture at its default hyperparameters and fresh meta-parameters, exported through optax.

    Fresh weights cost the same as trained ones: step time depends on the
    architecture, not on the values of its meta-parameters. A name
    ``pretrained:NAME`` is a shipped optimizer with its own options (the
    ``default`` one turns on the schedule and centering, which cost time);
    without a selection every architecture and ``pretrained:default`` are
    measured. A suffix ``@xla``, ``@cpu``, ``@pallas`` or ``@auto`` picks the update's
    implementation (``as_optax``'s ``kernel``, :mod:`lopt.kernels`); without
    one it is ``auto``, what users get.
    """
    import lopt
    from lopt import architectures as archs
    from lopt.optax_export import as_optax

    out = {}
    for name in architectures or [*archs.names(), f"{PRETRAINED_PREFIX}default"]:
        base, _, kernel = name.partition("@")
        kernel = kernel or "auto"
        if base.startswith(PRETRAINED_PREFIX):
            out[name] = lopt.pretrained(base[len(PRETRAINED_PREFIX) :]).as_optax(num_steps, kernel=kernel)
            continue
        arch = archs.get(base)
        out[name] = as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(0)), num_steps, kernel=kernel)
    return out


def time_step(
    task: Task, txs: dict[str, optax.GradientTransformation], num_steps: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per step of each tx, interleaved, on ``task``."""
    data = task.load_data()
    key = jax.random.PRNGKey(0)
    fns = {name: scanned_training(task, tx, num_steps) for name, tx in txs.items()}
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn(data, key))
    best = {name: np.inf for name in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name](data, key))
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: 1e3 * t / num_steps for name, t in best.items()}


def state_bytes_per_param(task: Task, tx: optax.GradientTransformation) -> float:
    """Bytes of ``tx.init(params)`` divided by the number of parameters (no allocation)."""
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    state = jax.eval_shape(tx.init, params)
    nbytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    return nbytes / task.num_params()


def bench_step_time(models: list[str], num_steps: int, repeats: int, architectures: list[str] | None = None) -> dict[str, Any]:
    from lopt.tasks.registry import get_task

    txs = {"adam": optax.adam(1e-3), **learned_txs(num_steps, architectures)}
    out: dict[str, Any] = {"num_steps": num_steps, "repeats": repeats, "models": {}}
    for model in models:
        task = get_task(model)
        ms = time_step(task, txs, num_steps, repeats)
        out["models"][model] = {
            "num_params": task.num_params(),
            "adam_ms_per_step": ms["adam"],
            "learned": {n: {"ms_per_step": ms[n], "ratio_to_adam": ms[n] / ms["adam"]} for n in txs if n != "adam"},
        }
    return out


def bench_memory(models: list[str], architectures: list[str] | None = None) -> dict[str, Any]:
    from lopt.tasks.registry import get_task

    txs = learned_txs(1000, architectures)
    out: dict[str, Any] = {}
    for model in models:
        task = get_task(model)
        adam = state_bytes_per_param(task, optax.adam(1e-3))
        out[model] = {
            "num_params": task.num_params(),
            "adam_bytes_per_param": adam,
            "learned": {
                n: {"bytes_per_param": b, "ratio_to_adam": b / adam}
                for n, b in ((n, state_bytes_per_param(task, tx)) for n, tx in txs.items())
            },
        }
    return out
