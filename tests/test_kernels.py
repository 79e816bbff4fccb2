"""The fused CPU kernels of ``normed_fc``: the same rule as the XLA update, the same guard, the choice rule."""

import dataclasses

import _kernel_cases as K
import jax
import jax.numpy as jnp
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


CASES = {
    "shipped default_v12 (2 momenta, distance step, this step's statistics: three passes)":
        lambda: lopt.pretrained("default_v12"),
    "shipped default (v13: previous step's statistics, one pass)": lambda: lopt.pretrained("default"),
    "fresh normed_fc, 3 momenta, previous step's statistics": lambda: K.lagged(lopt.TrainedOptimizer(
        a := architectures.get("normed_fc"), a.init_meta_params(jax.random.PRNGKey(3)), {})),
    "fresh normed_fc (3 momenta, fixed step, decay on matrices)": lambda: lopt.TrainedOptimizer(
        a := architectures.get("normed_fc", decay_min_ndim=2), a.init_meta_params(jax.random.PRNGKey(1)), {}),
    "lr_horizon 10 (the 40-step runs are past it), three passes": lambda: lopt.TrainedOptimizer(
        a := architectures.get("normed_fc", step_size="distance", lr_horizon=10, decay_horizon=10),
        a.init_meta_params(jax.random.PRNGKey(4)), {}),
    "hidden 8, 1 momentum, distance": lambda: lopt.TrainedOptimizer(
        a := architectures.get("normed_fc", hidden=8, momentum_decays=[0.8], step_size="distance"),
        a.init_meta_params(jax.random.PRNGKey(2)), {}),
    "shipped default with a relative step (k 1), one pass": lambda: _shipped("default", relative_step_exponent=1.0),
    "shipped default_v12 with a relative step (k 0.5), three passes": lambda: _shipped(
        "default_v12", relative_step_exponent=0.5),
    "shipped default with a relative step from the initial RMS, one pass": lambda: _shipped(
        "default", relative_step_exponent=0.5, relative_step_rms="initial"),
    "shipped default_v12 with a relative step from the initial RMS, three passes": lambda: _shipped(
        "default_v12", relative_step_exponent=1.0, relative_step_rms="initial"),
}


def _shipped(name, **hyper):
    """A shipped optimizer's tensors with some of its architecture's hyperparameters replaced."""
    opt = lopt.pretrained(name)
    return lopt.TrainedOptimizer(dataclasses.replace(opt.arch, **hyper), opt.meta_params, {})


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_the_xla_update(case):
    K.assert_like_xla(CASES[case](), "cpu", K.params())


def test_kernel_update_scales_and_bfloat16_params():
    K.assert_scaled_bfloat16_like_xla("cpu")


@pytest.mark.parametrize("lagged", [False, True])
@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_kernel_skips_the_same_steps(bad, lagged):
    opt = lopt.pretrained("default_v12")
    K.assert_skips_like_xla(K.lagged(opt) if lagged else opt, "cpu", bad)


def test_skipped_step_keeps_the_accumulators_exactly():
    K.assert_skip_keeps_the_accumulators_exactly("cpu")


def _uses_kernel(tx, params) -> bool:
    return "lopt_normed_fc" in K.update_jaxpr(tx, params)


def test_auto_uses_the_kernel_on_large_single_device_cpu_models_only():
    opt = lopt.pretrained("default")
    small = K.params()
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
        tx.update(K.params(), tx.init(K.params()), K.params())
    braked = architectures.get("normed_fc", brake_rate=0.1)
    tx = lopt.as_optax(braked, braked.init_meta_params(jax.random.PRNGKey(0)), 10, kernel="cpu")
    with pytest.raises(OptimizerError, match="brake"):
        tx.update(K.params(), tx.init(K.params()), K.params())


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
        tx.update(K.params(), tx.init(K.params()), K.params())


def test_build_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    first = build._build(normed_fc_cpu.NAME)
    assert first.exists() and first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    assert build._build(normed_fc_cpu.NAME) == first and first.stat().st_mtime_ns == stamp  # not rebuilt


def test_without_jax_ffi_auto_falls_back_and_cpu_says_why(monkeypatch):
    """The package supports JAX older than its kernels (the XLA update): there, as without a compiler."""
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.delattr(jax, "ffi")
    opt = lopt.pretrained("default")
    large = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    with pytest.warns(RuntimeWarning, match=r"jax.ffi \(jax >= 0.5\)"):
        assert not _uses_kernel(opt.as_optax(10), large)
    tx = opt.as_optax(10, kernel="cpu")
    with pytest.raises(OptimizerError, match="jax.ffi"):
        tx.update(K.params(), tx.init(K.params()), K.params())
