"""Learned-optimizer architectures: hand-checked updates, the guard, jit/vmap, any pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import chex
import optax
import pytest

import lopt
from lopt import OptimizerError, architectures

KEY = jax.random.PRNGKey(0)
SMALL = {"mlp": {"hidden": 8}}  # a narrower mlp compiles faster; the code path is the same


def get(name):
    return architectures.get(name, **SMALL.get(name, {}))


def tiny_params():
    return {"w": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]], jnp.float32), "b": jnp.array([0.3, -0.2, 0.0])}


def grads_at(step):
    rng = np.random.default_rng(step)
    return {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}


NAMES = architectures.names()  # conformance tests cover every registered architecture, new ones included


def test_registry_names_and_errors():
    assert {"mlp", "small_fc", "learned_adam", "hyper"} <= set(NAMES)
    assert architectures.get().arch == "small_fc"
    for name in NAMES:
        assert architectures.get(name).arch == name
    with pytest.raises(OptimizerError, match="unknown architecture 'nope'.*small_fc"):
        architectures.get("nope")
    with pytest.raises(OptimizerError, match="no hyperparameter 'width'"):
        architectures.get("small_fc", width=3)
    arch = architectures.get("small_fc", momentum_decays=[0.5, 0.9])  # JSON lists become tuples
    assert arch.momentum_decays == (0.5, 0.9) and hash(arch)


def test_learned_adam_matches_hand_computed_adam():
    arch = architectures.get("learned_adam")
    mp = arch.init_meta_params(KEY)
    mp = {**mp, "decay": jnp.array([-1.0, 0.5])}  # a non-trivial learned schedule
    params, n = tiny_params(), 10
    state = arch.init(mp, params, n)
    update = jax.jit(arch.update)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(1, 4):
        g = grads_at(t)
        upd, state = update(mp, state, g, params)
        f = (t - 1) / n
        lr = 1e-3 * np.exp(-1.0 * f + 0.5 * f * f)
        for k in params:
            m[k] = 0.9 * m[k] + 0.1 * np.asarray(g[k])
            v[k] = 0.999 * v[k] + 0.001 * np.asarray(g[k]) ** 2
            want = -lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
            np.testing.assert_allclose(upd[k], want, rtol=2e-5, atol=1e-10)
    assert int(state.step) == 3 and int(state.skipped) == 0


def test_fresh_learned_adam_is_optax_adam():
    arch = architectures.get("learned_adam")
    mp = arch.init_meta_params(KEY)
    params = tiny_params()
    ref, s_ref = optax.adam(1e-3), None
    s_ref, state = ref.init(params), arch.init(mp, params, 100)
    update, update_ref = jax.jit(arch.update), jax.jit(ref.update)
    for t in range(3):
        g = grads_at(t)
        u_ref, s_ref = update_ref(g, s_ref, params)
        u, state = update(mp, state, g, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10), u, u_ref)


def test_small_fc_with_zero_network_is_adafactor_momentum():
    """Zeroing the output layer leaves the skip path: -lr * m_hat(0.9) / sqrt(factored v_hat)."""
    arch = architectures.get("small_fc")
    mp = arch.init_meta_params(KEY)
    mp = {**mp, "out": {"w": jnp.zeros_like(mp["out"]["w"]), "b": jnp.zeros(2)}}
    params = tiny_params()
    state = arch.init(mp, params, 50)
    update = jax.jit(arch.update)
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    v_b = np.zeros(3)
    row, col = np.zeros(2), np.zeros(3)
    for t in range(1, 3):
        g = {k: np.asarray(x, np.float64) for k, x in grads_at(t).items()}
        upd, state = update(mp, state, grads_at(t), params)
        for k in m:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
        row = 0.999 * row + 0.001 * (g["w"] ** 2).mean(1)
        col = 0.999 * col + 0.001 * (g["w"] ** 2).mean(0)
        v_w = np.outer(row / row.mean(), col) / (1 - 0.999**t)
        v_b = 0.999 * v_b + 0.001 * g["b"] ** 2
        want_w = -1e-3 * (m["w"] / (1 - 0.9**t)) / np.sqrt(v_w)
        want_b = -1e-3 * (m["b"] / (1 - 0.9**t)) / np.sqrt(v_b / (1 - 0.999**t))
        np.testing.assert_allclose(upd["w"], want_w, rtol=1e-4)
        np.testing.assert_allclose(upd["b"], want_b, rtol=1e-4)


def test_small_fc_schedule_decay_init_is_the_decay_weight_of_a_fresh_schedule():
    arch = architectures.get("small_fc", learned_schedule=True, schedule_decay_init=0.75)
    w = np.asarray(arch.init_meta_params(KEY)["schedule"])
    np.testing.assert_array_equal(w, np.r_[np.zeros(w.size - 1), 0.75].astype(np.float32))
    with pytest.raises(OptimizerError, match="needs learned_schedule"):
        architectures.get("small_fc", schedule_decay_init=0.75)


def test_small_fc_learned_schedule_decays_to_the_planned_horizon():
    """``schedule`` weight w on log(1 - fraction + 0.01) scales step t's update by (1 - t/T + 0.01)**w."""
    plain = architectures.get("small_fc")
    sched = architectures.get("small_fc", learned_schedule=True)
    mp = plain.init_meta_params(KEY)
    w = jnp.zeros((sched.num_schedule_features(),)).at[-1].set(2.0)
    mp_s = {**mp, "schedule": w}
    assert jax.tree.structure(sched.init_meta_params(KEY)) == jax.tree.structure(mp_s)
    params, horizon = tiny_params(), 10
    s_plain, s_sched = plain.init(mp, params, horizon), sched.init(mp_s, params, horizon)
    for t in range(horizon + 3):  # past the planned horizon the factor stays at its end value
        u_plain, s_plain = plain.update(mp, s_plain, grads_at(t), params)
        u_sched, s_sched = sched.update(mp_s, s_sched, grads_at(t), params)
        frac = min(t / horizon, 1.0)
        factor = (1.0 - frac + 0.01) ** 2.0
        np.testing.assert_allclose(u_sched["w"], factor * np.asarray(u_plain["w"]), rtol=1e-4, atol=1e-12)
    fresh = sched.init_meta_params(KEY)  # zero schedule weights: the plain optimizer
    np.testing.assert_array_equal(fresh["schedule"], 0.0)


