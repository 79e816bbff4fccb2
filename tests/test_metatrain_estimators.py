"""Estimator correctness on a quadratic whose true meta-gradient jax.grad can compute.

The "learned optimizer" here is SGD with one meta-parameter, its log learning
rate; the task is a deterministic quadratic (fixed init, no noise). Then the
meta-loss of any truncation is a smooth function of log_lr that the tests
unroll directly and differentiate with ``jax.grad``. Many tasks in one group
play the role of many seeds: the estimator's average over tasks is the
average over independent perturbations.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.base import LearnedOptimizer
from lopt.metatrain.estimators import PES, Backprop, FullES, TruncatedES
from lopt.metatrain.unroll import EpisodeSchedule, Group, Unroller
from lopt.tasks.quadratic import Quadratic

K = 5  # truncation length
EPISODE = 8  # not a multiple of K: resets happen inside truncations
NUM_TASKS = 4096
STD = 0.01
THETA = {"log_lr": jnp.asarray(-3.0, jnp.float32)}  # lr ~ 0.05: later truncations depend strongly on it


@dataclasses.dataclass(frozen=True)
class LearnedSGD(LearnedOptimizer):
    """update = -exp(log_lr) * grad: the smallest optimizer with a meta-gradient."""

    arch = "learned_sgd_test"

    def init_meta_params(self, key):
        return dict(THETA)

    def init_inner(self, meta_params, params):
        return {}

    def compute_update(self, meta_params, state, grads, params, loss):
        lr = jnp.exp(meta_params["log_lr"])
        return jax.tree.map(lambda g: -lr * g, grads), state.inner


@dataclasses.dataclass(frozen=True)
class FixedQuadratic(Quadratic):
    """Deterministic start x0 = (1, ..., 1) so the true meta-gradient is one number."""

    def init(self, key, hparams=None):
        return {"x": jnp.ones((self.dim,), jnp.float32)}


TASK = FixedQuadratic(dim=4, condition=10.0)
ARCH = LearnedSGD()


def make_unroller(
    num_tasks=NUM_TASKS, episode=EPISODE, truncation=K, branches=2, loss_transform="identity", progress_weight=0.0
):
    return Unroller(
        loss_transform=loss_transform,
        progress_weight=progress_weight,
        arch=ARCH,
        groups=(Group(TASK, num_tasks, sample_hparams=False),),
        truncation_length=truncation,
        schedule=EpisodeSchedule("constant", episode),
        num_branches=branches,
        stagger=False,
    )


def true_losses(theta, num_steps):
    """Normalized per-step losses (before each update) of one episode with log_lr=theta."""
    lam = TASK.eigenvalues()
    lr = jnp.exp(theta)

    def step(x, _):
        loss = 0.5 * jnp.sum(lam * x**2)
        return x - lr * lam * x, loss / TASK.loss_scale

    _, losses = jax.lax.scan(step, jnp.ones((TASK.dim,)), None, length=num_steps)
    return losses


def episode_objective(theta):
    """Sum of the truncation meta-losses (mean over K steps) of one episode."""
    return jnp.sum(true_losses(theta, EPISODE)) / K


def first_truncation_objective(theta):
    return jnp.mean(true_losses(theta, K))


DATA = (TASK.load_data(),)


@pytest.fixture(scope="module")
def es_runs():
    """Per-truncation estimates of TruncatedES and PES over 8 truncations (= 5 episodes)."""
    out = {}
    for cls in (TruncatedES, PES):
        est = cls(make_unroller(), std=STD)
        step = jax.jit(est.step)
        state = est.init(THETA, jax.random.PRNGKey(0))
        grads = []
        for i in range(8):
            g, state, metrics = step(THETA, state, jax.random.PRNGKey(100 + i), DATA)
            grads.append(float(g["log_lr"]))
        out[cls.__name__] = (np.asarray(grads), metrics)
    return out


def tolerance(true_grad):
    # antithetic ES on a smooth 1-d function: per-task estimate ~ (eps/std)^2 * g, variance 2 g^2
    return 5.0 * np.sqrt(2.0 / NUM_TASKS) * abs(true_grad)


def truncated_target(theta, num_truncations=8):
    """What truncated ES estimates: per truncation, the gradient with its start state held fixed."""
    lam, x0 = TASK.eigenvalues(), jnp.ones((TASK.dim,))

    def truncation(th, x, start):
        losses = []
        for t in range(K):
            if start + t > 0 and (start + t) % EPISODE == 0:
                x = x0
            losses.append(0.5 * jnp.sum(lam * x**2) / TASK.loss_scale)
            x = x - jnp.exp(th) * lam * x
        return sum(losses) / K, x

    total, x = 0.0, x0
    for i in range(num_truncations):
        total += jax.grad(lambda th: truncation(th, x, i * K)[0])(theta)
        x = truncation(theta, x, i * K)[1]
    return float(total)


def test_truncated_es_is_unbiased_on_one_truncation(es_runs):
    grads, _ = es_runs["TruncatedES"]
    g_true = float(jax.grad(first_truncation_objective)(THETA["log_lr"]))
    assert abs(grads[0] - g_true) < tolerance(g_true), (grads[0], g_true)


def test_pes_is_unbiased_across_truncations_and_resets(es_runs):
    grads, _ = es_runs["PES"]
    # 8 truncations of 5 steps = 5 episodes of 8 steps, with resets inside truncations
    g_true = 5 * float(jax.grad(episode_objective)(THETA["log_lr"]))
    assert abs(grads.sum() - g_true) < 3 * tolerance(g_true), (grads.sum(), g_true)


def test_truncated_es_is_biased_where_pes_is_not(es_runs):
    g_true = 5 * float(jax.grad(episode_objective)(THETA["log_lr"]))
    biased = truncated_target(THETA["log_lr"])
    assert abs(biased - g_true) > 0.3 * abs(g_true)  # the bias is large on this problem...
    tes = es_runs["TruncatedES"][0].sum()
    assert abs(tes - biased) < 3 * tolerance(biased), (tes, biased)  # ...and truncated ES shows it
    assert abs(tes - g_true) > 5 * abs(es_runs["PES"][0].sum() - g_true)


def test_full_es_is_unbiased_and_sign_es_points_the_same_way():
    g_true = float(jax.grad(episode_objective)(THETA["log_lr"])) * K / EPISODE  # mean over the episode
    u = make_unroller(episode=EPISODE, truncation=EPISODE)
    for sign in (False, True):
        est = FullES(u, std=STD, sign=sign)
        g, _, _ = jax.jit(est.step)(THETA, est.init(THETA, None), jax.random.PRNGKey(3), DATA)
        g = float(g["log_lr"])
        if sign:
            assert np.sign(g) == np.sign(g_true) and abs(g) > 0.5
        else:
            assert abs(g - g_true) < tolerance(g_true), (g, g_true)


def test_full_es_with_sampled_episodes_estimates_each_tasks_own_whole_episode():
    """Each task's meta-loss is the mean over its own episode; the cut episode after it does not count."""
    longest, theta = 24, {"log_lr": jnp.asarray(-2.0, jnp.float32)}  # here the objectives below differ most
    u = dataclasses.replace(
        make_unroller(truncation=longest), schedule=EpisodeSchedule("log_uniform", min_length=2, max_length=longest)
    )
    est = FullES(u, std=STD, episodes="sampled")
    key = jax.random.PRNGKey(5)
    g = float(jax.jit(est.step)(theta, est.init(theta, None), key, DATA)[0]["log_lr"])
    lengths = np.asarray(u.init_state(theta, jax.random.split(key, 3)[0])[0].slots.length)
    assert len(set(lengths.tolist())) >= 10 and lengths.max() <= longest  # the lengths really vary

    def own_episode(t, n):
        return jnp.mean(true_losses(t, n))

    def whole_window(t, n):  # counting the cut second episode too
        return (jnp.sum(true_losses(t, n)) + jnp.sum(true_losses(t, longest - n))) / longest

    def length_weighted(t, n):  # the first episode's sum over the window, not its mean
        return jnp.sum(true_losses(t, n)) / longest

    counts = {int(n): int(c) for n, c in zip(*np.unique(lengths, return_counts=True))}

    def mean_grad(f):
        return sum(c * float(jax.grad(f)(theta["log_lr"], n)) for n, c in counts.items()) / len(lengths)

    g_true = mean_grad(own_episode)
    assert abs(g - g_true) < tolerance(g_true), (g, g_true)
    for wrong in (whole_window, length_weighted):  # the test can tell these objectives apart
        assert abs(mean_grad(wrong) - g_true) > 3 * tolerance(g_true), wrong.__name__
    with pytest.raises(ValueError, match="episodes"):
        FullES(u, std=STD, episodes="all")
    with pytest.raises(ValueError, match="constant"):
        FullES(u, std=STD)  # 'longest' needs a constant schedule


