"""The learned optimizer inside modern training harnesses (docs/harnesses.md shows the same code).

Each test is a real, small example: it builds the harness the way a user
would, trains or steps a tiny model with it, and checks what the harness
promises (which leaves each optimizer touches, the decay actually decoupled,
accumulation equal to one big step, float32 state under bfloat16 params).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt

VOCAB, DIM, STEPS = 16, 8, 30


def tiny_lm_params(key, dtype=jnp.float32):
    """A tiny next-token MLP: embedding, two hidden matrices, a bias and a head."""
    ks = jax.random.split(key, 4)
    p = {
        "embed": jax.random.normal(ks[0], (VOCAB, DIM)) * 0.5,
        "hidden": {"w1": jax.random.normal(ks[1], (DIM, DIM)) / np.sqrt(DIM),
                   "w2": jax.random.normal(ks[2], (DIM, DIM)) / np.sqrt(DIM)},
        "b": jnp.zeros((DIM,)),
        "head": jax.random.normal(ks[3], (DIM, VOCAB)) / np.sqrt(DIM),
    }
    return jax.tree.map(lambda x: x.astype(dtype), p)


TOKENS = jax.random.randint(jax.random.PRNGKey(1), (64,), 0, VOCAB)


def tiny_lm_loss(p):
    x, y = TOKENS[:-1], (TOKENS[:-1] * 3 + 1) % VOCAB  # a learnable map from each token to the next
    h = p["embed"][x].astype(jnp.float32)
    h = jnp.tanh(h @ p["hidden"]["w1"].astype(jnp.float32) + p["b"].astype(jnp.float32))
    h = jnp.tanh(h @ p["hidden"]["w2"].astype(jnp.float32))
    logits = h @ p["head"].astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def hidden_labels(params):
    """"hidden" for the hidden weight matrices, "other" for embeddings, heads and biases."""
    return {k: jax.tree.map(lambda _: "hidden" if k == "hidden" else "other", v) for k, v in params.items()}


def train(tx, params, steps=STEPS):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(tiny_lm_loss)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(steps):
        params, state, _ = step(params, state)
    return params, state


@pytest.fixture(scope="module")
def opt():
    return lopt.pretrained("default")


def test_partition_learned_on_hidden_muon_or_adam_elsewhere(opt):
    params = tiny_lm_params(jax.random.PRNGKey(0))
    start = float(tiny_lm_loss(params))
    for name, hidden_tx in [("learned", opt.as_optax(STEPS)), ("muon", optax.contrib.muon(0.02))]:
        other_tx = opt.as_optax(STEPS) if name == "muon" else optax.adam(1e-2)
        tx = optax.partition({"hidden": hidden_tx, "other": other_tx}, hidden_labels)
        new, state = train(tx, params)
        assert float(tiny_lm_loss(new)) < 0.9 * start, name
        # the learned optimizer's state covers exactly the leaves it was given
        learned_state = state.inner_states["hidden" if name == "learned" else "other"].inner_state
        covered = {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(learned_state.scales)[0]}
        want = {"['hidden']['w1']", "['hidden']['w2']"}
        assert (covered == want) if name == "learned" else (covered.isdisjoint(want) and len(covered) == 3)


def test_decoupled_weight_decay_chained_after_the_learned_update(opt):
    """``add_decayed_weights(-lr * wd)`` after the learned step subtracts ``lr * wd * p`` from masked leaves only."""
    lr_wd = 1e-3
    params = tiny_lm_params(jax.random.PRNGKey(0))
    matrices = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)  # noqa: E731  (no decay on biases)
    plain = opt.as_optax(STEPS)
    decayed = optax.chain(opt.as_optax(STEPS), optax.add_decayed_weights(-lr_wd, mask=matrices))
    grads = jax.grad(tiny_lm_loss)(params)
    u_plain, _ = plain.update(grads, plain.init(params), params, value=1.0)
    u_dec, _ = decayed.update(grads, decayed.init(params), params, value=1.0)
    want = jax.tree.map(lambda u, p: u - lr_wd * p if p.ndim == 2 else u, u_plain, params)
    chex.assert_trees_all_close(u_dec, want, rtol=1e-6, atol=1e-9)
    new, _ = train(decayed, params)
    assert float(tiny_lm_loss(new)) < float(tiny_lm_loss(params))


def test_multisteps_accumulation_equals_one_step_on_the_mean_gradient(opt):
    k = 4
    params = tiny_lm_params(jax.random.PRNGKey(0))
    micro = [jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 1)), params) for i in range(k)]
    tx = optax.MultiSteps(opt.as_optax(10), every_k_schedule=k)
    state = tx.init(params)
    for i, g in enumerate(micro):
        updates, state = tx.update(g, state, params, value=jnp.asarray(1.0))
        if i < k - 1:  # nothing moves until the k-th micro-batch
            assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    single = opt.as_optax(10)
    mean = jax.tree.map(lambda *g: sum(g) / k, *micro)
    want, _ = single.update(mean, single.init(params), params, value=jnp.asarray(1.0))
    chex.assert_trees_all_close(updates, want, rtol=1e-5, atol=1e-9)


def test_bfloat16_params_float32_state(opt):
    params = tiny_lm_params(jax.random.PRNGKey(0), dtype=jnp.bfloat16)
    tx = opt.as_optax(STEPS)
    new, state = train(tx, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
    assert float(tiny_lm_loss(new)) < 0.9 * float(tiny_lm_loss(params))
