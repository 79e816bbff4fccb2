"""The fused CPU kernels of ``normed_fc``: the same rule as the XLA update, the same guard, the choice rule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import architectures, kernels
from lopt.base import OptimizerError
from lopt.kernels import build, normed_fc_cpu


@pytest.fixture(scope="module", autouse=True)
def _kernel_built():
    try:
        build.load(normed_fc_cpu.NAME)
    except build.KernelUnavailable as e:  # no C++ compiler here: nothing to compare
        pytest.skip(f"fused CPU kernel unavailable: {e}")


def _params(dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "w": (jax.random.normal(k1, (37, 21)) * 0.3).astype(dtype),
        "b": jnp.zeros((21,), dtype),
        "conv": (jax.random.normal(k2, (3, 3, 4, 8)) * 0.1).astype(dtype),
        "gain": jnp.ones((), dtype),
        "empty": jnp.zeros((0, 3), dtype),
    }


def _grads(params, i, nan=False, huge=False):
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


def _run(tx, params, steps=12, bad=None):
    state = tx.init(params)
    update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, value=loss))
    p, history = params, []
    for i in range(steps):
        g = _grads(params, i, nan=bad == ("nan", i), huge=bad == ("huge", i))
        u, state = update(g, state, p, jnp.float32(2.0 / (i + 1)))
        history.append(u)
        p = optax.apply_updates(p, u)
    return p, state, history


def _close(a, b, rtol=2e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        if x.size:
            scale = np.max(np.abs(x)) + 1e-30
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def _lagged(opt):
    """The same optimizer with ``tensor_stats="previous"`` (the one-pass kernel)."""
    return lopt.TrainedOptimizer(dataclasses.replace(opt.arch, tensor_stats="previous"), opt.meta_params, {})


CASES = {
    "shipped default (2 momenta, distance step)": lambda: lopt.pretrained("default"),
    "shipped default, previous step's statistics (one pass)": lambda: _lagged(lopt.pretrained("default")),
    "fresh normed_fc, 3 momenta, previous step's statistics": lambda: _lagged(lopt.TrainedOptimizer(
        a := architectures.get("normed_fc"), a.init_meta_params(jax.random.PRNGKey(3)), {})),
    "fresh normed_fc (3 momenta, fixed step, decay on matrices)": lambda: lopt.TrainedOptimizer(
        a := architectures.get("normed_fc", decay_min_ndim=2), a.init_meta_params(jax.random.PRNGKey(1)), {}),
    "hidden 8, 1 momentum, distance": lambda: lopt.TrainedOptimizer(
        a := architectures.get("normed_fc", hidden=8, momentum_decays=[0.8], step_size="distance"),
        a.init_meta_params(jax.random.PRNGKey(2)), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_the_xla_update(case):
    opt = CASES[case]()
    params = _params()
    xla = _run(opt.as_optax(40, kernel="xla"), params)
    cpu = _run(opt.as_optax(40, kernel="cpu"), params)
    _close(xla[2], cpu[2])  # every step's updates
    _close(xla[1], cpu[1])  # accumulators, D estimate, counters
    _close(xla[0], cpu[0])


def test_kernel_update_scales_and_bfloat16_params():
    opt = lopt.pretrained("default")
    params = _params(jnp.bfloat16)
    scales = {"w": 0.5, "b": 2.0, "conv": 1.0, "gain": 0.25, "empty": 1.0}
    xla = _run(opt.as_optax(30, update_scales=scales, kernel="xla"), params, steps=6)
    cpu = _run(opt.as_optax(30, update_scales=scales, kernel="cpu"), params, steps=6)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(cpu[2][-1]))
    _close(xla[1], cpu[1], rtol=2e-3)
    _close(xla[2], cpu[2], rtol=2e-2)  # bfloat16 updates: one rounding of 2^-8


@pytest.mark.parametrize("lagged", [False, True])
@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_kernel_skips_the_same_steps(bad, lagged):
    opt = _lagged(lopt.pretrained("default")) if lagged else lopt.pretrained("default")
    params = _params()
    xla = _run(opt.as_optax(40, kernel="xla"), params, steps=6, bad=(bad, 3))
    cpu = _run(opt.as_optax(40, kernel="cpu"), params, steps=6, bad=(bad, 3))
    assert int(cpu[1].skipped) == int(xla[1].skipped) == 1 and int(cpu[1].step) == 5
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(cpu[2][3]) if u.size)
    _close(xla[1], cpu[1])
    _close(xla[0], cpu[0])


def test_skipped_step_keeps_the_accumulators_exactly():
    opt = lopt.pretrained("default")
    params = _params()
    tx = opt.as_optax(40, kernel="cpu")
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=1.0))
    _, state = update(_grads(params, 0), state, params)
    _, after = update(_grads(params, 1, nan=True), state, params)
    for x, y in zip(jax.tree.leaves(state.inner), jax.tree.leaves(after.inner)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(after.skipped) == 1


def _uses_kernel(tx, params) -> bool:
    state = jax.eval_shape(tx.init, params)
    jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, value=1.0))(params, state, params)
    return "lopt_normed_fc" in str(jaxpr)


def test_auto_uses_the_kernel_on_large_single_device_cpu_models_only():
    opt = lopt.pretrained("default")
    small = _params()
    large = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32), "b": jax.ShapeDtypeStruct((1024,), jnp.float32)}
    assert sum(x.size for x in jax.tree.leaves(large)) >= kernels.AUTO_MIN_PARAMS
    assert jax.device_count() == 1 and jax.default_backend() == "cpu"  # the test session's platform
    assert not _uses_kernel(opt.as_optax(10), small)
    assert _uses_kernel(opt.as_optax(10), large)
    assert not _uses_kernel(opt.as_optax(10, kernel="xla"), large)
    assert _uses_kernel(opt.as_optax(10, kernel="cpu"), small)
    # Architectures the kernel does not implement keep their XLA update under "auto".
    fc = architectures.get("small_fc")
    assert not _uses_kernel(lopt.as_optax(fc, fc.init_meta_params(jax.random.PRNGKey(0)), 10), large)


def test_bad_kernel_choices_are_clear_errors():
    opt = lopt.pretrained("default")
    with pytest.raises(OptimizerError, match="kernel must be one of"):
        opt.as_optax(10, kernel="gpu")
    fc = architectures.get("small_fc")
    tx = lopt.as_optax(fc, fc.init_meta_params(jax.random.PRNGKey(0)), 10, kernel="cpu")
    with pytest.raises(OptimizerError, match="normed_fc only"):
        tx.update(_params(), tx.init(_params()), _params())
    braked = architectures.get("normed_fc", brake_rate=0.1)
    tx = lopt.as_optax(braked, braked.init_meta_params(jax.random.PRNGKey(0)), 10, kernel="cpu")
    with pytest.raises(OptimizerError, match="brake"):
        tx.update(_params(), tx.init(_params()), _params())


def test_without_a_compiler_auto_falls_back_and_cpu_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    opt = lopt.pretrained("default")
    large = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    with pytest.warns(RuntimeWarning, match="not available"):
        assert not _uses_kernel(opt.as_optax(10), large)
    tx = opt.as_optax(10, kernel="cpu")
    with pytest.raises(OptimizerError, match="no-such-compiler"):
        tx.update(_params(), tx.init(_params()), _params())


def test_build_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    first = build._build(normed_fc_cpu.NAME)
    assert first.exists() and first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    assert build._build(normed_fc_cpu.NAME) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
