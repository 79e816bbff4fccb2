"""The ``hyper`` architecture: documented state shapes, jit, vmap over meta-params, safe fresh steps, optax use."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.architectures.hyper import Hyper
from lopt.base import OptimizerError
from lopt.optax_export import as_optax
from lopt.tasks.quadratic import Quadratic

OPT = Hyper(lstm_hidden=8, num_mlps=3, momentum_decays=(0.9, 0.99), loss_ema_decays=(0.5, 0.9, 0.99, 0.999))
META = OPT.init_meta_params(jax.random.PRNGKey(0))
NUM_STEPS = 50


def _params():
    """Every kind of leaf: a scalar, a zero-initialized bias, a matrix, a bf16 rank-4 conv kernel."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {
        "scale": jnp.asarray(0.5, jnp.float32),
        "dense": {"b": jnp.zeros((3,), jnp.float32), "w": jax.random.normal(k1, (4, 3), jnp.float32)},
        "conv": (0.3 * jax.random.normal(k2, (3, 3, 2, 4), jnp.float32)).astype(jnp.bfloat16),
    }


PARAMS = _params()
GRADS = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape, p.dtype), PARAMS)
UPDATE = jax.jit(OPT.update)
INIT = jax.jit(OPT.init, static_argnums=2)


def test_state_has_documented_shapes():
    state = INIT(META, PARAMS, NUM_STEPS)
    inner = state.inner
    n_m, n_l, h = 2, 4, 8
    for path, p in jax.tree_util.tree_leaves_with_path(PARAMS):
        v, lstm_h, lstm_c = (_at(inner[k], path) for k in ("v", "lstm_h", "lstm_c"))
        ms = [_at(m, path) for m in inner["m"]]  # one pytree like params per momentum decay
        assert len(ms) == n_m and all(m.shape == p.shape and m.dtype == jnp.float32 for m in ms)
        assert v.shape == p.shape
        assert lstm_h.shape == lstm_c.shape == (h,)
        assert v.dtype == lstm_h.dtype == jnp.float32
    for k in ("loss_ema", "loss_min", "loss_max"):
        assert inner[k].shape == (n_l,)
    assert OPT.num_tensor_features == META["lstm"]["wx"].shape[0]
    assert OPT.num_param_features == META["bank"]["w1"].shape[1]


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_fresh_step_is_small_descent_and_keeps_dtypes():
    state = INIT(META, PARAMS, NUM_STEPS)
    updates, new_state = UPDATE(META, state, GRADS, PARAMS, 2.0)
    assert int(new_state.step) == 1 and int(new_state.skipped) == 0
    for u, p, g in zip(jax.tree.leaves(updates), jax.tree.leaves(PARAMS), jax.tree.leaves(GRADS)):
        assert u.dtype == p.dtype and u.shape == p.shape
        u32, p32, g32 = (np.asarray(x, np.float32) for x in (u, p, g))
        scale = max(float(np.sqrt(np.mean(p32**2))), OPT.param_rms_floor)
        assert np.all(np.abs(u32) <= 3.0 * OPT.step_mult * scale)  # about 1% of the tensor RMS
        assert np.all(np.sign(u32) == -np.sign(g32))  # against the gradient
    assert np.all(np.asarray(new_state.inner["loss_ema"]) == 2.0)  # EMAs start at the first loss


def test_scale_free_and_clipped():
    """Fresh meta-params: scaling params and grads by c scales the update by c; huge grads stay finite."""
    state = INIT(META, PARAMS, NUM_STEPS)
    c = 8.0  # a power of two: exact in bf16 too
    u1, _ = UPDATE(META, state, GRADS, PARAMS, 1.0)
    scaled = lambda tree: jax.tree.map(lambda x: (c * x).astype(x.dtype), tree)  # noqa: E731
    u2, _ = UPDATE(META, INIT(META, scaled(PARAMS), NUM_STEPS), scaled(GRADS), scaled(PARAMS), 1.0)
    for name in ("scale", "conv"):  # the zero bias is on the RMS floor, so not scale-free by design
        np.testing.assert_allclose(np.asarray(u2[name], np.float32), c * np.asarray(u1[name], np.float32), rtol=1e-2)
    np.testing.assert_allclose(u2["dense"]["w"], c * u1["dense"]["w"], rtol=1e-4)

    huge = jax.tree.map(lambda g: (g * 1e30).astype(g.dtype), GRADS)
    updates, new_state = UPDATE(META, state, huge, PARAMS, 1.0)
    assert int(new_state.skipped) == 0
    assert all(bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))) for u in jax.tree.leaves(updates))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(new_state.inner["v"]))


