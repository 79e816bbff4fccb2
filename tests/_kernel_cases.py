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


def assert_like_xla(opt, kernel, params, steps=12, bad=None, num_steps=40):
    """Runs ``opt`` through ``kernel`` and through XLA; every update, the final state and parameters agree."""
    xla = run(opt.as_optax(num_steps, kernel="xla"), params, steps=steps, bad=bad)
    fused = run(opt.as_optax(num_steps, kernel=kernel), params, steps=steps, bad=bad)
    close(xla[2], fused[2])  # every step's updates
    close(xla[1], fused[1])  # accumulators, statistics, D estimate, counters
    close(xla[0], fused[0])
    return xla, fused


def assert_skips_like_xla(opt, kernel, bad):
    """A bad gradient at step 3 of 6: both implementations skip it, with a zero update, and agree after."""
    xla, fused = assert_like_xla(opt, kernel, params(), steps=6, bad=(bad, 3))
    assert int(fused[1].skipped) == int(xla[1].skipped) == 1 and int(fused[1].step) == 5
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(fused[2][3]) if u.size)


def assert_skip_keeps_the_accumulators_exactly(kernel):
    tx = lopt.pretrained("default").as_optax(40, kernel=kernel)
    p = params()
    update = jax.jit(lambda g, s, p_: tx.update(g, s, p_, value=1.0))
    _, state = update(grads(p, 0), tx.init(p), p)
    _, after = update(grads(p, 1, nan=True), state, p)
    for x, y in zip(jax.tree.leaves(state.inner), jax.tree.leaves(after.inner)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(after.skipped) == 1


def update_jaxpr(tx, p) -> str:
    """The traced update of ``tx`` on parameters shaped like ``p``, as text (which custom calls it makes)."""
    state = jax.eval_shape(tx.init, p)
    return str(jax.make_jaxpr(lambda g, s, p_: tx.update(g, s, p_, value=1.0))(p, state, p))


def assert_scaled_bfloat16_like_xla(kernel):
    """muP update scales and bfloat16 parameters: bfloat16 updates, within one bfloat16 rounding of XLA's."""
    opt = lopt.pretrained("default")
    p = params(jnp.bfloat16)
    scales = {"w": 0.5, "b": 2.0, "conv": 1.0, "gain": 0.25, "empty": 1.0}
    xla = run(opt.as_optax(30, update_scales=scales, kernel="xla"), p, steps=6)
    fused = run(opt.as_optax(30, update_scales=scales, kernel=kernel), p, steps=6)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(fused[2][-1]))
    close(xla[1], fused[1], rtol=2e-3)
    close(xla[2], fused[2], rtol=2e-2)  # bfloat16 updates: one rounding of 2^-8