# One mixed pytree for every architecture: list container, scalar, vector,
# matrix, rank-4 conv kernel, bfloat16 leaf.
def mixed_params():
    k = jax.random.split(KEY, 5)
    return {
        "layers": [
            {"kernel": jax.random.normal(k[0], (2, 2, 3, 4)), "bias": jnp.zeros(4)},
            {"w": jax.random.normal(k[1], (4, 3)).astype(jnp.bfloat16)},
        ],
        "scale": jnp.ones(()),
        "vec": jax.random.normal(k[2], (5,)),
    }


def quad_loss(params):
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.1)) for x in jax.tree.leaves(params))


def unroll(arch, mp, params, num_steps):
    """Three scanned steps; num_steps is traced (per-task horizons)."""
    state = arch.init(mp, params, num_steps)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(quad_loss)(p)
        u, s = arch.update(mp, s, g, p, loss)
        return (optax.apply_updates(p, u), s), loss

    (p, s), losses = jax.lax.scan(step, (params, state), None, length=3)
    return p, s, losses


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_over_meta_params_any_pytree(name):
    arch = get(name)
    mps = jax.vmap(arch.init_meta_params)(jax.random.split(KEY, 2))
    mps = jax.tree.map(lambda x: x.at[1].multiply(1.1), mps)  # two different members
    params = mixed_params()
    run = jax.jit(jax.vmap(lambda mp, n: unroll(arch, mp, params, n), in_axes=(0, 0)))
    p, s, losses = run(mps, jnp.array([10, 100]))
    single = jax.jit(lambda mp, n: unroll(arch, mp, params, n))  # one compile, both members
    for i, n in enumerate([10, 100]):
        p_i, _, _ = single(jax.tree.map(lambda x: x[i], mps), n)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(
            np.asarray(a[i], np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-6), p, p_i)
    assert jax.tree.map(lambda x: x.dtype, p) == jax.tree.map(lambda x: x.dtype, params)
    assert jax.tree.map(lambda x: x.shape[1:], p) == jax.tree.map(lambda x: x.shape, params)
    assert np.all(np.isfinite(np.asarray(losses))) and np.all(np.asarray(s.step) == 3)
    assert np.all(np.asarray(s.skipped) == 0)


