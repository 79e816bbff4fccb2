"""What a learned optimizer costs on a model of >= 10M parameters, next to Adam and AdamW.

On ``lopt bench``'s reference models (2-35 thousand parameters) the forward
and backward pass dominate and hide the optimizer's per-parameter cost. Here
the model is a 4-layer tanh MLP of 10.5M parameters (512 -> 2048 -> 2048 ->
2048 -> 512, batch 64, regression on fixed random data kept on device), the
size at which issue 18 measured the shipped optimizer at 8-9x Adam's step.

Three numbers per optimizer, each measured in one process, interleaved with
Adam so load from other processes hits all alike (best of ``repeats``):

* full training step (forward, backward, update) in ms, ``num_steps`` steps in
  one scanned ``jit``, and its ratio to ``optax.adam``;
* the optimizer alone (fixed gradients, ``update`` + ``apply_updates``) in
  nanoseconds per parameter per step, and its ratio to Adam;
* optimizer state bytes per parameter (``jax.eval_shape``, exact) and the ratio.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

WIDTHS = (512, 2048, 2048, 2048, 512)
BATCH = 64


def mlp_params(key: jax.Array, widths: tuple[int, ...] = WIDTHS) -> dict[str, Any]:
    keys = jax.random.split(key, len(widths) - 1)
    return {
        f"layer{i}": {
            "w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a),
            "b": jnp.zeros((b,), jnp.float32),
        }
        for i, (k, a, b) in enumerate(zip(keys, widths[:-1], widths[1:]))
    }


def mlp_loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    n = len(params)
    for i in range(n):
        h = h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
        if i < n - 1:
            h = jnp.tanh(h)
    return jnp.mean(jnp.square(h - y))


def num_params(widths: tuple[int, ...] = WIDTHS) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per call of each fn, interleaved (the first call compiles)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = {name: np.inf for name in fns}
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def full_step_fns(txs: dict[str, optax.GradientTransformation], num_steps: int, widths=WIDTHS) -> dict[str, Callable]:
    """One scanned-jit training run per optimizer: ``num_steps`` forward/backward/update steps."""
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (BATCH, widths[0]), jnp.float32)
    y = jax.random.normal(ky, (BATCH, widths[-1]), jnp.float32)
    params = mlp_params(kp, widths)

    def make(tx):
        def run(params, x, y):
            def step(carry, _):
                p, s = carry
                loss, g = jax.value_and_grad(mlp_loss)(p, x, y)
                u, s = tx.update(g, s, p, value=loss)
                return (optax.apply_updates(p, u), s), loss

            _, losses = jax.lax.scan(step, (params, tx.init(params)), None, length=num_steps)
            return losses[-1]

        fn = jax.jit(run)
        return lambda: fn(params, x, y)

    return {name: make(tx) for name, tx in txs.items()}


def optimizer_alone_fns(txs: dict[str, optax.GradientTransformation], num_steps: int, widths=WIDTHS) -> dict[str, Callable]:
    """The update alone: fixed gradients, ``num_steps`` updates + ``apply_updates`` in one scan."""
    params = mlp_params(jax.random.PRNGKey(0), widths)
    grads = jax.tree.map(lambda p: 1e-3 * jnp.cos(p * 7.0), params)

    def make(tx):
        def run(params, grads, state):
            def step(carry, t):
                p, s = carry
                u, s = tx.update(grads, s, p, value=1.0 / (1.0 + t))
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(step, (params, state), jnp.arange(num_steps, dtype=jnp.float32))
            return p

        fn = jax.jit(run)
        state = jax.jit(tx.init)(params)
        return lambda: fn(params, grads, state)

    return {name: make(tx) for name, tx in txs.items()}


def state_bytes(tx: optax.GradientTransformation, widths=WIDTHS) -> int:
    params = jax.eval_shape(lambda k: mlp_params(k, widths), jax.random.PRNGKey(0))
    state = jax.eval_shape(tx.init, params)
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def bench_large(
    learned: dict[str, optax.GradientTransformation],
    num_steps: int = 10,
    repeats: int = 3,
    widths: tuple[int, ...] = WIDTHS,
    parts: tuple[str, ...] = ("full_step", "optimizer_alone", "memory"),
) -> dict[str, Any]:
    """Full step, optimizer-alone cost and state bytes of ``learned`` against Adam and AdamW."""
    txs = {"adam": optax.adam(1e-3), "adamw": optax.adamw(1e-3), **learned}
    n = num_params(widths)
    out: dict[str, Any] = {"model": f"tanh MLP {'-'.join(map(str, widths))}, batch {BATCH}", "num_params": n,
                           "num_steps": num_steps, "repeats": repeats, "optimizers": {k: {} for k in txs}}
    if "memory" in parts:  # first: exact, and costs no compile
        adam = state_bytes(txs["adam"], widths)
        for k, tx in txs.items():
            b = state_bytes(tx, widths)
            out["optimizers"][k]["state_bytes_per_param"] = b / n
            out["optimizers"][k]["state_x_adam"] = b / adam
    if "full_step" in parts:
        t = _timed(full_step_fns(txs, num_steps, widths), repeats)
        for k in txs:
            out["optimizers"][k]["full_step_ms"] = 1e3 * t[k] / num_steps
            out["optimizers"][k]["full_step_x_adam"] = t[k] / t["adam"]
        print("\n".join(render(out)), file=sys.stderr, flush=True)  # partial result, in case the rest is cut short
    if "optimizer_alone" in parts:
        t = _timed(optimizer_alone_fns(txs, num_steps, widths), repeats)
        for k in txs:
            out["optimizers"][k]["ns_per_param"] = 1e9 * t[k] / (num_steps * n)
            out["optimizers"][k]["ns_per_param_x_adam"] = t[k] / t["adam"]
    return out


def render(result: dict[str, Any]) -> list[str]:
    """Markdown table of :func:`bench_large`'s result."""
    cols = [("full_step_ms", "step ms", ".3g"), ("full_step_x_adam", "x adam", ".2f"),
            ("ns_per_param", "opt ns/param", ".3g"), ("ns_per_param_x_adam", "x adam", ".2f"),
            ("state_bytes_per_param", "state B/param", ".2f"), ("state_x_adam", "x adam", ".2f")]
    cols = [c for c in cols if any(c[0] in v for v in result["optimizers"].values())]
    lines = [f"### Large model: {result['model']}, {result['num_params']:,} parameters "
             f"({result['num_steps']} steps per scan, best of {result['repeats']})", "",
             "| optimizer | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in result["optimizers"].items():
        lines.append(f"| {name} | " + " | ".join(format(v[c[0]], c[2]) if c[0] in v else "" for c in cols) + " |")
    lines.append("")
    return lines
