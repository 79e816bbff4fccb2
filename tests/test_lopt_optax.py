"""The optax export: same updates as the internal function, and it plugs into optax/flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import lopt
from lopt import architectures

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (32, 4))
Y = X @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]) + 0.3


class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))


@pytest.fixture(scope="module")
def trained():
    arch = architectures.get("small_fc")
    return lopt.TrainedOptimizer(arch, arch.init_meta_params(KEY), {"note": "fresh"})


@pytest.fixture(scope="module")
def linen_setup():
    model = Linen()
    params = model.init(KEY, X)
    loss_fn = jax.jit(lambda p: jnp.mean((model.apply(p, X) - Y) ** 2))
    return model, params, loss_fn


def test_export_matches_internal_update(trained):
    arch, mp = trained.arch, trained.meta_params
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.array([1.0, -1.0])}
    tx = trained.as_optax(20)
    s_tx, s_int = tx.init(params), arch.init(mp, params, 20)
    for loss in (2.0, 1.5):
        u_tx, s_tx = tx.update(grads, s_tx, params, value=loss)
        u_int, s_int = arch.update(mp, s_int, grads, params, loss)
        jax.tree.map(np.testing.assert_array_equal, u_tx, u_int)
    jax.tree.map(np.testing.assert_array_equal, s_tx, s_int)
    # Without value= the loss features are zero: same as passing loss 0.
    u0, _ = tx.update(grads, s_tx, params)
    u_int0, _ = arch.update(mp, s_int, grads, params, 0.0)
    jax.tree.map(np.testing.assert_array_equal, u0, u_int0)
    with pytest.raises(lopt.OptimizerError, match="needs the parameters"):
        tx.update(grads, s_tx)
    with pytest.raises(lopt.OptimizerError, match="num_steps"):
        trained.as_optax(0)
    fn_tx = lopt.as_optax(arch, mp, 20, update_scales=jax.tree.map(lambda _: 2.0, params))
    u2, _ = fn_tx.update(grads, fn_tx.init(params), params, value=2.0)
    u1, _ = tx.update(grads, tx.init(params), params, value=2.0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 2.0 * b, rtol=1e-6), u2, u1)


def test_linen_trains_with_clip_chain_and_multisteps(trained, linen_setup):
    model, params, loss_fn = linen_setup
    for tx, every in [
        (optax.chain(optax.clip_by_global_norm(1.0), trained.as_optax(60)), 1),
        (optax.MultiSteps(trained.as_optax(30), every_k_schedule=2), 2),
    ]:
        @jax.jit
        def run(p):
            def step(carry, _):
                p, s = carry
                loss, g = jax.value_and_grad(loss_fn)(p)
                u, s = tx.update(g, s, p, value=loss)
                return (optax.apply_updates(p, u), s), loss

            return jax.lax.scan(step, (p, tx.init(p)), None, length=60)

        (p_end, state), losses = run(params)
        assert float(loss_fn(p_end)) < 0.9 * float(losses[0]), (every, losses[0], losses[-1])
        inner = state[1] if every == 1 else state.inner_opt_state
        assert int(inner.step) == 60 // every and int(inner.skipped) == 0


def test_flax_train_state(trained, linen_setup):
    model, params, loss_fn = linen_setup
    ts = TrainState.create(apply_fn=model.apply, params=params, tx=trained.as_optax(30))

    @jax.jit
    def step(ts):
        loss, g = jax.value_and_grad(loss_fn)(ts.params)
        return ts.apply_gradients(grads=g), loss

    first = None
    for _ in range(30):
        ts, loss = step(ts)
        first = loss if first is None else first
    assert float(loss_fn(ts.params)) < float(first)
    assert int(ts.opt_state.step) == 30


def test_nnx_optimizer(trained):
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, trained.as_optax(40), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        opt.update(model, g, value=loss)
        return loss

    losses = [float(step(model, opt)) for _ in range(40)]
    assert losses[-1] < 0.95 * losses[0] and np.all(np.diff(losses) < 0)
    assert int(opt.opt_state.step[...]) == 40 and int(opt.opt_state.skipped[...]) == 0
