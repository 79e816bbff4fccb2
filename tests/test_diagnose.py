"""``lopt diagnose`` finds the known answers (issue 17, section 3) on tiny tasks.

* the full-episode backprop gradient equals finite differences of the objective;
* PES's mean converges to it (cosine -> 1 as samples grow) while truncated ES's
  does not when an episode spans many truncations;
* truncated backprop's per-sample variance grows with the unroll length on a
  task whose inner dynamics are chaotic.

A test-only learned optimizer (SGD with a learned log learning rate and a
learned quadratic schedule) keeps the meta-parameters at three numbers, so the
answers are clear and compiles are small; compiled functions are shared
through module-scoped fixtures.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.base import LearnedOptimizer, OptState
from lopt.metatrain import diagnose_core as core
from lopt.metatrain import diagnose_reference as dref
from lopt.metatrain import diagnose_stats as stats
from lopt.metatrain.unroll import EpisodeSchedule, Group, Unroller
from lopt.tasks.base import Task
from lopt.tasks.quadratic import Quadratic


@dataclasses.dataclass(frozen=True)
class ScheduledSGD(LearnedOptimizer):
    """SGD at lr = exp(log_lr + k1 f + k2 f^2), f the fraction of the episode done (test only)."""

    arch: ClassVar[str] = "test_scheduled_sgd"
    learning_rate: float = 0.02

    def init_meta_params(self, key):
        del key
        return {"log_lr": jnp.asarray(math.log(self.learning_rate), jnp.float32), "decay": jnp.zeros((2,), jnp.float32)}

    def init_inner(self, meta_params, params):
        return {}

    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        f = state.step.astype(jnp.float32) / jnp.maximum(state.num_steps, 1).astype(jnp.float32)
        k1, k2 = meta_params["decay"][0], meta_params["decay"][1]
        lr = jnp.exp(meta_params["log_lr"] + k1 * f + k2 * f * f)
        return jax.tree.map(lambda g: -lr * g, grads), {}


@dataclasses.dataclass(frozen=True)
class SineTask(Task):
    """sum(x^2 / 2 - 3 cos x): at lr 1 gradient descent is the chaotic map x -> -3 sin x."""

    dim: int = 4

    @property
    def name(self) -> str:
        return "test_sine"

    @property
    def loss_scale(self) -> float:
        return 10.0

    def init(self, key, hparams=None):
        return {"x": 2.0 * jax.random.normal(key, (self.dim,), jnp.float32)}

    def loss_and_aux(self, params, batch, hparams=None):
        x = params["x"]
        return jnp.sum(0.5 * x * x - 3.0 * jnp.cos(x)), {}

    def load_data(self):
        return {"train": {}, "valid": {}}

    def sample_batch(self, data, key, split="train", hparams=None):
        return {}


QUAD = Quadratic(dim=4, condition=10.0, noise=0.0, init_scale=1.0)
# With noisy gradients a short horizon prefers a smaller learning rate than a long one
# (short-horizon bias): at lr 0.02 the full-episode gradient and the truncated one disagree.
NOISY_QUAD = Quadratic(dim=4, condition=10.0, noise=1.0, init_scale=1.0)


def quad_unroller(truncation=4, length=32, schedule=None, num_tasks=8, task=QUAD):
    sched = schedule or EpisodeSchedule("constant", length)
    return Unroller(
        arch=ScheduledSGD(),
        groups=(Group(task, num_tasks, sample_hparams=False),),
        truncation_length=truncation,
        schedule=sched,
        loss_transform="identity",
    )


def data_for(u):
    return tuple(g.task.load_data() for g in u.groups)


# ---------------------------------------------------------------- full-episode gradient
def test_full_episode_gradient_matches_finite_differences():
    # variable episode lengths: the objective must stop counting each task at its own end
    u = quad_unroller(schedule=EpisodeSchedule("log_uniform", min_length=6, max_length=24), num_tasks=3)
    mp = u.arch.init_meta_params(None)
    data, key = data_for(u), jax.random.PRNGKey(1)
    obj = core.EpisodeObjective(u, chunk=5)
    value, grad = jax.jit(jax.value_and_grad(obj))(mp, key, data)
    # chunking (and checkpointing) changes nothing on a noise-free task
    whole = core.EpisodeObjective(u, chunk=24)
    np.testing.assert_allclose(float(jax.jit(whole)(mp, key, data)), float(value), rtol=1e-5)
    f = jax.jit(obj)
    flat, unravel = jax.flatten_util.ravel_pytree(mp)
    h = 1e-2
    fd = []
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(h)
        fd.append((float(f(unravel(flat + e), key, data)) - float(f(unravel(flat - e), key, data))) / (2 * h))
    got = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
    np.testing.assert_allclose(got, np.asarray(fd), rtol=2e-2, atol=1e-4 * np.abs(fd).max())
    assert np.abs(got).max() > 0


def test_expected_episode_length_log_uniform():
    s = EpisodeSchedule("log_uniform", min_length=10, max_length=200)
    draws = np.asarray(jax.vmap(s.sample)(jax.random.split(jax.random.PRNGKey(0), 20000)))
    assert core.expected_episode_length(s) == pytest.approx(draws.mean(), rel=0.02)
    assert core.expected_episode_length(EpisodeSchedule("constant", 7)) == 7.0


# ---------------------------------------------------------------- PES unbiased, truncated ES biased
@pytest.fixture(scope="module")
def quad_samples():
    # 16 truncations per episode; many cheap tasks per estimate so that both means are resolved
    u = quad_unroller(truncation=2, length=32, task=NOISY_QUAD, num_tasks=256)
    mp = u.arch.init_meta_params(None)
    data, key = data_for(u), jax.random.PRNGKey(0)
    ref = dref.reference_backprop(core.EpisodeObjective(u), mp, data, key, num_samples=8)
    settings = core.EstimatorSettings(std=0.01, episode_length=32)
    out = {"ref": ref.grads[0]}
    for kind in ("pes", "es"):
        est = core.make_estimator(kind, u, settings)
        out[kind] = core.sample_estimator(est, mp, data, jax.random.fold_in(key, 7), num_samples=128, chains=4).grads
    return out


def test_pes_mean_converges_to_full_episode_gradient(quad_samples):
    res = stats.compare(quad_samples["pes"], quad_samples["ref"], target=0.9)
    assert res["cosine"] > 0.97, res
    curve = res["curve_empirical"]
    assert curve[-1] > curve[0] and curve[-1] > 0.95, res
    assert math.isfinite(res["samples_to_target"])


def test_truncated_es_stays_biased(quad_samples):
    pes = stats.compare(quad_samples["pes"], quad_samples["ref"], target=0.9)
    es = stats.compare(quad_samples["es"], quad_samples["ref"], target=0.9)
    # more samples do not help: its mean points elsewhere
    assert es["cosine_ci90"][1] < 0.9, es
    assert es["curve_empirical"][-1] < 0.9, es
    assert es["rel_error"] > 3 * pes["rel_error"], (es, pes)


def test_backprop_forward_burn_in_leaves_the_states_its_steps_would():
    """The gradient-free burn-in of backprop (a shortcut for speed) must not change what is measured."""
    u = dataclasses.replace(quad_unroller(truncation=4, length=12, num_tasks=3, task=NOISY_QUAD), num_branches=1)
    est = core.make_estimator("backprop", u, core.EstimatorSettings())
    mp, data = u.arch.init_meta_params(None), data_for(u)
    keys = jax.random.split(jax.random.PRNGKey(3), 5 * 2).reshape(5, 2, -1)
    init = lambda: core._init_chains(est, mp, jax.random.split(jax.random.PRNGKey(4), 2))
    # backprop's chains start from the first branch of the shared two-branch init: equal to its own init
    own = jax.vmap(lambda k: est.init(mp, k))(jax.random.split(jax.random.PRNGKey(4), 2))
    for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(init())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stepped, advanced = init(), init().groups
    for k in keys:
        stepped = core._step_chains(est, mp, stepped, k, data)[1]
        advanced = core._advance_chains(est.unroller, mp, advanced, k, data)
    for a, b in zip(jax.tree.leaves(stepped.groups), jax.tree.leaves(advanced)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- chaotic unrolls
@pytest.fixture(scope="module")
def sine_backprop():
    """Truncated backprop on SineTask for several unroll lengths; meta-params choose the lr."""
    ests = {}
    for k in (2, 8, 24):
        u = Unroller(
            arch=ScheduledSGD(),
            groups=(Group(SineTask(), 8),),
            truncation_length=k,
            schedule=EpisodeSchedule("constant", 48),
            num_branches=1,
            loss_transform="identity",
        )
        ests[k] = core.make_estimator("backprop", u, core.EstimatorSettings())

    def variance(k, lr):
        mp = dict(ScheduledSGD().init_meta_params(None), log_lr=jnp.asarray(math.log(lr), jnp.float32))
        est = ests[k]
        s = core.sample_estimator(est, mp, data_for(est.unroller), jax.random.PRNGKey(k), num_samples=16, burn_in=0)
        return stats.per_sample_variance(s.grads)

    return variance


def test_backprop_variance_grows_with_unroll_length_on_chaotic_task(sine_backprop):
    variances = [sine_backprop(k, 1.0) for k in (2, 8, 24)]  # lr 1: x -> -3 sin x, chaotic
    assert variances[0] < variances[1] < variances[2], variances
    # exponential, not polynomial: 16 more steps multiply it by far more than (24 / 8)^4
    assert variances[2] > 1e3 * variances[1], variances


def test_backprop_variance_stays_bounded_when_the_dynamics_contract(sine_backprop):
    """Control: the growth above comes from chaos, not from longer sums (same task, lr 0.05)."""
    variances = [sine_backprop(k, 0.05) for k in (8, 24)]
    assert variances[1] < 10 * variances[0], variances


# ---------------------------------------------------------------- statistics
def test_samples_to_cosine_formula():
    # unbiased estimator: mean = truth of norm 1, variance 9 -> cos(n) = 1/sqrt(1 + 9/n); 0.5 at n = 3
    assert stats.samples_to_cosine(1.0, 1.0, 9.0, 0.5) == pytest.approx(3.0)
    # a biased mean whose bias cosine is below the target never reaches it
    assert stats.samples_to_cosine(0.3, 1.0, 1.0, 0.5) == math.inf


def test_budget_caps_and_reference_noise():
    # at least 2 samples whatever the budget; then only while the next one ends within it; 0 = no cap
    assert core.more_within(10.0, 50.0, 30.0, 1)
    assert not core.more_within(45.0, 40.0, 10.0, 3) and core.more_within(45.0, 30.0, 10.0, 3)
    assert core.more_within(0.0, 1e9, 1e9, 100)
    rng = np.random.default_rng(0)
    assert dref.reference_cosine(1.0 + 1e-3 * rng.standard_normal((4, 8))) > 0.999
    assert dref.reference_cosine(rng.standard_normal((4, 8))) < 0.9  # pure noise: far from its expectation
    assert math.isnan(dref.reference_cosine(np.full((3, 8), np.nan)))  # never "good enough" when non-finite


def test_compare_recovers_a_known_bias():
    rng = np.random.default_rng(0)
    truth = np.array([1.0, 0.0, 0.0, 0.0])
    biased = np.array([1.0, 1.0, 0.0, 0.0])  # cosine 1/sqrt(2) with the truth
    ref = truth + 0.1 * rng.standard_normal((64, 4))
    x = biased + 2.0 * rng.standard_normal((2, 2000, 4))
    res = stats.compare(x, ref, target=0.5)
    assert res["cosine"] == pytest.approx(1 / math.sqrt(2), abs=0.08)
    assert res["variance"] == pytest.approx(16.0, rel=0.1)
    assert res["autocorr_time"] == pytest.approx(1.0, abs=0.5)


# ---------------------------------------------------------------- subspace reference
def test_subspace_coordinates_keep_dot_products():
    """Along the exact rows dot products are exact; off them, unbiased through the Gaussian rows."""
    from lopt.metatrain import diagnose_subspace as sub

    rng = np.random.default_rng(0)
    d = 300
    a, b, c = rng.standard_normal((3, d))
    basis = sub.make_basis([a, 2 * a, np.full(d, np.nan)], 2, sub.random_rows(d, 4000, seed=1), seed=1)
    assert basis.dims == (2, 4000)  # a dependent and a non-finite mean add nothing; padding keeps the count
    np.testing.assert_allclose(basis.exact @ basis.exact.T, np.eye(2), atol=1e-12)
    ca, cb, cc = basis.coords(np.stack([a, b, c]))
    assert ca @ cb == pytest.approx(a @ b, rel=1e-9)  # a lies in the exact span: no projection error
    assert cb @ cc == pytest.approx(b @ c, abs=4 * np.linalg.norm(b) * np.linalg.norm(c) / np.sqrt(4000))
    assert cc @ cc == pytest.approx(c @ c, rel=0.1)
    # the reference's coordinates from directional derivatives along basis.directions() are coords(r)
    np.testing.assert_allclose(basis.reference_coords((basis.directions().astype(np.float64) @ c)[None])[0], cc,
                               rtol=1e-5, atol=1e-5 * np.abs(cc).max())


def test_subspace_reference_is_the_projected_full_episode_gradient():
    """On a smooth objective its samples are the exact backprop samples of the same draws, in its coordinates."""
    from lopt.metatrain import diagnose_subspace as sub

    u = quad_unroller(schedule=EpisodeSchedule("log_uniform", min_length=6, max_length=24), num_tasks=3,
                      task=NOISY_QUAD)
    mp = u.arch.init_meta_params(None)
    data, key = data_for(u), jax.random.PRNGKey(2)
    obj = core.EpisodeObjective(u, chunk=6)
    exact = dref.reference_backprop(obj, mp, data, key, num_samples=3).grads[0]
    pending = sub.SubspaceReference.compile(obj, mp, data, key, std=1e-3, num_exact=1, dims=8, seed=0)
    basis, samples = pending.sample([np.array([1.0, 0.5, -0.2])], 3)
    assert basis.dims == (1, 8) and samples.grads.shape == (1, 3, 9)
    want = basis.coords(exact)
    np.testing.assert_allclose(samples.grads[0], want, rtol=2e-2, atol=2e-3 * np.abs(want).max())
    assert stats.reference_quality(samples.grads[0])["samples"] == 3


def test_es_reference_points_at_the_full_episode_gradient():
    """``--reference es`` (full-dimensional antithetic ES): fine where the meta-parameters are few (3 here)."""
    u = quad_unroller(length=16, num_tasks=4)
    mp = u.arch.init_meta_params(None)
    data, key = data_for(u), jax.random.PRNGKey(5)
    obj = core.EpisodeObjective(u, chunk=4)
    exact = dref.reference_backprop(obj, mp, data, key, num_samples=2).grads[0].mean(axis=0)
    es = dref.reference_es(obj, mp, data, key, num_samples=64, std=1e-3, pairs_per_call=16)
    assert es.grads.shape == (1, 64, 3)
    mean = es.grads[0].mean(axis=0)
    assert mean @ exact / (np.linalg.norm(mean) * np.linalg.norm(exact)) > 0.9
    assert dref.reference_cosine(es.grads[0]) > 0.5


def test_compare_in_subspace_recovers_a_known_bias():
    """d = 3,000 with 24 random coordinates plus the mean's own: the cosine comes out, and its interval covers it."""
    from lopt.metatrain import diagnose_subspace as sub

    rng = np.random.default_rng(3)
    d = 3000
    r = rng.standard_normal(d)
    r /= np.linalg.norm(r)
    side = rng.standard_normal(d)
    side -= (side @ r) * r
    m = 0.6 * r + 0.8 * side / np.linalg.norm(side)  # cosine 0.6 with the truth, |m| = 1
    x = m + 0.1 * rng.standard_normal((2, 200, d))
    ref = r + 0.01 * rng.standard_normal((4, d))
    full = stats.compare(x, ref, target=0.5)
    basis = sub.make_basis([x.reshape(-1, d).mean(axis=0)], 1, sub.random_rows(d, 24, seed=0), seed=0)
    res = stats.compare(basis.coords(x), basis.coords(ref), target=0.5, random_coords=24)
    assert full["cosine"] == pytest.approx(0.6, abs=0.05)
    assert res["cosine"] == pytest.approx(0.6, abs=0.15), res
    lo, hi = res["cosine_ci90"]
    assert lo < 0.6 < hi and hi - lo > full["cosine_ci90"][1] - full["cosine_ci90"][0]  # the projection's error
    assert res["variance"] == pytest.approx(full["variance"], rel=0.1)