def test_vmap_over_meta_params():
    # three members; member 1 has a non-zero LSTM head, so its per-tensor outputs matter
    metas = jax.tree.map(lambda m: jnp.stack([m, m + 0.05, m - 0.02]), META)
    state = INIT(META, PARAMS, NUM_STEPS)
    batched = jax.jit(jax.vmap(OPT.update, in_axes=(0, None, None, None, None)))
    updates, states = batched(metas, state, GRADS, PARAMS, 1.0)
    assert updates["dense"]["w"].shape == (3, 4, 3)
    assert states.inner["lstm_h"]["conv"].shape == (3, OPT.lstm_hidden)
    one = jax.tree.map(lambda m: m[1], metas)
    u1, _ = UPDATE(one, state, GRADS, PARAMS, 1.0)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(updates)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b[1], np.float32), rtol=2e-2, atol=1e-6)


def test_trains_a_quadratic_through_optax():
    task = Quadratic(dim=8, condition=10.0)
    data = task.load_data()
    steps = 100
    tx = optax.chain(optax.clip_by_global_norm(100.0), as_optax(OPT, META, steps))

    @jax.jit
    def run(key):
        params = task.init(key)

        def body(carry, k):
            p, s = carry
            loss, g = jax.value_and_grad(task.loss)(p, task.sample_batch(data, k))
            u, s = tx.update(g, s, p, value=loss)
            return (optax.apply_updates(p, u), s), loss

        (_, s), losses = jax.lax.scan(body, (params, tx.init(params)), jax.random.split(key, steps))
        return losses, s[1].inner["lstm_h"]["x"]

    losses, lstm_h = run(jax.random.PRNGKey(3))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(losses[-10:].mean()) < 0.5 * float(losses[0])
    assert float(jnp.abs(lstm_h).max()) > 0.0  # the recurrent state is carried


def test_hparams_round_trip_and_validation():
    rebuilt = Hyper(**OPT.hparams())  # hparams() gives JSON lists; they come back as tuples
    assert rebuilt == OPT and hash(rebuilt) == hash(OPT)
    meta_again = rebuilt.init_meta_params(jax.random.PRNGKey(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), META, meta_again))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(META))
    with pytest.raises(OptimizerError, match="mlp_hidden"):
        Hyper(mlp_hidden=1)
    with pytest.raises(OptimizerError, match="momentum_decays"):
        Hyper(momentum_decays=(1.5,))
    with pytest.raises(OptimizerError, match="step_mult"):
        dataclasses.replace(OPT, step_mult=0.0)


def test_empty_pytree():
    updates, state = OPT.update(META, OPT.init(META, {}, 5), {}, {}, 1.0)
    assert updates == {} and int(state.step) == 1


def test_file_round_trip(tmp_path):
    """Through the registry and the safetensors + JSON file: same architecture, bit-identical weights."""
    from lopt import architectures, io

    assert architectures.get("hyper", **OPT.hparams()) == OPT
    path = tmp_path / "hyper.safetensors"
    io.write(path, OPT, META, {"note": "test"})
    arch, meta, provenance = io.read(path)
    assert arch == OPT and provenance == {"note": "test"}
    assert jax.tree.structure(meta) == jax.tree.structure(META)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), META, meta))
    u_file, _ = UPDATE(meta, INIT(meta, PARAMS, NUM_STEPS), GRADS, PARAMS, 1.0)
    u_mem, _ = UPDATE(META, INIT(META, PARAMS, NUM_STEPS), GRADS, PARAMS, 1.0)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), u_file, u_mem))


def test_meta_gradient_is_finite_at_zero_parameters_and_gradients():
    """Backprop through a step where a bias and a gradient are exactly zero (the diagnose reference's case)."""
    params = {"w": jnp.ones((4, 3)) * 0.1, "b": jnp.zeros(3)}
    grads = {"w": jnp.full((4, 3), 0.01), "b": jnp.zeros(3)}

    def meta_loss(meta):
        state = OPT.init(meta, params, NUM_STEPS)
        u, state = OPT.update(meta, state, grads, params, 1.0)
        u, _ = OPT.update(meta, state, grads, jax.tree.map(lambda p, d: p + d, params, u), 1.0)
        return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(u))

    g = jax.jit(jax.grad(meta_loss))(META)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(g))
