"""``normed_fc``: fresh weights are the stated AdamW-cosine prior, the step is bounded, shipped weights load."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import OptimizerError, architectures

KEY = jax.random.PRNGKey(0)
ARCH = architectures.get("normed_fc", hidden=4)
UPDATE = jax.jit(ARCH.update)


def tiny_params():
    return {"w": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]], jnp.float32), "b": jnp.array([0.3, -0.2, 0.0]), "z": jnp.ones((4,))}


def grads_at(step):
    rng = np.random.default_rng(step)
    return {
        "w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=3), jnp.float32),
        "z": jnp.zeros((4,), jnp.float32),  # a tensor that never gets a gradient
    }


def test_registered_and_checks_its_hyperparameters():
    assert "normed_fc" in architectures.names()
    assert architectures.get("normed_fc", momentum_decays=[0.5, 0.9]).momentum_decays == (0.5, 0.9)
    with pytest.raises(OptimizerError, match="warmup_fraction"):
        architectures.get("normed_fc", warmup_fraction=1.5)
    with pytest.raises(OptimizerError, match="momentum_decays"):
        architectures.get("normed_fc", momentum_decays=[])


def _max_gap_to(ref, arch, n, atol=1e-10):
    """Steps ``arch`` (fresh) and the optax ``ref`` side by side; the largest gap between their updates."""
    mp = arch.init_meta_params(KEY)
    params = tiny_params()
    s_ref, state = ref.init(params), arch.init(mp, params, n)
    update = jax.jit(arch.update)
    gap = 0.0
    for t in range(n):
        g = grads_at(t)
        u_ref, s_ref = ref.update(g, s_ref, params)
        u, state = update(mp, state, g, params, jnp.float32(1.0 + t))
        gaps = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b) / (1e-4 * jnp.abs(b) + atol), initial=0.0)),
                            u, u_ref)
        gap = max(gap, *jax.tree.leaves(gaps))
        params = optax.apply_updates(params, u)
    assert int(state.step) == n and int(state.skipped) == 0
    return gap  # <= 1: within rtol 1e-4 + atol everywhere


def _prior(arch, n):
    return lambda c: arch.prior_lr(jnp.asarray(c), jnp.asarray(n))


def test_fresh_normed_fc_is_adamw_with_warmup_cosine():
    """The stated prior: zero output layer and step weights give optax.adamw on the prior schedule."""
    assert _max_gap_to(optax.adamw(_prior(ARCH, 12), weight_decay=ARCH.weight_decay), ARCH, 12) <= 1.0


def test_weight_decay_can_spare_biases_and_gains_as_adamw_with_a_mask_does():
    """``decay_min_ndim=2``: optax.adamw with its weight decay masked to matrices and kernels."""
    arch = architectures.get("normed_fc", weight_decay=0.3, learning_rate=3e-2, decay_min_ndim=2)
    matrices = lambda p: jax.tree.map(lambda x: jnp.ndim(x) >= 2, p)  # noqa: E731
    assert _max_gap_to(optax.adamw(_prior(arch, 8), weight_decay=0.3, mask=matrices), arch, 8, atol=1e-8) <= 1.0
    # the comparison sees the mask: unmasked AdamW differs on the vector and scalar leaves
    assert _max_gap_to(optax.adamw(_prior(arch, 8), weight_decay=0.3), arch, 8, atol=1e-8) > 10.0
    with pytest.raises(OptimizerError, match="decay_min_ndim"):
        architectures.get("normed_fc", decay_min_ndim=-1)


def test_prior_schedule_warms_up_then_decays_over_the_planned_horizon():
    n = jnp.asarray(100)
    lrs = np.array([float(ARCH.prior_lr(jnp.asarray(t), n)) for t in range(100)])
    peak = ARCH.learning_rate
    assert lrs[0] == pytest.approx(peak / 5) and lrs[4] == pytest.approx(peak)  # 5% warm-up = 5 steps
    assert np.all(np.diff(lrs[4:]) <= 1e-12) and 0 < lrs[-1] < 0.01 * peak
    assert float(ARCH.prior_lr(jnp.asarray(500), n)) == pytest.approx(peak * ARCH.final_lr_fraction)


def test_trained_network_step_stays_within_its_bounds_and_zero_gradients_do_not_move():
    """Random (large) meta-parameters: each tensor's update RMS is at most 10x the prior's Adam step."""
    mp = ARCH.init_meta_params(KEY)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    mp = {**mp, "out": 5.0 * jax.random.normal(keys[0], mp["out"].shape),
          "step": {"w": 5.0 * jax.random.normal(keys[1], mp["step"]["w"].shape), "b": jnp.float32(50.0)},
          "log_wd": jnp.float32(-30.0)}
    params = tiny_params()
    state = ARCH.init(mp, params, 50)
    ref_state = ARCH.init(ARCH.init_meta_params(KEY), params, 50)
    for t in range(5):
        g = grads_at(t)
        u, state = UPDATE(mp, state, g, params, jnp.float32(1.0))
        u0, ref_state = UPDATE(ARCH.init_meta_params(KEY), ref_state, g, params, jnp.float32(1.0))
        for k in ("w", "b"):
            rms, rms0 = float(jnp.sqrt(jnp.mean(u[k] ** 2))), float(jnp.sqrt(jnp.mean(u0[k] ** 2)))
            assert 0 < rms <= 10.0 * rms0 * (1 + 1e-4)
        assert float(jnp.max(jnp.abs(u["z"]))) < 1e-12


def test_update_works_under_jit_vmap_and_any_pytree():
    mp = ARCH.init_meta_params(KEY)
    params = (jnp.ones((3, 2, 2)), [jnp.zeros(()), {"x": jnp.ones((5,))}])
    state = jax.vmap(lambda p: ARCH.init(mp, p, 10))(jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params))
    grads = jax.tree.map(lambda x: jnp.stack([x, -x]) + 0.1, params)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    u, state = jax.jit(jax.vmap(lambda s, g, p: ARCH.update(mp, s, g, p)))(state, grads, stacked)
    assert jax.tree.structure(u) == jax.tree.structure(stacked)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_shipped_default_loads_and_trains_if_it_is_normed_fc():
    opt = lopt.pretrained("default")
    if opt.arch.arch != "normed_fc":
        pytest.skip("the shipped default is not normed_fc")
    params = tiny_params()
    tx = opt.as_optax(20)
    state = tx.init(params)
    u, state = tx.update(grads_at(0), state, params, value=jnp.float32(1.0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


DIST = architectures.get("normed_fc", hidden=4, step_size="distance", learning_rate=1.0, momentum_decays=[0.9, 0.99])
DIST_UPDATE = jax.jit(DIST.update)


def test_distance_step_size_checks_its_hyperparameters():
    with pytest.raises(OptimizerError, match="step_size"):
        architectures.get("normed_fc", step_size="prodigy")
    with pytest.raises(OptimizerError, match="initial_distance"):
        architectures.get("normed_fc", step_size="distance", initial_distance=0.0)
    with pytest.raises(OptimizerError, match="distance_exponent"):
        architectures.get("normed_fc", step_size="distance", distance_exponent=2.0)


@pytest.mark.parametrize("peak, exponent", [(1.0, 1.0), (3e-3, 0.5)])
def test_fresh_distance_normed_fc_is_adamw_at_the_d_estimate(peak, exponent):
    """Written out step by step in float64: Adam's direction, lr = peak * (d_t / peak)**exponent * schedule,
    and Prodigy's D estimate."""
    arch = architectures.get("normed_fc", hidden=4, step_size="distance", learning_rate=peak,
                             distance_exponent=exponent, momentum_decays=[0.9, 0.99])
    update = jax.jit(arch.update)
    mp = arch.init_meta_params(KEY)
    n, d0, beta3 = 12, arch.initial_distance, arch.distance_decay
    params = tiny_params()
    state = arch.init(mp, params, n)
    x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    moved = {k: np.zeros_like(v) for k, v in x.items()}  # x - x0: the sum of the float32 updates
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2, s = dict(m), dict(m)
    d, num = d0, 0.0
    for t in range(n):
        grads = {k: (params[k] - 3.0) * (k != "z") for k in params}  # a quadratic with its minimum far away
        g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
        lr = (d / peak) ** exponent * float(arch.prior_lr(jnp.asarray(t), jnp.asarray(n)))
        weight = (d / d0) * lr
        num = beta3 * num - weight * sum(float(np.sum(g[k] * moved[k])) for k in x)
        s = {k: beta3 * s[k] + weight * g[k] for k in x}
        l1 = sum(float(np.sum(np.abs(s[k]))) for k in x)
        expected = {}
        for k in x:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
            a = (m[k] / (1 - 0.9 ** (t + 1))) / (np.sqrt(v2[k] / (1 - 0.999 ** (t + 1))) + arch.eps)
            expected[k] = -lr * a - lr * arch.weight_decay * x[k]
        u, state = update(mp, state, grads, params, jnp.float32(1.0))
        for k in x:
            np.testing.assert_allclose(np.asarray(u[k]), expected[k], rtol=2e-4, atol=1e-12)
        d = max(d, num / l1)
        assert float(state.inner["d"]) == pytest.approx(d, rel=2e-4)
        params = optax.apply_updates(params, u)
        x = {k: np.asarray(v, np.float64) for k, v in params.items()}
        moved = {k: moved[k] + np.asarray(u[k], np.float64) for k in x}
    assert d > 5 * d0  # the estimate grew: the test exercised it