# ---------------------------------------------------------------- command line and outputs
def test_sweep_parsing_and_bad_input():
    from lopt.metatrain.config import ConfigError
    from lopt.metatrain.diagnose_run import DiagnoseOptions, parse_sweep

    from lopt.metatrain.estimators import ESTIMATORS
    from lopt.metatrain.diagnose_options import KINDS

    assert set(KINDS) == set(ESTIMATORS)
    assert parse_sweep("truncation_length=10,20") == ("truncation_length", (10, 20))
    assert parse_sweep("estimator.std=0.003,1") == ("estimator.std", (0.003, 1.0))
    with pytest.raises(ConfigError, match="meta-objective"):
        parse_sweep("unroll.episode_length=100,200")
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_sweep("truncation_length=ten")
    with pytest.raises(ConfigError, match="unknown 'sgd'"):
        DiagnoseOptions(estimators=("pes", "sgd"))


def test_best_setting_counts_the_configs_own_value():
    """A grid around the config's value (10 and 50 around 20) must not call a worse swept value best."""
    from lopt.metatrain import diagnose_run as run

    own = [{"estimator": "es", "sweep": None, "value": None, "truncation_length": 20, "std": 0.01, "seconds_to_target": 30.0},
           {"estimator": "pes", "sweep": None, "value": None, "truncation_length": 20, "std": 0.01, "seconds_to_target": None}]
    swept = [{"estimator": "es", "sweep": "truncation_length", "value": 10, "seconds_to_target": 600.0},
             {"estimator": "es", "sweep": "unroll.truncation_length", "value": 50, "seconds_to_target": None},
             {"estimator": "es", "sweep": "estimator.std", "value": 0.03, "seconds_to_target": 20.0}]
    assert run.best_setting(own, swept, "truncation_length") == {"es": {"value": 20, "seconds_to_target": 30.0}}
    assert run.best_setting(own, swept, "std") == {"es": {"value": 0.03, "seconds_to_target": 20.0}}
    swept[0]["seconds_to_target"] = 5.0
    assert run.best_setting(own, swept, "truncation_length")["es"]["value"] == 10  # pes was not swept: absent
    assert run.best_setting(own, [], "std") is None


