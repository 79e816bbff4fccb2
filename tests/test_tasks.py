"""Every registered task and family member: init, finite loss and gradients, jit, vmap, determinism."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lopt.tasks import datasets, registry
from lopt.tasks.base import TaskError
from lopt.tasks.datasets import get_spec


def _structure(task):
    """Tasks equal up to their display name share one check (and one compile)."""
    if any(f.name == "task_name" for f in dataclasses.fields(task)):
        return dataclasses.replace(task, task_name="")
    return task


def _dedupe(tasks):
    seen, out = set(), []
    for task in tasks:
        key = _structure(task)
        if key not in seen:
            seen.add(key)
            out.append(task)
    return out


def _needs_tfds(task) -> bool:
    return hasattr(task, "dataset") and get_spec(task.dataset).source == "tfds"


REGISTERED = [registry.get_task(n) for n in registry.task_names()]
FAMILY_MEMBERS = [t for n in registry.family_names() for t in registry.get_family(n).tasks]
# Compiling costs seconds per task on a 2-core CPU, so the compiled (numeric) check runs on one
# representative of each model class and data path (generated, digits 8x8 and 16x16, text);
# every other task and family member is checked by tracing the very same program
# with jax.eval_shape (init, batch sampling, loss, grad and vmap over hparams; no compile). They
# share the code of a representative and differ only in static sizes, data or activation. tfds
# tasks load their data under tfds.testing.mock_data (the loader itself: tests/test_datasets.py).
COMPILED = [registry.get_task(n) for n in ("quadratic", "linear_regression", "mlp_digits",
                                           "cnn_digits16", "char_lm_small")]
TRACED = [t for t in _dedupe(COMPILED + REGISTERED + FAMILY_MEMBERS)[len(COMPILED):]]


def _check(task, data, key):
    """Two vmapped members of the task's family -- the default task and a sampled one."""
    k_hp, k_run = jax.random.split(key)
    hps = jax.tree.map(lambda a, b: jnp.stack([a, b]), task.default_hparams(), task.sample_hparams(k_hp))

    def one(k, hp):
        k_init, k_batch, k_valid = jax.random.split(k, 3)
        params = task.init(k_init, hp)
        batch = task.sample_batch(data, k_batch, "train", hp)
        (loss, aux), grads = jax.value_and_grad(task.loss_and_aux, has_aux=True)(params, batch, hp)
        valid_loss = task.loss(params, task.sample_batch(data, k_valid, "valid", hp), hp)
        return loss, valid_loss, grads, aux, params

    return jax.vmap(one)(jax.random.split(k_run, 2), hps)


_CHECK = jax.jit(_check, static_argnums=0)