def test_distance_estimate_survives_zero_and_non_finite_gradients():
    mp = DIST.init_meta_params(KEY)
    params = tiny_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = DIST.init(mp, params, 20)
    for _ in range(3):  # no gradient yet: only weight decay (at lr ~ d_0) moves, nothing is skipped
        u, state = DIST_UPDATE(mp, state, zeros, params, jnp.float32(1.0))
        assert all(float(jnp.max(jnp.abs(x))) < 1e-9 for x in jax.tree.leaves(u))
    assert int(state.skipped) == 0 and float(state.inner["d"]) == np.float32(DIST.initial_distance)
    for t in range(3):
        u, state = DIST_UPDATE(mp, state, grads_at(t), params, jnp.float32(1.0))
        params = optax.apply_updates(params, u)
    before = state.inner
    bad = {**grads_at(5), "b": jnp.array([jnp.nan, 0.0, 0.0])}
    u, state = DIST_UPDATE(mp, state, bad, params, jnp.float32(1.0))
    assert int(state.skipped) == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.inner, before)


def _braked(arch):
    """``(update, meta_params, params, grads, flipping, free)``: ``flipping`` is ``arch``'s state after 12 steps
    of gradients that flip sign each step (brake at its floor), ``free`` the same state with the brake released,
    ``update`` the jitted update and ``grads`` the all-ones gradients."""
    update = jax.jit(arch.update)
    mp, params = arch.init_meta_params(KEY), tiny_params()
    g = jax.tree.map(lambda x: jnp.ones_like(x), params)
    steady = arch.init(mp, params, 40)
    flipping = steady
    for t in range(12):
        _, steady = update(mp, steady, g, params, jnp.float32(1.0))
        _, flipping = update(mp, flipping, jax.tree.map(lambda x: (-1.0) ** t * x, g), params, jnp.float32(1.0))
    assert float(steady.inner["brake"]) == 0.0  # never above the prior
    free = flipping._replace(inner={**flipping.inner, "brake": jnp.zeros((), jnp.float32)})
    return update, mp, params, g, flipping, free