def test_report_files_from_a_result(tmp_path):
    """diagnose.json is strict JSON (never-reached targets are null), diagnose.md ranks, plots exist."""
    import json

    from lopt.metatrain import diagnose_report as report
    from lopt.metatrain import diagnose_run as run
    from lopt.metatrain.config import to_dict

    rng = np.random.default_rng(0)
    ref = 1.0 + 0.1 * rng.standard_normal((4, 6))

    def row(est, mean, sweep=None, value=None):
        r = stats.compare(mean + rng.standard_normal((2, 16, 6)), ref, 0.5)
        secs = {"seconds_per_estimate": 0.1, "seconds_to_target": r["samples_to_target"] * 0.1}
        return {"estimator": est, "sweep": sweep, "value": value, "truncation_length": value or 20, "std": 0.01,
                "stagger": True, "inner_steps_per_estimate": 320, "compile_seconds": 1.0, **secs, **r}

    rows = [row("pes", np.ones(6)), row("es", -np.ones(6))]  # es points away: never reaches the target
    rows.append(row("full_es", np.zeros(6)))  # no signal: its mean stays below its noise
    assert not rows[-1]["mean_resolved"]
    sweeps = [row("pes", np.ones(6), "truncation_length", 10), row("pes", 0.5 * np.ones(6), "truncation_length", 50)]
    result = {
        "config_name": "toy", "config": {}, "meta_params_source": "fresh", "num_meta_params": 6,
        "machine": run.machine_info(), "options": to_dict(run.DiagnoseOptions()),
        "objective": {"episode": {"kind": "constant", "length": 32, "min_length": 1, "max_length": 32},
                      "expected_episode_length": 32.0, "meta_loss": "mean", "loss_transform": "log", "num_tasks": 8},
        "reference": {"method": "backprop", "fallback_reason": "", **stats.reference_quality(ref),
                      "seconds_per_sample": 1.0},
        "results": rows, "sweeps": sweeps, "ranking": run.ranking(rows),
        "best_truncation_length": run.best_setting(rows, sweeps, "truncation_length"), "best_std": None, "wall_seconds": 1.0,
    }
    assert result["ranking"][0]["estimator"] == "pes"
    paths = report.write_all(result, tmp_path)
    data = json.loads((tmp_path / "diagnose.json").read_text())
    assert data["results"][1]["samples_to_target"] is None
    md = (tmp_path / "diagnose.md").read_text()
    assert "Most signal per second here: `pes`" in md and "## Sweep `truncation_length`" in md
    line = next(x for x in md.splitlines() if x.startswith("| full_es |"))
    assert "| unresolved [" in line and "| unresolved |" in line  # neither its cosine nor its error is a number
    assert (tmp_path / "cosine_vs_samples.png").stat().st_size > 0
    assert (tmp_path / "signal_cost_vs_truncation_length.png") in paths