def test_backprop_matches_jax_grad_of_the_unroll():
    est = Backprop(make_unroller(num_tasks=2, branches=1))
    step = jax.jit(est.step)
    state = est.init(THETA, jax.random.PRNGKey(0))
    g1, state, m1 = step(THETA, state, jax.random.PRNGKey(1), DATA)
    g2, state, _ = step(THETA, state, jax.random.PRNGKey(2), DATA)
    np.testing.assert_allclose(float(g1["log_lr"]), float(jax.grad(first_truncation_objective)(THETA["log_lr"])), rtol=1e-4)
    np.testing.assert_allclose(float(m1["meta_loss"]), float(first_truncation_objective(THETA["log_lr"])), rtol=1e-5)

    # second truncation: steps 5..7 of episode 1 with the state not differentiated, then steps 0..1 of episode 2
    def second(theta):
        lam, x0 = TASK.eigenvalues(), jnp.ones((TASK.dim,))
        frozen_lr = jax.lax.stop_gradient(jnp.exp(theta))
        x = x0 * (1 - frozen_lr * lam) ** K
        losses = []
        lr = jnp.exp(theta)
        for t in range(K):
            if t == EPISODE - K:
                x = x0
            losses.append(0.5 * jnp.sum(lam * x**2) / TASK.loss_scale)
            x = x - lr * lam * x
        return sum(losses) / K

    np.testing.assert_allclose(float(g2["log_lr"]), float(jax.grad(second)(THETA["log_lr"])), rtol=1e-4)