def test_brake_slows_only_a_step_that_overshoots():
    """Gradients that reverse against the previous direction brake the step (to its floor, exactly
    proportionally); gradients that keep their direction leave it at the prior's; off by default."""
    assert "brake" not in ARCH.init(ARCH.init_meta_params(KEY), tiny_params(), 10).inner
    with pytest.raises(OptimizerError, match="brake"):
        architectures.get("normed_fc", brake_rate=-1.0)
    arch = architectures.get("normed_fc", hidden=4, brake_rate=0.5, brake_floor=0.25)
    update, mp, params, g, flipping, free = _braked(arch)
    assert float(flipping.inner["brake"]) == pytest.approx(np.log(0.25))  # each reversal brakes, down to the floor
    # the braked step is the unbraked one times the floor (weight decay included: it follows lr_t)
    u_braked, _ = update(mp, flipping, g, params, jnp.float32(1.0))
    u_free, _ = update(mp, free, g, params, jnp.float32(1.0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), 0.25 * np.asarray(b), rtol=1e-6, atol=1e-12),
                 u_braked, u_free)


def test_brake_can_spare_the_weight_decay():
    """``brake_decay=False``: the braked step's gradient part is slowed, its weight decay is not."""
    loss = jnp.float32(1.0)
    for brake_decay, decay_factor in ((True, 0.25), (False, 1.0)):
        arch = architectures.get("normed_fc", hidden=4, brake_rate=0.5, brake_floor=0.25, brake_decay=brake_decay)
        update, mp, params, g, flipping, free = _braked(arch)
        # no gradient and no momentum: the update is then the weight decay alone
        no_grad = jax.tree.map(jnp.zeros_like, g)
        still = lambda st: st._replace(inner={**st.inner, "m": jax.tree.map(jnp.zeros_like, st.inner["m"])})
        decay_braked, _ = update(mp, still(flipping), no_grad, params, loss)
        decay_free, _ = update(mp, still(free), no_grad, params, loss)
        assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(decay_free))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), decay_factor * np.asarray(b), rtol=1e-6),
                     decay_braked, decay_free)
        # the step as a whole: gradient part braked to the floor, plus the (un)braked decay
        u_braked, _ = update(mp, flipping, g, params, loss)
        u_free, _ = update(mp, free, g, params, loss)
        jax.tree.map(lambda u, du, f, df: np.testing.assert_allclose(
            np.asarray(u), 0.25 * np.asarray(f - df) + np.asarray(du), rtol=1e-5, atol=1e-12),
            u_braked, decay_braked, u_free, decay_free)


