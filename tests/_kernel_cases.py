"""Shared inputs of the kernel tests: a small model with every kind of leaf, gradients, a run, a tolerance."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt


def params(dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "w": (jax.random.normal(k1, (37, 21)) * 0.3).astype(dtype),
        "b": jnp.zeros((21,), dtype),
        "conv": (jax.random.normal(k2, (3, 3, 4, 8)) * 0.1).astype(dtype),
        "gain": jnp.ones((), dtype),
        "empty": jnp.zeros((0, 3), dtype),
    }


def grads(params, i, nan=False, huge=False):
    """Gradients that do not depend on the parameters, so rounding differences cannot feed back."""
    def leaf(p, j):
        idx = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
        return (0.05 * jnp.sin(0.37 * idx + 1.3 * i + j) + 0.01 * jnp.cos(0.11 * i * (j + 1))).astype(p.dtype)

    g = {k: leaf(p, j) for j, (k, p) in enumerate(sorted(params.items()))}
    if nan:
        g["b"] = g["b"].at[3].set(jnp.nan)
    if huge:
        g["w"] = g["w"].at[0, 0].set(1e20)
    return g


def run(tx, params, steps=12, bad=None):
    state = tx.init(params)
    update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, value=loss))
    p, history = params, []
    for i in range(steps):
        g = grads(params, i, nan=bad == ("nan", i), huge=bad == ("huge", i))
        u, state = update(g, state, p, jnp.float32(2.0 / (i + 1)))
        history.append(u)
        p = optax.apply_updates(p, u)
    return p, state, history


def close(a, b, rtol=2e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        if x.size:
            scale = np.max(np.abs(x)) + 1e-30
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def lagged(opt):
    """The same optimizer with ``tensor_stats="previous"`` (the one-pass kernel)."""
    return lopt.TrainedOptimizer(dataclasses.replace(opt.arch, tensor_stats="previous"), opt.meta_params, {})