# ---------------------------------------------------------------- --from a run's checkpoint
def test_a_failed_subspace_reference_keeps_the_estimators_samples(tmp_path, monkeypatch):
    """The subspace reference is drawn after the estimators: if it fails, their samples are written, and said."""
    from lopt.metatrain import diagnose_reference, diagnose_run
    from lopt.metatrain.config import ConfigError, load_config
    from lopt.metatrain.diagnose_options import DiagnoseOptions

    def failing(bar, means):
        raise ConfigError("the subspace reference gradient was non-finite in 2 of 2 samples")

    monkeypatch.setattr(diagnose_reference, "draw", lambda *a, **k: (None, failing))
    sets = ["tasks=[{name: quadratic, num_tasks: 2}]", "unroll.truncation_length=4", "unroll.min_episode_length=8",
            "unroll.max_episode_length=16", "validation.every=0"]
    options = DiagnoseOptions(estimators=("pes",), samples=2, chains=1, reference="subspace", background_compile=False)
    with pytest.raises(ConfigError, match="non-finite in 2 of 2 samples .the estimators' samples are saved in .*"
                                          "estimator_samples.npz"):
        diagnose_run.diagnose(load_config("smoke", sets), options, progress=False, out_dir=tmp_path / "d")
    saved = np.load(tmp_path / "d" / "estimator_samples.npz")
    assert saved["00_pes"].shape[:2] == (1, 2) and np.all(np.isfinite(saved["00_pes"]))
    assert saved["meta_params"].shape == (1, saved["00_pes"].shape[2])
    with pytest.raises(ConfigError, match="non-finite in 2 of 2 samples$"):  # no folder: nothing to say
        diagnose_run.diagnose(load_config("smoke", sets), options, progress=False)


