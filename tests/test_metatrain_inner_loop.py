"""lopt.metatrain.inner_loop: one task trained by any optax optimizer in one scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.metatrain.inner_loop import eval_steps, train_task
from lopt.tasks.quadratic import Quadratic

TASK = Quadratic(dim=4, condition=10.0)
DATA = TASK.load_data()


def test_matches_a_python_loop_of_optax_sgd():
    key = jax.random.PRNGKey(0)
    out = jax.jit(lambda k: train_task(TASK, DATA, optax.sgd(0.05), k, 7, eval_every=3, return_params=True))(key)
    k_init, k_train, _ = jax.random.split(key, 3)
    hp = TASK.default_hparams()
    params, losses = TASK.init(k_init, hp), []
    for t in range(7):
        batch = TASK.sample_batch(DATA, jax.random.fold_in(k_train, t), "train", hp)
        loss, grads = jax.value_and_grad(TASK.loss)(params, batch, hp)
        losses.append(loss)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    np.testing.assert_allclose(out["train_loss"], np.asarray(losses), rtol=1e-5)
    np.testing.assert_allclose(out["final_params"]["x"], params["x"], rtol=1e-5)
    np.testing.assert_array_equal(out["eval_step"], [0, 3, 6, 7])
    valid = TASK.loss(params, {"target": jnp.zeros((4,))}, hp)  # valid split is noise-free
    np.testing.assert_allclose(out["valid_loss"][-1], valid, rtol=1e-5)


def test_vmapped_over_seeds_with_the_loss_passed_as_value():
    def loss_scaled_sgd():
        # uses value=loss (a missing value would be None and fail to trace)
        def update(g, s, p=None, *, value=None, **kw):
            step = 0.05 / (1.0 + value)
            return jax.tree.map(lambda x: -step * x, g), s + 1

        return optax.GradientTransformationExtraArgs(lambda p: jnp.zeros((), jnp.int32), update)

    tx = loss_scaled_sgd()
    fn = jax.jit(jax.vmap(lambda k: train_task(TASK, DATA, tx, k, 5, eval_every=5)))
    out = fn(jax.random.split(jax.random.PRNGKey(1), 3))
    assert out["train_loss"].shape == (3, 5) and out["valid_loss"].shape == (3, 2)
    assert not np.allclose(out["train_loss"][0], out["train_loss"][1])  # different seeds
    assert np.all(out["valid_loss"][:, -1] < out["valid_loss"][:, 0])
    assert eval_steps(10, 4).tolist() == [0, 4, 8, 10]
