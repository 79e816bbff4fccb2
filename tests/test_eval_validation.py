"""Whole-split validation (Task.valid_loss_full) and validating at other parameters (schedule-free)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.metatrain.inner_loop import train_task
from lopt.tasks.base import mean_over_rows
from lopt.tasks.supervised import SimpleClassificationTask, softmax_cross_entropy


def _init(key):
    return {"w": 0.3 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}


def _apply(params, images):
    return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]


SOFTMAX = SimpleClassificationTask("softmax_digits", _init, _apply, dataset="digits", batch_size=32)
DATA = SOFTMAX.load_data()
PARAMS = SOFTMAX.init(jax.random.PRNGKey(3))


@dataclasses.dataclass(frozen=True)
class _SmallChunks(SimpleClassificationTask):
    VALID_CHUNK_ROWS = 100  # 360 validation rows: three full chunks and a remainder of 60


def _by_hand(params, rows):
    logits = _apply(params, rows["image"])
    loss = softmax_cross_entropy(logits, rows["label"])
    acc = jnp.mean((jnp.argmax(logits, -1) == rows["label"]).astype(jnp.float32))
    return loss, acc


@pytest.mark.parametrize("transform", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_whole_split_validation_equals_the_mean_over_every_row(transform):
    assert DATA["valid"]["label"].shape[0] == 360
    want_loss, want_acc = _by_hand(PARAMS, DATA["valid"])
    small = _SmallChunks("softmax_digits", _init, _apply, dataset="digits", batch_size=32)
    for task in (SOFTMAX, small):  # one batch of 360 rows, and 3 chunks of 100 + 60
        loss, aux = transform(task.valid_loss_full)(PARAMS, DATA)
        chex.assert_trees_all_close((loss, aux["accuracy"]), (want_loss, want_acc), rtol=1e-5)


def test_mean_over_rows_weights_chunks_by_their_size():
    rows = {"x": jnp.arange(23.0) ** 2}
    fn = lambda b: (jnp.mean(b["x"]), {"max": jnp.mean(b["x"] > 100)})  # noqa: E731
    for chunk in (1, 5, 23, 64):
        loss, aux = jax.jit(lambda r, c=chunk: mean_over_rows(fn, r, c))(rows)
        chex.assert_trees_all_close(loss, np.mean(np.arange(23.0) ** 2), rtol=1e-6)
        chex.assert_trees_all_close(aux["max"], np.mean(np.arange(23.0) ** 2 > 100), rtol=1e-6)


def test_char_lm_validation_scores_every_character_once():
    from lopt.tasks.char_lm import CharTransformerLM

    task = CharTransformerLM(seq_len=8, d_model=8, num_heads=1, num_layers=1)
    tokens = jnp.arange(45, dtype=jnp.int32) % 128
    data = {"train": {"tokens": tokens}, "valid": {"tokens": tokens}}
    windows = task.valid_windows(data)
    assert windows["inputs"].shape == (5, 8)  # (45 - 1) // 8 windows; the last 4 characters are left out
    np.testing.assert_array_equal(np.asarray(windows["targets"]).reshape(-1), np.arange(1, 41))
    np.testing.assert_array_equal(np.asarray(windows["inputs"]).reshape(-1), np.arange(0, 40))
    params = task.init(jax.random.PRNGKey(0))
    want = task.loss(params, windows)
    got, _ = jax.jit(task.valid_loss_full)(params, data)
    chex.assert_trees_all_close(got, want, rtol=1e-5)


def test_train_task_validates_on_the_whole_split_at_every_eval_step():
    key = jax.random.PRNGKey(5)
    out = jax.jit(lambda k: train_task(SOFTMAX, DATA, optax.adam(1e-2), k, 6, eval_every=3, return_params=True))(key)
    init = SOFTMAX.init(jax.random.split(key, 3)[0])
    chex.assert_trees_all_close(out["valid_loss"][0], _by_hand(init, DATA["valid"])[0], rtol=1e-5)
    chex.assert_trees_all_close(out["valid_loss"][-1], _by_hand(out["final_params"], DATA["valid"])[0], rtol=1e-5)
    chex.assert_trees_all_close(out["valid_aux"]["accuracy"][-1], _by_hand(out["final_params"], DATA["valid"])[1])


def test_schedule_free_is_validated_at_its_averaged_parameters():
    from optax import contrib

    tx = contrib.schedule_free_adamw(learning_rate=0.05)
    at = lambda state, params: contrib.schedule_free_eval_params(state, params)  # noqa: E731
    out = jax.jit(lambda k: train_task(SOFTMAX, DATA, tx, k, 8, eval_every=4, return_params=True, eval_params=at))(
        jax.random.PRNGKey(1))
    averaged = contrib.schedule_free_eval_params(out["final_opt_state"], out["final_params"])
    chex.assert_trees_all_close(out["valid_loss"][-1], _by_hand(averaged, DATA["valid"])[0], rtol=1e-5)
    iterate = _by_hand(out["final_params"], DATA["valid"])[0]
    assert abs(float(iterate) - float(out["valid_loss"][-1])) > 1e-4  # the two parameter sets differ
