"""The users'-workload tasks (issue 14): transformer and conv LMs, residual nets with LayerNorm, 1-D CNNs.

Numeric checks run on tiny copies of each model class (same code, small fields), one compile each;
the registered sizes are checked by tracing the same program (``jax.eval_shape``: shapes, dtypes,
gradient structure, no compile), family members by tests/test_tasks.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.tasks import corpus, layers, registry
from lopt.tasks.base import TaskError
from lopt.tasks.conv1d import SequenceConvClassifier
from lopt.tasks.datasets import load_images
from lopt.tasks.lm import ConvLM, TransformerLM
from lopt.tasks.resnets import ResidualCNN, ResidualMLP

NEW_TASKS = [
    "transformer_lm_tiny", "transformer_lm_small", "transformer_lm_medium", "conv_lm",
    "resmlp_digits", "resmlp_digits16", "resmlp_digits_small",
    "conv1d_digits_seq", "conv1d_digits16_seq", "rescnn_digits", "rescnn_digits16",
]
NEW_FAMILIES = ["transformer_lm_family", "resmlp_family", "conv1d_family", "rescnn_family"]

TINY = {
    "transformer": TransformerLM(num_layers=2, d_model=8, num_heads=2, seq_len=8, batch_size=2, valid_tokens=64),
    "conv_lm": ConvLM(num_layers=2, d_model=8, seq_len=8, batch_size=2, valid_tokens=64),
    "resmlp": ResidualMLP(width=8, num_blocks=2, batch_size=4, train_examples=32),
    "rescnn": ResidualCNN(channels=(4, 8), batch_size=4, train_examples=32),
    "conv1d": SequenceConvClassifier(channels=(4, 8), kernel=3, batch_size=4, train_examples=32),
}


def _one(task, data, key, hp):
    k_init, k_batch, k_valid = jax.random.split(key, 3)
    params = task.init(k_init, hp)
    batch = task.sample_batch(data, k_batch, "train", hp)
    (loss, aux), grads = jax.value_and_grad(task.loss_and_aux, has_aux=True)(params, batch, hp)
    valid_loss = task.loss(params, task.sample_batch(data, k_valid, "valid", hp), hp)
    return params, batch, loss, valid_loss, grads, aux


# One compile per tiny task: hparams are arguments, so the default and a sampled member share it.
_CHECK = jax.jit(_one, static_argnums=0)


@pytest.fixture(scope="module")
def tiny_data():
    return {name: task.load_data() for name, task in TINY.items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_task_finite_loss_full_gradients_and_determinism(name, tiny_data):
    task, data = TINY[name], tiny_data[name]
    sampled = task.sample_hparams(jax.random.PRNGKey(7))
    for hp in (task.default_hparams(), sampled):
        params, _, loss, valid_loss, grads, _ = _CHECK(task, data, jax.random.PRNGKey(0), hp)
        assert np.isfinite(loss) and np.isfinite(valid_loss)
        assert jax.tree.structure(grads) == jax.tree.structure(params)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(g)), path
            assert np.any(np.asarray(g) != 0.0), f"{name}: no gradient reaches {jax.tree_util.keystr(path)}"
    again = _CHECK(task, data, jax.random.PRNGKey(0), sampled)
    jax.tree.map(np.testing.assert_array_equal, (params, loss), (again[0], again[2]))
    other = _CHECK(task, data, jax.random.PRNGKey(1), sampled)
    assert not np.array_equal(np.asarray(loss), np.asarray(other[2]))


@pytest.mark.parametrize("name", NEW_TASKS)
def test_registered_task_traces_with_matching_gradients(name):
    task = registry.get_task(name)
    assert task.name == name and task.num_params() > 0 and task.describe()
    data = _data_shapes(task)
    out = jax.eval_shape(lambda d, k: _one(task, d, k, task.default_hparams()), data, jax.random.PRNGKey(0))
    params, _, loss, valid_loss, grads, _ = out
    assert loss.shape == () and valid_loss.shape == ()
    assert jax.tree.map(lambda a: (a.shape, a.dtype), grads) == jax.tree.map(lambda a: (a.shape, a.dtype), params)


def _data_shapes(task):
    """Shapes of a task's data without loading it twice per test (LM text and digits are cached)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), task.load_data())


def test_new_families_are_registered():
    """Their members' tracing under vmap and grad is covered by tests/test_tasks.py (every family member)."""
    for name in NEW_FAMILIES:
        family = registry.get_family(name)
        assert family.name == name and len(family.tasks) >= 3