@pytest.mark.parametrize("name", NAMES)
def test_guard_skips_non_finite_steps(name):
    arch = get(name)
    mp = arch.init_meta_params(KEY)
    params = tiny_params()
    update = jax.jit(arch.update)
    _, state = update(mp, arch.init(mp, params, 10), grads_at(1), params, 1.0)  # one good step first
    bad = {"w": grads_at(2)["w"].at[0, 1].set(jnp.nan), "b": grads_at(2)["b"]}
    upd, new = update(mp, state, bad, params, 1.0)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(upd))
    assert jax.tree.map(np.array_equal, optax.apply_updates(params, upd), params) == {"w": True, "b": True}
    assert int(new.skipped) == int(state.skipped) + 1 and int(new.step) == int(state.step)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), new.inner, state.inner)))
    inf_grads = jax.tree.map(lambda g: g.at[0].set(jnp.inf), grads_at(3))
    upd2, new2 = update(mp, new, inf_grads, params, 1.0)
    # the contract: skipped exactly when an update or a new accumulator would not be finite; an architecture
    # that clips gradients first (hyper) may take a finite step instead, and then everything must be finite
    skipped = int(new2.skipped) - int(new.skipped)
    assert skipped == 1 or (skipped == 0 and all(np.all(np.isfinite(np.asarray(x))) for x in
                                                 jax.tree.leaves((upd2, new2.inner))))
    _, ok = update(mp, new2, grads_at(4), params, 1.0)  # and it recovers
    assert int(ok.step) == int(new2.step) + 1 and int(ok.skipped) == int(new2.skipped)


def test_state_bytes_small_fc_at_most_two_and_a_half_adam():
    arch = architectures.get("small_fc")
    params = {"w1": jnp.zeros((64, 32)), "b1": jnp.zeros(32), "w2": jnp.zeros((32, 10)), "b2": jnp.zeros(10)}
    n = 64 * 32 + 32 + 320 + 10
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    ours = nbytes(jax.eval_shape(lambda p: arch.init(arch.init_meta_params(KEY), p, 10), params))
    adam = nbytes(jax.eval_shape(optax.adam(1e-3).init, params))
    assert ours <= 2.5 * adam, (ours / n, adam / n)


def test_small_fc_centered_subtracts_the_update_made_without_gradient_information():
    """``centered``: zero gradients (and momenta) move nothing; otherwise plain minus that drift."""
    plain = architectures.get("small_fc", learned_schedule=True)
    centered = architectures.get("small_fc", learned_schedule=True, centered=True)
    mp = plain.init_meta_params(KEY)
    mp = {**mp, "out": {"w": mp["out"]["w"] * 100.0, "b": jnp.asarray([0.3, 0.2])}}  # a visible drift
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.5, 1.0, 4)}
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = plain.init(mp, params, 50)

    still, _ = centered.update(mp, state, zeros, params, 1.0)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(still))
    drift, _ = plain.update(mp, state, zeros, params, 1.0)
    assert min(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(drift)) > 1e-5

    moved, _ = centered.update(mp, state, grads, params, 1.0)
    full, _ = plain.update(mp, state, grads, params, 1.0)
    for c, f, d in zip(jax.tree.leaves(moved), jax.tree.leaves(full), jax.tree.leaves(drift)):
        np.testing.assert_allclose(c, f - d, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_per_leaf_and_shaped_like_the_params(name):
    """Issue 18: accumulators per leaf, never a concatenation of leaves (that would defeat sharding).

    Every parameter has at least one accumulator of exactly its shape, and no
    state leaf holds more numbers than the largest parameter.
    """
    arch = get(name)
    params = mixed_params()
    state = jax.eval_shape(lambda p: arch.init(arch.init_meta_params(KEY), p, 10), params)
    shapes = [tuple(x.shape) for x in jax.tree.leaves(state.inner)]
    largest = max(int(np.prod(jnp.shape(p))) for p in jax.tree.leaves(params))
    for p in jax.tree.leaves(params):
        if jnp.ndim(p):
            assert tuple(p.shape) in shapes, (p.shape, shapes)
    assert max(int(np.prod(s)) for s in shapes) <= largest, shapes
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.inner))  # float32 state under bf16 params


class OptaxTransformTest(chex.TestCase):
    """The optax export gives the same numbers with and without ``jit`` (chex.variants), for every architecture."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_update_with_and_without_jit(self):
        params = tiny_params()
        for name in NAMES:
            arch = get(name)
            tx = lopt.as_optax(arch, arch.init_meta_params(KEY), num_steps=10)
            update = self.variant(lambda g, s, p: tx.update(g, s, p, value=jnp.asarray(1.5)))
            state = tx.init(params)
            got = []
            for t in range(2):
                u, state = update(grads_at(t), state, params)
                got.append(u)
            reference = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.asarray(1.5)))
            state = tx.init(params)
            for t in range(2):
                want, state = reference(grads_at(t), state, params)
                chex.assert_trees_all_close(got[t], want, rtol=1e-5, atol=1e-8, custom_message=name)