@pytest.fixture(scope="module")
def mock_env(tmp_path_factory):
    """tfds mock data plus a throw-away dataset cache, for tasks whose data is a tfds set."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LOPT_CACHE", str(tmp_path_factory.mktemp("lopt_cache")))
    datasets.clear_cache()
    with tfds.testing.mock_data(num_examples=16):
        yield
    datasets.clear_cache()
    mp.undo()


def _data_for(task, request):
    if _needs_tfds(task):
        request.getfixturevalue("mock_env")
        task = dataclasses.replace(task, max_examples=16)
    return task, task.load_data()


@pytest.mark.parametrize("task", COMPILED, ids=lambda t: t.name)
def test_task_runs_finite_and_deterministic(task, request):
    task, data = _data_for(task, request)
    key = jax.random.PRNGKey(3)
    loss, valid_loss, grads, aux, params = _CHECK(task, data, key)
    assert loss.shape == (2,) and valid_loss.shape == (2,)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(valid_loss))
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    assert sum(int(p[0].size) for p in jax.tree.leaves(params)) == task.num_params()
    again = _CHECK(task, data, key)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(again[0]))  # deterministic per key
    other = _CHECK(task, data, jax.random.PRNGKey(4))  # another key: other init (losses may tie, e.g. zero read-outs)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other[4])))
    assert 0.01 < float(task.loss_scale) < 1e6
    if "accuracy" in aux:
        assert np.all((aux["accuracy"] >= 0) & (aux["accuracy"] <= 1))


@pytest.mark.parametrize("task", TRACED, ids=lambda t: t.name)
def test_task_traces_under_vmap_and_grad(task, request):
    task, data = _data_for(task, request)
    loss, valid_loss, grads, _, params = jax.eval_shape(functools.partial(_check, task), data, jax.random.PRNGKey(0))
    assert loss.shape == (2,) and loss.dtype == jnp.float32 and valid_loss.shape == (2,)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert sum(int(np.prod(p.shape[1:])) for p in jax.tree.leaves(params)) == task.num_params() > 0
    hp = task.sample_hparams(jax.random.PRNGKey(0))
    assert jax.tree.structure(hp) == jax.tree.structure(task.default_hparams())


def test_mlp_digits_trains_with_sgd_inside_scan():
    """Batches sampled inside lax.scan, gradients that really descend: 200 SGD steps halve the loss."""
    task = registry.get_task("mlp_digits")
    data = task.load_data()

    @jax.jit
    def train(key):
        k_init, k_steps, k_eval = jax.random.split(key, 3)
        params = task.init(k_init)

        def step(p, k):
            loss, g = jax.value_and_grad(task.loss)(p, task.sample_batch(data, k))
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), loss

        params, losses = jax.lax.scan(step, params, jax.random.split(k_steps, 200))
        return losses, task.loss_and_aux(params, task.sample_batch(data, k_eval, "valid"))

    losses, (valid_loss, aux) = train(jax.random.PRNGKey(0))
    assert float(losses[-10:].mean()) < 0.5 * float(losses[:10].mean())
    assert float(valid_loss) < 0.5 * task.loss_scale and float(aux["accuracy"]) > 0.8


def test_reference_mlp_digits():
    task = registry.get_task("mlp_digits")
    assert task.name == "mlp_digits"
    assert task.num_params() == 2410
    assert task.batch_size == 128 and task.hidden == (32,) and task.activation == "relu"
    assert task.input_shape == (8, 8, 1) and task.loss_scale == pytest.approx(np.log(10))


def test_registry_size_and_unknown_names():
    names = registry.task_names() + registry.family_names()
    assert len(names) >= 12
    for required in ("quadratic", "quadratic_family", "linear_regression", "logistic_regression_digits",
                     "mlp_digits", "mlp_family", "cnn_digits", "char_lm", "char_lm_family",
                     "digits_mlp_family", "digits_cnn_family"):
        assert required in names
    with pytest.raises(TaskError, match="valid tasks: .*mlp_digits"):
        registry.get_task("mlp_digitz")
    with pytest.raises(TaskError, match="valid families: .*mlp_family"):
        registry.get_family("nope")


def test_families_are_well_formed():
    for name in registry.family_names():
        family = registry.get_family(name)
        assert family.name == name and family.description
        assert sum(family.normalized_weights()) == pytest.approx(1.0)
        assert len(set(family.tasks)) == len(family.tasks), f"{name} repeats a variant"


def test_bad_structure_is_a_clear_error():
    from lopt.tasks.mlp import MLPClassifier

    with pytest.raises(TaskError, match="valid activations"):
        MLPClassifier(activation="swishy")
    with pytest.raises(TaskError, match="valid datasets: .*digits"):
        MLPClassifier(dataset="imagenet")
    with pytest.raises(TaskError, match="valid splits"):
        registry.get_task("quadratic").sample_batch({}, jax.random.PRNGKey(0), "test")


def test_linear_regression_loss_floor_is_the_least_squares_minimum():
    """``loss_floor`` is the task's own training loss at the exact minimizer, and no parameters beat it."""
    task = registry.get_task("linear_regression_ill")
    train = task.load_data()["train"]
    x, y = np.asarray(train["x"], np.float64), np.asarray(train["y"], np.float64)
    coef = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    best = {"w": jnp.asarray(coef[:-1], jnp.float32), "b": jnp.asarray(coef[-1], jnp.float32)}
    floor = task.loss_floor
    assert 0.003 < floor < 0.005  # the targets' noise, well above 0
    assert float(task.loss_and_aux(best, train)[0]) == pytest.approx(floor, rel=1e-4)
    for seed in range(3):  # any other parameters, on the full training set, are worse
        noise = jax.random.normal(jax.random.key(seed), (task.dim,)) * 1e-2
        other = {"w": best["w"] + noise, "b": best["b"]}
        assert float(task.loss_and_aux(other, train)[0]) > floor
    assert registry.get_task("mlp_digits").loss_floor == 0.0  # the default: nothing better known than 0
