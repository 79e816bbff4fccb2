"""Bad inputs through the Python API: the non-finite guard, pytree checks, number parsing.

The guard is tested for every registered architecture (``tests/_archs.py``: new ones
are covered without editing this file, plus state-changing options) on a 1-D and a scalar leaf:
a gradient of 1e20 squares to inf in float32, and before the guard also looked
at the accumulators such a step was applied with a zero update and froze that
element forever.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import architectures
from lopt.io import json_safe
from lopt.metatrain.config import ConfigError, load_config, yaml_load

from _archs import SPECS, build

STEPS = 20
PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
_RUNS: dict = {}


def _run(name: str, first: dict):
    """``first`` then STEPS small gradients, in one jitted scan compiled once per architecture.

    Returns (params, skipped, step, all accumulators finite) after the first step, and params
    and ``skipped`` at the end.
    """
    if name not in _RUNS:
        arch = build(name)
        tx = lopt.as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(0)), 100)

        def run(params, grads):
            def step(carry, g):
                p, st = carry
                u, st = tx.update(g, st, p)
                p = optax.apply_updates(p, u)
                finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(st.inner)]))
                return (p, st), (p, st.skipped, st.step, finite)

            (final, _), (ps, skipped, steps, finite) = jax.lax.scan(step, (params, tx.init(params)), grads)
            first = jax.tree.map(lambda x: x[0], ps)
            return (first, skipped[0], steps[0], finite[0]), final, skipped[-1]

        _RUNS[name] = jax.jit(run)
    small = jax.tree.map(lambda p: jnp.full((STEPS, *p.shape), 0.1), PARAMS)
    grads = jax.tree.map(lambda f, s: jnp.concatenate([f[None], s]), first, small)
    return _RUNS[name](PARAMS, grads)


def _first(leaf: str, value: float) -> dict:
    g = jax.tree.map(lambda p: jnp.full_like(p, 0.1), PARAMS)
    g[leaf] = g[leaf].at[(0,) * g[leaf].ndim].set(value)
    return g


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", SPECS)
def test_a_nan_gradient_is_skipped(name):
    (p1, skipped1, step1, _), final, skipped = _run(name, _first("b", jnp.nan))
    assert int(skipped1) == 1 and int(step1) == 0 and int(skipped) == 1
    assert _equal(p1, PARAMS)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("leaf", ["b", "s"])  # a 1-D leaf and a scalar leaf
def test_a_huge_gradient_never_freezes_a_parameter(name, leaf):
    (p1, skipped1, _, finite1), final, skipped = _run(name, _first(leaf, 1e20))
    assert bool(finite1)  # the invariant: the state never holds a non-finite number, whatever the gradient
    if int(skipped1) == 1:  # skipped: nothing moved, and training goes on as if it never happened
        assert _equal(p1, PARAMS)
        _, clean, _ = _run(name, _first("b", jnp.nan))  # a NaN step is skipped: the clean reference
        assert _equal(final, clean) and int(skipped) == 1
    else:  # an architecture that took the step finitely must keep every element moving
        assert all(bool(jnp.all(a != b)) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(p1))), final


def test_the_guard_skips_the_1e20_step_of_adam_like_architectures():
    for name in ("learned_adam", "small_fc"):  # their second moments overflow: must be skipped
        (_, skipped1, _, _), _, _ = _run(name, _first("b", 1e20))
        assert int(skipped1) == 1, name


@pytest.mark.parametrize("name", SPECS)
def test_moments_are_guarded_through_the_gradient_bound(name):
    """Above MAX_GRADIENT the step is skipped (its square could overflow a row sum); below, it is taken."""
    from lopt.base import MAX_GRADIENT, LearnedOptimizer

    arch = build(name)
    assert arch.moment_keys, "a new architecture: name its moving averages (see lopt/base.py)"
    if type(arch).moments_finite is not LearnedOptimizer.moments_finite:
        pytest.skip(f"{name} has its own moments_finite (covered by test_a_huge_gradient_never_freezes_a_parameter)")
    (p1, skipped1, _, _), _, _ = _run(name, _first("b", 10 * MAX_GRADIENT))
    assert int(skipped1) == 1 and _equal(p1, PARAMS)
    (p1, skipped1, _, finite1), _, _ = _run(name, _first("b", MAX_GRADIENT / 10))
    assert int(skipped1) == 0 and bool(finite1)


@pytest.mark.parametrize("name", SPECS)
def test_an_empty_leaf_never_skips_a_step(name):
    arch = build(name)
    tx = lopt.as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(0)), 100)
    p = {"w": jnp.ones((2, 3)), "empty": jnp.zeros((0,))}
    g = {"w": jnp.full((2, 3), 0.1), "empty": jnp.zeros((0,))}
    u, s = jax.jit(tx.update)(g, tx.init(p), p, value=1.0)
    assert int(s.skipped) == 0 and int(s.step) == 1 and bool(jnp.all(u["w"] != 0))


def test_gradients_bounded_catches_nan_inf_and_huge_values():
    from lopt.base import MAX_GRADIENT, gradients_bounded

    ok = lambda *xs: bool(gradients_bounded({"a": jnp.zeros((0,)), "x": jnp.asarray(xs, jnp.float32)}))  # noqa: E731
    assert ok(0.0, -1.0, MAX_GRADIENT) and ok()
    assert not ok(1.0, jnp.nan) and not ok(jnp.inf) and not ok(-jnp.inf) and not ok(-2 * MAX_GRADIENT)
    assert bool(gradients_bounded({}))


def test_a_non_finite_loss_is_skipped_where_the_loss_is_a_feature():
    for name in ("normed_fc", "small_fc", "hyper"):
        arch = architectures.get(name)
        tx = lopt.as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(0)), 100)
        p = {"b": jnp.ones(3)}
        u, s = jax.jit(tx.update)({"b": jnp.full(3, 0.1)}, tx.init(p), p, value=jnp.inf)
        assert int(s.skipped) == 1 and bool(jnp.all(u["b"] == 0)), name


def test_the_issue_repro_with_the_shipped_default():
    tx = lopt.pretrained("default").as_optax(100)
    tx = optax.GradientTransformationExtraArgs(tx.init, jax.jit(tx.update))
    p = {"b": jnp.ones(3)}
    s = tx.init(p)
    u, s = tx.update({"b": jnp.array([1e20, 0.1, 0.1])}, s, p)
    p = optax.apply_updates(p, u)
    for _ in range(STEPS):
        u, s = tx.update({"b": jnp.full(3, 0.1)}, s, p)
        p = optax.apply_updates(p, u)
    assert int(s.skipped) == 1
    assert p["b"][0] == p["b"][1] != 1.0  # element 0 trains like the others


def _tx():
    return lopt.pretrained("default").as_optax(100)


API_CASES = [
    ("num_steps_overflow", lambda: lopt.pretrained("default").as_optax(2**40), r"num_steps must be between 1 and 2147483647"),
    ("num_steps_zero", lambda: _tx().init({"b": jnp.ones(3)}) and lopt.pretrained("default").as_optax(0), r"num_steps"),
    ("grads_broadcast_1_vs_3", lambda: _tx().update({"b": jnp.ones(1)}, _tx().init({"b": jnp.ones(3)}), {"b": jnp.ones(3)}),
     r"grads leaf \['b'\] has shape \(1,\) but the parameter has shape \(3,\)"),
    ("grads_broadcast_3_vs_scalar", lambda: _tx().update({"b": jnp.ones(3)}, _tx().init({"b": jnp.ones(())}), {"b": jnp.ones(())}),
     r"grads leaf \['b'\] has shape \(3,\)"),
    ("params_vs_state", lambda: _tx().update({"b": jnp.ones(1)}, _tx().init({"b": jnp.ones(3)}), {"b": jnp.ones(1)}),
     r"params shapes do not match the ones the optimizer state was built for"),
    ("scalar_state_vector_params", lambda: _tx().update({"b": jnp.ones(3)}, _tx().init({"b": jnp.ones(())}), {"b": jnp.ones(3)}),
     r"params shapes do not match"),
    ("structure", lambda: _tx().update({"c": jnp.ones(3)}, _tx().init({"b": jnp.ones(3)}), {"c": jnp.ones(3)}),
     r"pytree does not match"),
    ("int_params", lambda: _tx().update({"b": jnp.ones(3, jnp.int32)}, _tx().init({"b": jnp.ones(3, jnp.int32)}),
                                        {"b": jnp.ones(3, jnp.int32)}), r"params leaf \['b'\] has dtype int32"),
    ("complex_params", lambda: _tx().update({"b": jnp.ones(3, jnp.complex64)}, _tx().init({"b": jnp.ones(3, jnp.complex64)}),
                                            {"b": jnp.ones(3, jnp.complex64)}), r"dtype complex64"),
    ("no_params", lambda: _tx().update({"b": jnp.ones(3)}, _tx().init({"b": jnp.ones(3)})), r"needs the parameters"),
    ("hparam_string", lambda: architectures.get("small_fc", step_scale="1e3"), r"step_scale: expected a finite number"),
    ("hparam_nan", lambda: architectures.get("learned_adam", beta1=float("nan")), r"beta1: expected a finite number"),
    ("hparam_list_of_strings", lambda: architectures.get("small_fc", timescales=["a"]), r"timescales: expected a list"),
    ("hparam_bool", lambda: architectures.get("small_fc", hidden=True), r"hidden: expected an integer"),
]


@pytest.mark.parametrize("name, call, pattern", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_with_one_line(name, call, pattern):
    with pytest.raises(lopt.OptimizerError, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


def test_loading_a_directory_says_so(tmp_path):
    with pytest.raises(lopt.OptimizerError, match="is a directory, not an optimizer file"):
        lopt.load(tmp_path)


# ---------------------------------------------------------------- numbers in configs
@pytest.mark.parametrize("text, value", [
    ("3e-4", 3e-4), ("1e-3", 1e-3), ("1E3", 1000.0), ("+2e2", 200.0), ("-1.5e-2", -0.015), (".5e1", 5.0),
    ("1.0e3", 1000.0), ("5.", 5.0), ("0.001", 0.001), ("1_000.5", 1000.5), (".inf", math.inf),
])
def test_every_usual_float_literal_is_a_float(text, value):
    assert yaml_load(f"x: {text}")["x"] == value
    assert yaml_load(text) == value


@pytest.mark.parametrize("text", ["1e", "e3", "1e3x", "abc", "3e-4.5", "0x1p3", "1,5"])
def test_non_numbers_stay_strings_and_are_refused_for_numeric_fields(text):
    assert isinstance(yaml_load(text), str)
    with pytest.raises(ConfigError, match="meta_opt.learning_rate: expected a number"):
        load_config(None, [f"meta_opt.learning_rate={text}"])


def test_float_literals_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("meta_opt: {learning_rate: 1e-3}\nnum_outer_steps: 1e3\nestimator: {std: 2E-2}\n")
    c = load_config(path, ["meta_opt.final_lr_fraction=5e-2", "optimizer.hparams.step_scale=1e-4"])
    assert (c.meta_opt.learning_rate, c.num_outer_steps, c.estimator.std) == (1e-3, 1000, 0.02)
    assert c.meta_opt.final_lr_fraction == 0.05 and c.optimizer.hparams == {"step_scale": 1e-4}
    assert isinstance(c.num_outer_steps, int)


def test_infinite_grad_clip_means_no_clipping_and_stays_json():
    c = load_config(None, ["meta_opt.grad_clip=.inf"])
    assert c.meta_opt.grad_clip == 0.0  # 0 = off, the same meaning, and strict JSON
    with pytest.raises(ConfigError, match="meta_opt.grad_clip: must be >= 0"):
        load_config(None, ["meta_opt.grad_clip=-1"])


def test_json_safe_makes_strict_json():
    value = {"a": float("inf"), "b": [float("-inf"), float("nan")], "c": np.float32(1.5), 3: (1, 2), "d": object()}
    text = json.dumps(json_safe(value), allow_nan=False)
    back = json.loads(text)
    assert back["a"] == "inf" and back["b"] == ["-inf", "nan"] and back["c"] == 1.5 and back["3"] == [1, 2]
    assert float(back["a"]) == math.inf
