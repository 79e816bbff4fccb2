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


def test_fresh_normed_fc_is_adamw_with_warmup_cosine():
    """The stated prior: zero output layer and step weights give optax.adamw on the prior schedule."""
    mp = ARCH.init_meta_params(KEY)
    n = 12
    ref = optax.adamw(lambda c: ARCH.prior_lr(jnp.asarray(c), jnp.asarray(n)), weight_decay=ARCH.weight_decay)
    params, s_ref, state = tiny_params(), None, None
    s_ref, state = ref.init(params), ARCH.init(mp, params, n)
    for t in range(n):
        g = grads_at(t)
        u_ref, s_ref = ref.update(g, s_ref, params)
        u, state = UPDATE(mp, state, g, params, jnp.float32(1.0 + t))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-10), u, u_ref)
        params = optax.apply_updates(params, u)
    assert int(state.step) == n and int(state.skipped) == 0


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
