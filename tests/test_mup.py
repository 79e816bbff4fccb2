"""muP tasks (documented init scales at two widths) and the muP update mode (exact per-layer scaling)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import mup
from lopt.architectures.hyper import Hyper
from lopt.base import OptimizerError
from lopt.optax_export import as_optax
from lopt.tasks.base import TaskError
from lopt.tasks.char_lm import CharTransformerLM
from lopt.tasks.mup import MupMLP, MupTransformer, mup_mlp_family, mup_transformer_family
from lopt.tasks.quadratic import Quadratic

BASE = 32
KEY = jax.random.PRNGKey(0)


def _close_std(x, expected, rel=0.1):
    assert abs(float(jnp.std(x)) / expected - 1.0) < rel, (float(jnp.std(x)), expected)


@pytest.mark.parametrize("width", [64, 256])
def test_mlp_init_scales(width):
    task = MupMLP(width=width, base_width=BASE, num_hidden=1)
    p = task.init(KEY)
    n_in = math.prod(task.input_shape)
    _close_std(p["input"]["w"], math.sqrt(2.0 / n_in))  # relu gain 2, fan_in = input size
    _close_std(p["hidden_0"]["w"], math.sqrt(2.0 / width))  # fan_in = width
    assert not jnp.any(p["readout"]["w"]) and not jnp.any(p["readout"]["b"])  # zero readout
    assert all(not jnp.any(p[k]["b"]) for k in ("input", "hidden_0"))
    assert task.output_multiplier == BASE / width
    scales = task.mup_scales(p)
    assert scales["hidden_0"]["w"] == BASE / width
    rest = [scales[layer][k] for layer in ("input", "hidden_0", "readout") for k in ("w", "b")]
    assert rest == [1.0, 1.0, BASE / width, 1.0, 1.0, 1.0]
    # shapes-only input gives the same factors; the zero readout gives uniform predictions
    assert task.mup_scales(jax.eval_shape(task.init, KEY)) == scales
    images = jax.random.normal(KEY, (4, *task.input_shape))
    assert not jnp.any(task.apply(p, images))


@pytest.mark.parametrize("width", [32, 64])
def test_transformer_init_scales(width):
    task = MupTransformer(d_model=width, base_width=BASE, num_layers=1, num_heads=2, seq_len=8)
    p = task.init(KEY)  # eager: op caches are shared with the standard-mode test
    block = p["block_0"]
    assert not jnp.any(p["head"]["w"])  # zero readout
    assert not jnp.any(block["qkv"]["w"][:, :width])  # zero query
    _close_std(block["qkv"]["w"][:, width:], math.sqrt(1.0 / width))
    _close_std(block["mlp_in"]["w"], math.sqrt(2.0 / width))
    _close_std(block["mlp_out"]["w"], math.sqrt(1.0 / (4 * width)))
    head_dim = width // 2
    assert task.attention_scale == pytest.approx(math.sqrt(BASE // 2) / head_dim)
    assert task.output_multiplier == BASE / width
    scales = task.mup_scales(p)
    for name in ("qkv", "out", "mlp_in", "mlp_out"):
        assert scales["block_0"][name]["w"] == BASE / width
        assert scales["block_0"][name]["b"] == 1.0
    assert scales["embed"] == scales["pos"] == scales["head"]["w"] == 1.0


def test_standard_mode_is_the_plain_model():
    """mup=False: same init as the existing transformer, all update factors 1."""
    kwargs = dict(d_model=64, num_layers=1, num_heads=2, seq_len=8)
    sp = MupTransformer(mup=False, **kwargs)
    ref = CharTransformerLM(**kwargs)
    p = sp.init(KEY)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p, ref.init(KEY)))
    assert set(jax.tree.leaves(sp.mup_scales(p))) == {1.0}
    assert sp.attention_scale == pytest.approx(1.0 / math.sqrt(32))
    sp_mlp = MupMLP(width=128, mup=False)
    assert set(jax.tree.leaves(sp_mlp.mup_scales(jax.eval_shape(sp_mlp.init, KEY)))) == {1.0}


def test_families_and_errors():
    for fam in (mup_mlp_family(), mup_transformer_family(), mup_mlp_family(mup=False)):
        assert max(t.width_mult for t in fam.tasks) <= 4.0
    with pytest.raises(TaskError, match="width"):
        MupMLP(width=0)
    task = MupMLP(width=64)
    with pytest.raises(TaskError, match="not this task"):
        task.mup_scales({"w": jnp.zeros(3)})
    bad = task.init(KEY)
    bad["hidden_0"]["w"] = jnp.zeros((3, 3))
    with pytest.raises(TaskError, match="hidden_0"):
        task.mup_scales(bad)


@functools.partial(jax.jit, static_argnums=0)
def _logit_change_after_two_steps(task, batch):
    params = task.init(KEY)
    scales = task.mup_scales(params)
    logits0 = task.apply(params, batch["image"])
    for _ in range(2):  # step 1 only moves the zero readout; step 2 moves everything
        grads = jax.grad(task.loss)(params, batch)
        params = jax.tree.map(lambda p, g, s: p - 0.05 * s * jnp.sign(g), params, grads, scales)
    return jnp.sqrt(jnp.mean((task.apply(params, batch["image"]) - logits0) ** 2))


def test_mup_step_moves_features_alike_across_widths():
    """The point of muP: with the update factors, an Adam-like step changes the logits by a width-independent amount."""
    changes = []
    for width in (64, 512):
        task = MupMLP(width=width, base_width=BASE, batch_size=64)
        batch = task.sample_batch(task.load_data(), KEY)
        changes.append(float(_logit_change_after_two_steps(task, batch)))
    assert 0.5 < changes[1] / changes[0] < 2.0, changes


# ---------------------------------------------------------------- the muP mode of the optimizer
def test_update_scaling_is_exact():
    """Input -> hidden -> readout MLP at twice the base width: each update leaf is the plain one times its factor."""
    task = MupMLP(width=2 * BASE, base_width=BASE, num_hidden=1)
    params = task.init(KEY)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    opt = mup.for_mup(Hyper(lstm_hidden=4, num_mlps=2))
    meta = opt.init_meta_params(KEY)
    scales = mup.update_scales_for(task, params)
    assert float(scales["hidden_0"]["w"]) == 0.5
    assert all(float(s) == 1.0 for k, s in jax.tree_util.tree_leaves_with_path(scales) if "hidden_0" not in str(k[0]))

    ones = jax.tree.map(lambda _: 1.0, scales)

    @jax.jit  # one compile serves both calls: the scales are traced
    def first_update(update_scales):
        tx = as_optax(opt, meta, 10, update_scales=update_scales)
        return tx.update(grads, tx.init(params), params, value=1.0)

    u_plain, _ = first_update(ones)
    u_mup, s_mup = first_update(scales)
    for a, b, s in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_mup), jax.tree.leaves(scales)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a) * np.float32(s))
    assert int(s_mup.step) == 1 and float(jnp.abs(u_mup["hidden_0"]["w"]).max()) > 0.0
    assert mup.update_scales_for(task, params, enabled=False) is None


def test_config_and_helpers():
    assert mup.mup_enabled({"mup": True}) is True
    assert mup.mup_enabled({}) is False
    with pytest.raises(OptimizerError, match="'mup'"):
        mup.mup_enabled({"mup": "yes"})
    with pytest.raises(OptimizerError, match="mup_scales"):
        mup.update_scales_for(Quadratic(), {"x": jnp.zeros(3)})
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    with pytest.raises(OptimizerError, match="structure"):
        mup.check_update_scales({"a": 1.0}, params)
    with pytest.raises(OptimizerError, match=r"\['b'\].*> 0"):
        mup.check_update_scales({"a": 1.0, "b": -1.0}, params)
    with pytest.raises(OptimizerError, match="scalar"):
        mup.check_update_scales({"a": 1.0, "b": jnp.ones(2)}, params)
    assert Hyper().scale_by_param_rms and not mup.for_mup(Hyper()).scale_by_param_rms
    assert mup.for_mup(mup.for_mup(Hyper())) == mup.for_mup(Hyper())