def test_from_dir_diagnoses_at_the_checkpoint_meta_params(tmp_path, capsys):
    """Train a tiny run, diagnose ``--from`` it: the meta-parameters used are its newest checkpoint's."""
    import argparse

    from lopt.metatrain import build, checkpoint, diagnose_cli
    from lopt.metatrain.config import load_config
    from lopt.metatrain.trainer import train

    sets = ["tasks=[{name: quadratic, num_tasks: 2}]", "unroll.truncation_length=4", "unroll.min_episode_length=8",
            "unroll.max_episode_length=16", "num_outer_steps=3", "checkpoint_every=1", "validation.every=0",
            "meta_opt.learning_rate=0.01", "meta_opt.warmup_steps=1"]
    run = tmp_path / "run"
    train(load_config("smoke", sets), run, progress=False)
    step, newest = checkpoint.list_checkpoints(run)[-1]
    assert step == 3
    config = load_config("smoke", sets)
    arch = build.build_arch(config)
    fresh = arch.init_meta_params(jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
    ckpt, _ = checkpoint.restore(newest, {"meta_params": fresh}, partial=True)
    want = np.asarray(jax.flatten_util.ravel_pytree(ckpt["meta_params"])[0])
    assert not np.allclose(want, np.asarray(jax.flatten_util.ravel_pytree(fresh)[0]))  # training moved them

    parser = argparse.ArgumentParser()
    diagnose_cli.add_arguments(parser)
    out = tmp_path / "diag"
    # a compile budget no backprop program fits: the reference falls back to the subspace one and the backprop
    # estimator is reported as not measured (predicted from one compiled forward truncation)
    args = parser.parse_args(["--config", "smoke", "--out", str(out), "--from", str(run), "--estimators",
                              "pes,backprop", "--samples", "2", "--chains", "1", "--compile-budget-s", "1e-9",
                              "--reference-compile-budget-s", "1e-9",
                              "--reference-es-samples", "8", "--no-progress"]
                             + [f"--set={s}" for s in sets])
    assert diagnose_cli.main(args) == 0
    used = np.load(out / "samples.npz")["meta_params"][0]
    np.testing.assert_array_equal(used, want)
    import json

    result = json.loads((out / "diagnose.json").read_text())
    assert str(newest) in result["meta_params_source"]
    assert result["reference"]["method"] == "subspace" and "to compile" in result["reference"]["fallback_reason"]
    assert result["reference"]["subspace_exact_dims"] == 1  # pes's mean (backprop was not measured)
    assert set(np.load(out / "samples.npz")) >= {"basis_exact", "basis_random", "reference"}
    assert result["reference"]["probe_compile_seconds"] > 0
    assert result["reference"]["probe_compile_cpu_seconds"] > 0
    assert [r["estimator"] for r in result["results"]] == ["pes"]
    assert [r["estimator"] for r in result["skipped"]] == ["backprop"]
    assert "`backprop` not measured: its step would take" in (out / "diagnose.md").read_text()
    import os

    assert result["background_compile"] == ((os.cpu_count() or 1) >= 2)  # the default, where a second core exists
    assert ("two compiles at a time" in (out / "diagnose.md").read_text()) == result["background_compile"]
    # the printed summary ranks only against a reference that is not noise, as diagnose.md does
    printed = capsys.readouterr().out
    assert ("no ranking: the subspace reference gradient is noise" in printed) == (
        result["reference"]["expected_cosine_to_truth"] < 0.5)
    assert ("bias cosine" in printed) == (result["reference"]["expected_cosine_to_truth"] >= 0.5)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_from_dir_bad_input_is_a_one_line_error(tmp_path, make):
    import subprocess
    import sys

    target = tmp_path / "nothing_here"
    if make == "empty":
        target.mkdir()
    proc = subprocess.run([sys.executable, "-m", "lopt.cli", "diagnose", "--config", "smoke", "--from", str(target),
                           "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lopt: error: --from"), proc.stderr
    assert ("no such run directory" if make == "missing" else "no checkpoint") in lines[0]


# ---------------------------------------------------------------- background compiles
@pytest.mark.parametrize("kind", ["pes", "backprop", "full_es"])
def test_warmed_estimator_samples_without_compiling_and_unchanged(kind):
    """``diagnose_warm`` compiles exactly the programs sampling calls: none is compiled again, same numbers.

    Shapes (3 tasks, truncation 3, 24-step episodes) no other test uses, so the
    module-level jits have not seen them; run in a worker thread as diagnose does.
    """
    import concurrent.futures as cf

    from jax import monitoring

    from lopt.metatrain import diagnose_warm

    u = quad_unroller(truncation=3, length=24, num_tasks=3)
    settings = core.EstimatorSettings(std=0.01, episode_length=12)
    est = core.make_estimator(kind, u, settings)
    mp = est.unroller.arch.init_meta_params(jax.random.PRNGKey(0))
    data, key = data_for(u), jax.random.PRNGKey(3)
    chains = 1 if kind == "full_es" else 2
    with cf.ThreadPoolExecutor(1) as pool:
        warmed = pool.submit(diagnose_warm.warm_estimator, est, mp, data, key, chains).result()
    assert warmed.wall > 0 and warmed.cpu > 0

    compiles, ours = [], ("_step_chains", "_init_groups", "_advance_chains")  # not eager ops' tiny programs

    def listener(event, duration, fun_name="", **kw):
        if "backend_compile" in event and any(name in fun_name for name in ours):
            compiles.append(fun_name)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        s = core.sample_estimator(est, mp, data, jax.random.fold_in(key, 7), 3, chains=chains)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert compiles == [], f"sampling compiled again after the warm-up: {compiles}"
    assert np.all(np.isfinite(s.grads)) and s.grads.shape[:2] == (chains, 3)
    # the same estimator sampled cold in a fresh jit cache gives the same numbers
    jax.clear_caches()
    cold = core.sample_estimator(est, mp, data, jax.random.fold_in(key, 7), 3, chains=chains)
    np.testing.assert_array_equal(cold.grads, s.grads)


def test_warmer_drain_runs_queued_warm_ups_here_and_waits_for_all(monkeypatch):
    """After ``drain`` no warm-up is left running (estimators are then timed on a quiet machine).

    The worker's first warm-up blocks until another one has run on the calling
    thread: without the calling thread's help, it waits out its 5 s timeout and
    the worker runs everything.
    """
    import threading

    from lopt.metatrain import diagnose_warm

    ran, lock, helped = [], threading.Lock(), threading.Event()

    def fake_warm(est, *args):
        on_main = threading.current_thread() is threading.main_thread()
        if est == "est0":
            helped.wait(5.0)
        elif on_main:
            helped.set()
        with lock:
            ran.append((est, on_main))
        return diagnose_warm.CompileTime(1.0, 0.0)

    monkeypatch.setattr(diagnose_warm, "warm_estimator", fake_warm)
    warmer = diagnose_warm.Warmer(enabled=True)
    try:
        for i in range(4):
            warmer.submit(i, f"est{i}", None, None, None, 1)
        warmer.drain()
        assert sorted(e for e, _ in ran) == ["est0", "est1", "est2", "est3"]  # all done when drain returns
        assert helped.is_set() and any(on_main for _, on_main in ran)
        assert all(warmer.wait(i).wall == 1.0 for i in range(4))
    finally:
        warmer.close()