def _decay_horizon_run(opt, num_steps, grads_of, steps=4):
    """``steps`` jitted updates of ``opt`` planned for ``num_steps``; the list of update pytrees."""
    params = tiny_params()
    tx = opt.as_optax(num_steps=num_steps)
    state, out = tx.init(params), []
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)))
    for t in range(steps):
        u, state = step(grads_of(t), state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out


def _assert_same_updates_up_to(horizon, base, scaled):
    """At and below the horizon: identical updates, every step."""
    for n in (horizon // 10, horizon):
        for a, b in zip(_decay_horizon_run(base, n, grads_at), _decay_horizon_run(scaled, n, grads_at)):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                np.testing.assert_array_equal(x, y)


def test_decay_horizon_keeps_short_runs_and_scales_the_decay_of_long_ones():
    """``decay_horizon=H``: runs of at most H steps are the same bit for bit; longer ones decay at H / num_steps."""
    import dataclasses

    base = lopt.pretrained("default_v10")
    scaled = lopt.TrainedOptimizer(dataclasses.replace(base.arch, decay_horizon=3000), base.meta_params)
    _assert_same_updates_up_to(3000, base, scaled)
    # Beyond it, with zero gradients the update is the decay alone (-lr_t * wd * p): 3000 / 12000 of it.
    zero = lambda t: jax.tree.map(jnp.zeros_like, tiny_params())
    full, quarter = _decay_horizon_run(base, 12000, zero, 1)[0], _decay_horizon_run(scaled, 12000, zero, 1)[0]
    for p, a, b in zip(jax.tree.leaves(tiny_params()), jax.tree.leaves(full), jax.tree.leaves(quarter)):
        assert np.all(np.sign(a)[p != 0] == -np.sign(p)[p != 0]) and np.all(np.abs(a)[p != 0] > 1e-9)
        np.testing.assert_allclose(b, a * 0.25, rtol=1e-6, atol=1e-15)  # atol: rounding of the centered network
    sqrt = lopt.TrainedOptimizer(dataclasses.replace(scaled.arch, decay_horizon_exponent=0.5), base.meta_params)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(_decay_horizon_run(sqrt, 12000, zero, 1)[0])):
        np.testing.assert_allclose(b, a * 0.5, rtol=1e-6, atol=1e-15)
    # With gradients, a long run's updates differ from the unscaled ones (the decay is active in them).
    gap = max(float(jnp.max(jnp.abs(x - y))) for a, b in zip(_decay_horizon_run(base, 12000, grads_at),
                                                            _decay_horizon_run(scaled, 12000, grads_at))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert gap > 0
    for bad in (-1, 2.5, True, "3000"):
        with pytest.raises(OptimizerError, match="decay_horizon"):
            architectures.get("normed_fc", decay_horizon=bad)
    with pytest.raises(OptimizerError, match="decay_horizon_exponent"):
        architectures.get("normed_fc", decay_horizon=10, decay_horizon_exponent=1.5)


def test_lr_horizon_keeps_short_runs_and_scales_the_step_not_the_decay_of_long_ones():
    """``lr_horizon=H``: runs of at most H steps are the same bit for bit; a longer run's gradient step is
    ``(H / num_steps)**e`` of the unscaled one and its decay is unchanged."""
    import dataclasses

    base = lopt.pretrained("default_v13")
    scaled = lopt.TrainedOptimizer(dataclasses.replace(base.arch, lr_horizon=3000), base.meta_params)
    _assert_same_updates_up_to(3000, base, scaled)
    zero = lambda t: jax.tree.map(jnp.zeros_like, tiny_params())
    for exponent, factor in ((0.5, 0.5), (1.0, 0.25)):  # 12,000 steps: (3000 / 12000)**e
        opt = lopt.TrainedOptimizer(dataclasses.replace(scaled.arch, lr_horizon_exponent=exponent),
                                    base.meta_params)
        # With zero gradients the first update is the decay alone: the same as unscaled (up to the rounding
        # of the centered network, which the step scale multiplies).
        for a, b in zip(jax.tree.leaves(_decay_horizon_run(base, 12000, zero, 1)[0]),
                        jax.tree.leaves(_decay_horizon_run(opt, 12000, zero, 1)[0])):
            assert np.max(np.abs(a)) > 1e-9
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-12)
        # With gradients, the first update minus the decay is the gradient step: scaled by the factor.
        step = lambda o: jax.tree.map(lambda u, d: u - d, _decay_horizon_run(o, 12000, grads_at, 1)[0],  # noqa: E731
                                      _decay_horizon_run(o, 12000, zero, 1)[0])
        full, short = jax.tree.leaves(step(base)), jax.tree.leaves(step(opt))
        assert max(float(np.max(np.abs(a))) for a in full) > 1e-6
        for a, b in zip(full, short):
            np.testing.assert_allclose(b, factor * a, rtol=2e-5, atol=1e-12)
    for bad in (-1, 2.5, True, "3000"):
        with pytest.raises(OptimizerError, match="lr_horizon"):
            architectures.get("normed_fc", lr_horizon=bad)
    with pytest.raises(OptimizerError, match="lr_horizon_exponent"):
        architectures.get("normed_fc", lr_horizon=10, lr_horizon_exponent=-0.5)


def test_relative_step_scales_each_matrix_by_its_rms_inside_the_bound_and_nothing_else():
    """``relative_step_exponent=k``: a rank >= 2 tensor's step is ``exp(bounded(k * log(rms(p) / ref)))`` times
    the unscaled one (the learned multiplier is 0 on a fresh rule); biases and scalars are unchanged."""
    import dataclasses

    from lopt.architectures.normed_fc_scalars import STEP_HIGH, bounded

    base_arch = architectures.get("normed_fc", weight_decay=1e-12)  # the decay is negligible: updates are steps
    mp = base_arch.init_meta_params(jax.random.PRNGKey(0))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    params = {"w": 0.3 * jax.random.normal(k1, (12, 7)), "conv": 0.02 * jax.random.normal(k2, (3, 3, 2, 4)),
              "big": 3.0 * jax.random.normal(k3, (5, 6)), "b": jnp.full((7,), 0.5), "gain": jnp.ones(())}
    grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)), params)

    def update_at(arch, now):
        """The first update of a state made from ``params``, taken at the parameters ``now``."""
        tx = lopt.TrainedOptimizer(arch, mp).as_optax(100)
        return tx.update(grads, tx.init(params), now, value=jnp.float32(1.0))[0]

    unscaled = update_at(base_arch, params)
    for k in (0.5, 1.0, 2.0):
        scaled = update_at(dataclasses.replace(base_arch, relative_step_exponent=k), params)
        for name in ("b", "gain"):
            np.testing.assert_array_equal(scaled[name], unscaled[name])
        for name in ("w", "conv", "big"):
            rms_p = float(jnp.sqrt(jnp.mean(jnp.square(params[name]))))
            factor = float(jnp.exp(bounded(jnp.float32(k * np.log(rms_p / 0.125)))))
            assert factor < np.exp(STEP_HIGH)
            np.testing.assert_allclose(scaled[name], factor * unscaled[name], rtol=2e-5, atol=1e-12)
        assert float(jnp.max(jnp.abs(scaled["conv"]))) < float(jnp.max(jnp.abs(unscaled["conv"])))  # rms 0.02
        assert float(jnp.max(jnp.abs(scaled["big"]))) > float(jnp.max(jnp.abs(unscaled["big"])))  # rms 3
    # "initial": the scale is each tensor's RMS when the state was made, whatever the parameters are now;
    # a tensor initialized at zero keeps the unscaled step.
    params["zero"] = jnp.zeros((4, 3))
    grads["zero"] = jnp.sin(jnp.arange(12.0).reshape(4, 3))
    doubled = jax.tree.map(lambda p: 2.0 * p, params)
    initial = dataclasses.replace(base_arch, relative_step_exponent=1.0, relative_step_rms="initial")
    unscaled = update_at(base_arch, doubled)
    for now in (params, doubled):
        scaled = update_at(initial, now)
        for name in ("w", "conv", "big"):
            rms0 = float(jnp.sqrt(jnp.mean(jnp.square(params[name]))))
            factor = float(jnp.exp(bounded(jnp.float32(np.log(rms0 / 0.125)))))
            np.testing.assert_allclose(scaled[name], factor * update_at(base_arch, now)[name], rtol=2e-5, atol=1e-12)
    for name in ("b", "gain", "zero"):
        np.testing.assert_array_equal(scaled[name], unscaled[name])
    assert float(jnp.max(jnp.abs(unscaled["zero"]))) > 0
    with pytest.raises(OptimizerError, match="relative_step_rms"):
        architectures.get("normed_fc", relative_step_rms="first")
    for bad in (-0.1, 2.5):
        with pytest.raises(OptimizerError, match="relative_step_exponent"):
            architectures.get("normed_fc", relative_step_exponent=bad)
    with pytest.raises(OptimizerError, match="relative_step_reference"):
        architectures.get("normed_fc", relative_step_exponent=1.0, relative_step_reference=0.0)