# ------------------------------------------------------------------ validation splits
@pytest.mark.parametrize("name", ["transformer", "conv_lm"])
def test_lm_validation_is_a_contiguous_held_out_tail(name, tiny_data):
    task, data = TINY[name], tiny_data[name]
    text = corpus.load_corpus()
    full = np.concatenate([text["train"], text["valid"]])
    train, valid = np.asarray(data["train"]["tokens"]), np.asarray(data["valid"]["tokens"])
    cut = len(text["train"])
    np.testing.assert_array_equal(train, full[:cut])  # training text: everything before the cut
    np.testing.assert_array_equal(valid, full[cut : cut + task.valid_tokens])  # validation: right after it
    # every validation window lies inside the validation text (never reaches back into training text)
    batch = jax.device_get(task.sample_batch(data, jax.random.PRNGKey(5), "valid"))
    windows = np.lib.stride_tricks.sliding_window_view(valid, task.seq_len)
    for row in batch["inputs"]:
        assert np.any(np.all(windows == row, axis=1))
    # and training windows never reach past the cut: their starts are bounded by the train split's length
    train_batch = jax.device_get(task.sample_batch(data, jax.random.PRNGKey(6), "train"))
    np.testing.assert_array_equal(train_batch["inputs"][:, 1:], train_batch["targets"][:, :-1])


@pytest.mark.parametrize("name", ["resmlp", "rescnn", "conv1d"])
def test_train_subset_is_a_prefix_and_validation_is_untouched(name, tiny_data):
    task, data = TINY[name], tiny_data[name]
    full = load_images(task.dataset, task.image_size)
    n = task.train_examples
    assert data["train"]["label"].shape[0] == n
    np.testing.assert_array_equal(np.asarray(data["train"]["image"]), full["train"]["image"][:n])
    np.testing.assert_array_equal(np.asarray(data["valid"]["image"]), full["valid"]["image"])


def test_bad_fields_are_named_errors():
    with pytest.raises(TaskError, match="train_examples"):
        ResidualMLP(train_examples=0)
    with pytest.raises(TaskError, match="valid_tokens"):
        TransformerLM(seq_len=8, valid_tokens=4)
    with pytest.raises(TaskError, match="width"):
        ResidualMLP(width=0)
    with pytest.raises(TaskError, match="channels"):
        ResidualCNN(channels=())
    with pytest.raises(TaskError, match="activation"):
        SequenceConvClassifier(activation="nope")


# ------------------------------------------------------------------ model correctness
@pytest.mark.parametrize("name", ["transformer", "conv_lm"])
def test_lms_are_causal(name):
    """Changing the last input token changes no logit before it."""
    task = TINY[name]
    params = task.init(jax.random.PRNGKey(0))
    x = jax.random.randint(jax.random.PRNGKey(1), (1, task.seq_len), 0, corpus.VOCAB_SIZE)
    y = x.at[0, -1].set((x[0, -1] + 1) % corpus.VOCAB_SIZE)
    a, b = jax.jit(task.apply)(params, jnp.concatenate([x, y]))  # one compile, both sequences
    np.testing.assert_allclose(a[:-1], b[:-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[-1], b[-1])


@pytest.mark.parametrize("stride,dilation,causal,length", [(1, 1, True, 9), (1, 4, True, 9), (2, 1, False, 9), (1, 2, False, 8)])
def test_conv1d_matches_lax_conv(stride, dilation, causal, length):
    p = layers.conv1d_init(jax.random.PRNGKey(0), 3, 2, 3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, length, 2))
    span = 2 * dilation
    pad = [(span, 0)] if causal else [(span // 2, span - span // 2)]
    ref = jax.lax.conv_general_dilated(
        x, p["w"], (stride,), pad, rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC")
    ) + p["b"]
    np.testing.assert_allclose(layers.conv1d(p, x, stride, dilation, causal), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,stride", [((2, 8, 8, 3), 1), ((2, 8, 8, 3), 2), ((1, 7, 9, 2), 2)])
def test_conv_patches_matches_conv(shape, stride):
    p = layers.conv_init(jax.random.PRNGKey(0), 3, shape[-1], 4)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    np.testing.assert_allclose(layers.conv_patches(p, x, stride), layers.conv(p, x, stride), rtol=1e-5, atol=1e-5)


def test_overrides_reach_new_fields():
    """Suites vary these tasks with `overrides` (dataclasses.replace): the fields must exist and apply."""
    task = dataclasses.replace(registry.get_task("rescnn_digits16"), batch_size=16, train_examples=64)
    assert task.batch_size == 16 and "64 train examples" in task.describe()


def test_lm_whole_validation_covers_exactly_the_capped_tail(tiny_data):
    """Whole-split validation (tasks/char_lm.py) walks the capped tail: (valid_tokens - 1) // seq_len windows."""
    task, data = TINY["transformer"], tiny_data["transformer"]
    windows = task.valid_windows(data)
    assert windows["inputs"].shape == ((task.valid_tokens - 1) // task.seq_len, task.seq_len)
    loss, _ = jax.jit(task.valid_loss_full)(task.init(jax.random.PRNGKey(0)), data)
    assert np.isfinite(loss)
