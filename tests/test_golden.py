"""The shipped weights and fresh architectures keep their numbers.

``tests/data/golden_updates.npz`` holds updates recorded with the code as it
was *before* the state became per-leaf (issue 18): for both shipped optimizers
and each fresh architecture, four steps on a small mixed pytree (a matrix, a
rank-3 tensor, a vector and a scalar) with a loss passed through ``value=``.
A rewrite for speed or sharding must reproduce them to float tolerance.

It also holds each shipped optimizer's loss curve on a tiny fixed regression
task: a quality guard (the shipped weights, or a replacement, must reach at
least the loss the recorded weights reached), not a magic threshold.

Regenerate only on purpose (new shipped weights, a deliberate change of an
architecture's maths): ``python tests/test_golden.py`` rewrites the file from
the current code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import architectures

GOLDEN = Path(__file__).parent / "data" / "golden_updates.npz"
STEPS = 4
RTOL, ATOL = 2e-5, 1e-7
SHIPPED = ("default", "default_v1", "default_v2", "default_v3", "default_v4", "default_v5", "default_v7", "default_v10",
           "default_v11", "default_v12", "default_v13",
           "hyper_mup")
QUALITY = ("default", "default_v1", "default_v2", "default_v3", "default_v4", "default_v5", "default_v7",
           "default_v10", "default_v11", "default_v12", "default_v13")  # shipped optimizers with a recorded quality curve
FRESH = ("small_fc", "mlp", "learned_adam", "hyper")


def params0():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "w": jax.random.normal(k[0], (5, 3)),
        "conv": jax.random.normal(k[1], (2, 3, 4)) * 0.3,
        "b": jax.random.normal(k[2], (3,)) * 0.1,
        "s": jnp.asarray(0.7),
    }


def grads_at(t):
    k = jax.random.split(jax.random.PRNGKey(100 + t), 4)
    p = params0()
    return {n: jax.random.normal(kk, jnp.shape(p[n])) * (0.5 + t) for n, kk in zip(sorted(p), k)}


def run(arch, mp):
    tx = lopt.as_optax(arch, mp, num_steps=10)
    p = params0()
    st = tx.init(p)
    update = jax.jit(tx.update)  # one compile instead of op-by-op dispatch
    out = {}
    for t in range(STEPS):
        u, st = update(grads_at(t), st, p, value=jnp.asarray(2.0 - 0.3 * t))
        p = jax.tree.map(lambda a, b: a + b, p, u)
        for n in sorted(u):
            out[f"{t}/{n}"] = np.asarray(u[n], np.float32)
    return out


def optimizer(name):
    """(arch, meta_params) of a recorded optimizer; fresh weights come from PRNGKey(3)."""
    if name.startswith("pretrained:"):
        opt = lopt.pretrained(name.split(":", 1)[1])
        return opt.arch, opt.meta_params
    options = dict(learned_schedule=True, schedule_decay_init=1.0, centered=True)
    arch = architectures.get("small_fc", **options) if name == "small_fc_sched_centered" else architectures.get(name)
    return arch, arch.init_meta_params(jax.random.PRNGKey(3))


NAMES = [f"pretrained:{n}" for n in SHIPPED] + list(FRESH) + ["small_fc_sched_centered"]


def quality_task():
    kx, kw, k1, k2 = jax.random.split(jax.random.PRNGKey(7), 4)
    x = jax.random.normal(kx, (64, 8))
    y = jnp.tanh(x @ jax.random.normal(kw, (8, 2)))
    params = {
        "w1": jax.random.normal(k1, (8, 16)) / jnp.sqrt(8.0),
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 2)) / 4.0,
        "b2": jnp.zeros(2),
    }
    loss = lambda p: jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)  # noqa: E731
    return params, loss


def train_quality_task(opt, steps=150):
    params, loss_fn = quality_task()
    tx = opt.as_optax(num_steps=steps)

    def body(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p, value=loss)
        return (optax.apply_updates(p, u), s), loss

    (p, _), losses = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps))(params)
    return np.asarray(losses), float(loss_fn(p))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.mark.parametrize("name", NAMES)
def test_updates_match_the_recorded_ones(golden, name):
    arch, mp = optimizer(name)
    got = run(arch, mp)
    want = {k[len(name) + 1 :]: v for k, v in golden.items() if k.startswith(name + "/")}
    assert want and set(got) == set(want)
    chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", QUALITY)
def test_shipped_optimizer_reaches_its_recorded_loss_on_a_fixed_task(golden, name):
    """Quality guard: at least as good as the recorded weights (1% slack for float reordering)."""
    losses, final = train_quality_task(lopt.pretrained(name))
    want = float(golden[f"quality/{name}/final"])
    assert np.isclose(losses[0], golden[f"quality/{name}/losses"][0], rtol=1e-5)  # same task
    assert final <= 1.01 * want, (final, want)
    assert final < 0.5 * float(losses[0])  # and it is a real descent, not a recording of a broken run


if __name__ == "__main__":  # regenerate the golden file from the current code (deliberately)
    out = {}
    for name in NAMES:
        arch, mp = optimizer(name)
        out.update({f"{name}/{k}": v for k, v in run(arch, mp).items()})
    for name in QUALITY:
        losses, final = train_quality_task(lopt.pretrained(name))
        out[f"quality/{name}/losses"], out[f"quality/{name}/final"] = losses, np.float32(final)
    np.savez_compressed(sys.argv[1] if len(sys.argv) > 1 else GOLDEN, **out)
