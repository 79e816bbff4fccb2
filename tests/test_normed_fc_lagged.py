"""``normed_fc`` with ``tensor_stats="previous"``: the prior is unchanged, the statistics stored are the step's,
and the guard is decided before the pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_normed_fc import KEY, _max_gap_to, _prior, grads_at, tiny_params

import lopt
from lopt import OptimizerError, architectures
from lopt.architectures.normed_fc_scalars import next_stats


def _lagged(**hparams):
    return architectures.get("normed_fc", hidden=4, tensor_stats="previous", **hparams)


def test_tensor_stats_is_checked():
    with pytest.raises(OptimizerError, match="tensor_stats"):
        architectures.get("normed_fc", tensor_stats="stale")
    assert architectures.get("normed_fc").tensor_stats == "current"


@pytest.mark.parametrize("decay_min_ndim", [0, 2])
def test_fresh_lagged_normed_fc_is_still_adamw_with_warmup_cosine(decay_min_ndim):
    """With the network at zero, d = a, so rms(a) / rms(d) is 1 whichever step it comes from: the prior."""
    arch = _lagged(decay_min_ndim=decay_min_ndim)
    mask = (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)) if decay_min_ndim else None
    ref = optax.adamw(_prior(arch, 12), weight_decay=arch.weight_decay, mask=mask)
    assert _max_gap_to(ref, arch, 12) <= 1.0


def test_lagged_and_current_agree_on_a_fresh_distance_rule():
    current = architectures.get("normed_fc", hidden=4, step_size="distance")
    lagged = dataclasses.replace(current, tensor_stats="previous")
    mp = current.init_meta_params(KEY)
    params = tiny_params()
    runs = []
    for arch in (current, lagged):
        state, p, update = arch.init(mp, params, 10), params, jax.jit(arch.update)
        for t in range(10):
            u, state = update(mp, state, grads_at(t), p, jnp.float32(1.0))
            p = optax.apply_updates(p, u)
        runs.append((p, float(state.inner["d"])))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), runs[0][0], runs[1][0])
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)


def test_stored_statistics_are_the_steps_own():
    """Before the first step: 1, rms(p0), 1. After it: rms of Adam's first direction (1 where the gradient
    is not zero, ~0 where it is), rms of the parameters the step was taken from, and rms(d) of a trained rule."""
    opt = lopt.pretrained("default")
    arch = dataclasses.replace(opt.arch, tensor_stats="previous")
    params = tiny_params()
    state = arch.init(opt.meta_params, params, 50)
    for k, p in params.items():
        rms_p = np.sqrt(np.mean(np.square(np.asarray(p, np.float64))))
        np.testing.assert_allclose(state.inner["stats"][k], [1.0, rms_p, 1.0], rtol=1e-6)
    _, after = jax.jit(arch.update)(opt.meta_params, state, grads_at(0), params, jnp.float32(1.0))
    stats = after.inner["stats"]
    for k in ("w", "b"):
        rms_p = np.sqrt(np.mean(np.square(np.asarray(params[k], np.float64))))
        np.testing.assert_allclose(stats[k][:2], [1.0, rms_p], rtol=1e-5)
        assert 0.1 < float(stats[k][2]) < 10.0
    assert float(stats["z"][0]) < 1e-6  # no gradient: Adam's direction is zero
    assert all(bool(jnp.all(jnp.isfinite(s))) for s in jax.tree.leaves(stats))


def test_a_huge_gradient_skips_and_keeps_the_statistics():
    arch = _lagged(step_size="distance")
    mp = arch.init_meta_params(KEY)
    params = tiny_params()
    update = jax.jit(arch.update)
    state = arch.init(mp, params, 20)
    for t in range(3):
        u, state = update(mp, state, grads_at(t), params, jnp.float32(1.0))
        params = optax.apply_updates(params, u)
    before = state.inner
    huge = {**grads_at(5), "w": grads_at(5)["w"].at[0, 0].set(1e20)}
    u, state = update(mp, state, huge, params, jnp.float32(1.0))
    assert int(state.skipped) == 1 and all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.inner, before)


def test_a_non_finite_statistic_keeps_the_previous_one():
    old = jnp.asarray([0.5, 2.0, 0.7], jnp.float32)
    new = next_stats(jnp.float32(jnp.nan), jnp.float32(3.0), jnp.float32(jnp.inf), old)
    np.testing.assert_array_equal(np.asarray(new), np.asarray([0.5, 3.0, 0.7], np.float32))