def test_backprop_of_the_log_meta_loss_matches_jax_grad():
    """``loss_transform: log`` averages log(loss + floor) over the truncation."""
    from lopt.metatrain.unroll import LOG_FLOOR

    def log_objective(theta):
        return jnp.mean(jnp.log(true_losses(theta, K) + LOG_FLOOR))

    est = Backprop(make_unroller(num_tasks=2, branches=1, loss_transform="log"))
    g, _, m = jax.jit(est.step)(THETA, est.init(THETA, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), DATA)
    np.testing.assert_allclose(float(g["log_lr"]), float(jax.grad(log_objective)(THETA["log_lr"])), rtol=1e-4)
    np.testing.assert_allclose(float(m["meta_loss"]), float(log_objective(THETA["log_lr"])), rtol=1e-5)
    assert float(m["meta_loss"]) < 0.0  # log of normalized losses below 1: not the identity's value


def test_backprop_of_the_progress_weighted_meta_loss_matches_jax_grad():
    """``progress_weight: a`` weighs step t of an episode of length E by (1 + a t / E) / (1 + a / 2)."""
    a = 3.0

    def weighted_objective(theta):
        t = jnp.arange(EPISODE, dtype=jnp.float32)
        weights = (1.0 + a * t / EPISODE) / (1.0 + 0.5 * a)
        return jnp.mean(weights * true_losses(theta, EPISODE))

    # One truncation is one whole episode, so the meta-loss is the weighted episode mean.
    est = Backprop(make_unroller(num_tasks=2, truncation=EPISODE, branches=1, progress_weight=a))
    g, _, m = jax.jit(est.step)(THETA, est.init(THETA, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), DATA)
    np.testing.assert_allclose(float(m["meta_loss"]), float(weighted_objective(THETA["log_lr"])), rtol=1e-5)
    np.testing.assert_allclose(float(g["log_lr"]), float(jax.grad(weighted_objective)(THETA["log_lr"])), rtol=1e-4)
    plain = Backprop(make_unroller(num_tasks=2, truncation=EPISODE, branches=1))
    _, _, m_plain = jax.jit(plain.step)(THETA, plain.init(THETA, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), DATA)
    assert abs(float(m_plain["meta_loss"]) - float(m["meta_loss"])) > 1e-3  # the weights changed the objective


def test_nonfinite_losses_are_masked_and_counted():
    est = PES(make_unroller(num_tasks=4, truncation=10, episode=20), std=STD, nonfinite="mask")
    theta = {"log_lr": jnp.asarray(10.0)}  # lr ~ 2e4: the quadratic overflows within a few steps
    g, state, metrics = jax.jit(est.step)(theta, est.init(theta, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), DATA)
    assert np.isfinite(float(g["log_lr"])) and float(g["log_lr"]) == 0.0
    assert float(metrics["masked_tasks"]) == 4.0
    assert float(metrics["nonfinite_frac"]) > 0.0
    assert np.isfinite(float(metrics["meta_loss"]))


def test_mixture_with_augmentation_stagger_and_validation_meta_loss():
    """Two vmapped groups of different shapes in one jitted step, every knob on."""
    from lopt.metatrain.unroll import Augmentation

    u = Unroller(
        arch=ARCH,
        groups=(Group(Quadratic(dim=3), 3), Group(Quadratic(dim=5), 2)),
        truncation_length=K,
        schedule=EpisodeSchedule("log_uniform", min_length=2, max_length=6),
        meta_loss="valid",
        stagger=True,
        augment=Augmentation(param_scale_range=(0.5, 2.0), loss_scale_range=(0.1, 10.0)),
    )
    est = PES(u, std=STD)
    data = (Quadratic(dim=3).load_data(), Quadratic(dim=5).load_data())
    state = est.init(THETA, jax.random.PRNGKey(0))
    g, new_state, metrics = jax.jit(est.step)(THETA, state, jax.random.PRNGKey(1), data)
    assert np.isfinite(float(g["log_lr"])) and float(g["log_lr"]) != 0.0
    assert float(metrics["episodes_done"]) > 0  # episodes of 2-6 steps end inside a truncation of 5
    for gs in new_state.groups:
        scales = np.asarray(gs.slots.param_scale)
        assert np.all((scales >= 0.5) & (scales <= 2.0)) and len(set(scales.tolist())) == len(scales)
        np.testing.assert_array_equal(gs.branches.params["x"].shape[:2], (len(scales), 2))
    # staggered starts: first episodes are cut to different lengths
    lengths = np.concatenate([np.asarray(gs.slots.length) for gs in state.groups])
    assert len(set(lengths.tolist())) > 1
