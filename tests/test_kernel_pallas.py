"""The Pallas kernel of ``normed_fc``'s one-pass update, run by Pallas's interpreter on CPU: the same rule and
guard as the XLA update, clear errors where it does not apply, and never picked by ``"auto"``."""

import _kernel_cases as K
import jax
import jax.numpy as jnp
import pytest

import lopt
from lopt import architectures
from lopt.base import OptimizerError
from lopt.kernels import normed_fc_pallas


def _fresh(seed, **hyper):
    arch = architectures.get("normed_fc", tensor_stats="previous", **hyper)
    return lopt.TrainedOptimizer(arch, arch.init_meta_params(jax.random.PRNGKey(seed)), {})


CASES = {
    "shipped default (2 momenta, distance step)": lambda: lopt.pretrained("default"),
    "fresh normed_fc, 3 momenta, fixed step, decay on matrices": lambda: _fresh(1, decay_min_ndim=2),
    "hidden 8, 1 momentum, distance": lambda: _fresh(2, hidden=8, momentum_decays=[0.8], step_size="distance"),
    # Every meta-parameter away from its initial value (the output weights and step scale start at zero),
    # so each weight of the per-parameter network and of the step scale matters.
    "fresh normed_fc, 3 momenta, distance, perturbed": lambda: _perturbed(3, step_size="distance"),
    # The 40-step runs below are past a 10-step horizon, so the step is scaled (as on long runs).
    "fresh normed_fc, distance, lr_horizon, perturbed": lambda: _perturbed(6, step_size="distance", lr_horizon=10),
    "fresh normed_fc, distance, relative step, perturbed": lambda: _perturbed(7, step_size="distance",
                                                                               relative_step_exponent=1.0),
    "fresh normed_fc, relative step from the initial RMS, perturbed": lambda: _perturbed(
        8, relative_step_exponent=0.5, relative_step_rms="initial"),
}


def _perturbed(seed, **hyper):
    opt = _fresh(seed, **hyper)
    leaves, treedef = jax.tree.flatten(opt.meta_params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    noisy = [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return lopt.TrainedOptimizer(opt.arch, jax.tree.unflatten(treedef, noisy), {})


def test_the_shipped_default_is_the_one_pass_rule():
    assert normed_fc_pallas.unsupported(lopt.pretrained("default").arch) is None


@pytest.mark.parametrize("case", sorted(CASES))
def test_pallas_kernel_matches_the_xla_update(case):
    K.assert_like_xla(CASES[case](), "pallas", K.params())


def test_pallas_kernel_covers_tensors_across_blocks():
    """Tensors larger than one block, and one that ends mid-block: the masked tail must neither add nor move."""
    opt = lopt.pretrained("default")
    params = {"big": jax.random.normal(jax.random.PRNGKey(5), (3 * normed_fc_pallas.BLOCK + 77,)) * 0.2,
              "exact": jnp.ones((2, normed_fc_pallas.BLOCK)) * 0.1}
    K.assert_like_xla(opt, "pallas", params, steps=5, num_steps=20)


def test_pallas_kernel_update_scales_and_bfloat16_params():
    K.assert_scaled_bfloat16_like_xla("pallas")


@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_pallas_kernel_skips_the_same_steps(bad):
    K.assert_skips_like_xla(lopt.pretrained("default"), "pallas", bad)


def test_skipped_step_keeps_the_accumulators_exactly():
    K.assert_skip_keeps_the_accumulators_exactly("pallas")


def _uses_pallas(tx, params) -> bool:
    return "lopt_normed_fc_pallas_step" in K.update_jaxpr(tx, params)


def test_only_an_explicit_choice_runs_the_pallas_kernel():
    opt = lopt.pretrained("default")
    large = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    assert _uses_pallas(opt.as_optax(10, kernel="pallas"), K.params())
    assert not _uses_pallas(opt.as_optax(10), large)  # "auto": unmeasured on GPUs, so never picked yet
    assert not _uses_pallas(opt.as_optax(10, kernel="xla"), K.params())


def test_where_the_pallas_kernel_does_not_apply_the_error_says_why():
    params = K.params()
    current = architectures.get("normed_fc", tensor_stats="current")
    braked = architectures.get("normed_fc", tensor_stats="previous", brake_rate=0.1)
    fc = architectures.get("small_fc")
    for arch, why in [(current, "previous step's tensor statistics"), (braked, "brake"), (fc, "normed_fc only")]:
        tx = lopt.as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(0)), 10, kernel="pallas")
        with pytest.raises(OptimizerError, match=why):
            tx.update(params, tx.init(params), params)


def test_the_kernel_lowers_for_gpus_through_triton(monkeypatch):
    """No GPU here, but Pallas's Triton lowering runs on any host: what it rejects (block shapes, operations) fails
    here, and each tensor's update becomes one Triton kernel (compiling that to GPU code needs a GPU)."""
    from jax import export

    monkeypatch.setattr(normed_fc_pallas, "interpreted", lambda: False)
    tx = lopt.pretrained("default").as_optax(100, kernel="pallas")
    params = K.params()
    fn = jax.jit(lambda g, s, p: tx.update(g, s, p, value=1.0))
    triton = "__gpu$xla.gpu.triton"
    exported = export.export(fn, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])
    module = exported(params, jax.eval_shape(tx.init, params), params).mlir_module()
    nonempty = sum(1 for p in jax.tree.leaves(params) if p.size)
    assert module.count(f"stablehlo.custom_call @{triton}") == nonempty


def test_an_older_jax_without_the_triton_primitives_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(normed_fc_pallas, "plt", None)  # as on jax < 0.8
    tx = lopt.pretrained("default").as_optax(10, kernel="pallas")
    params = K.params()
    with pytest.raises(OptimizerError, match=r"jax >= 0.8"):
        tx.update(params, tx.init(params), params)
