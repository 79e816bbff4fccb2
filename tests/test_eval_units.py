"""Fast checks of eval's definitions and input validation (no training, no compiles)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lopt.eval import metrics
from lopt.eval.errors import EvalError
from lopt.eval.evaluate import build_task, scaled_steps
from lopt.eval.suite import MIN_GRID_POINTS, load_suite, parse_suite, suite_names

INF = float("inf")


def _suite(**extra):
    raw = {"tasks": [{"task": "quadratic", "steps": 20}]}
    raw.update(extra)
    return raw


def test_shipped_suites_parse_and_build():
    assert {"smoke", "in_distribution", "held_out"} <= set(suite_names())
    for name in ("smoke", "in_distribution", "held_out"):
        suite = load_suite(name)
        assert len(suite.lr_grid) >= MIN_GRID_POINTS
        assert any(math.isclose(lr, suite.default_lr) for lr in suite.lr_grid)
        for spec in suite.tasks:
            build_task(spec)  # registered name and overrides are valid
    held = load_suite("held_out")
    assert max(t.steps for t in held.tasks) >= 10 * 2000  # 10x the reference episode length


def test_unknown_suite_lists_valid_names():
    with pytest.raises(EvalError, match="unknown suite 'nope'.*smoke"):
        load_suite("nope")
    with pytest.raises(EvalError, match="not found"):
        load_suite("missing/file.yaml")


@pytest.mark.parametrize(
    "raw, match",
    [
        (_suite(sedes=3), "unknown key 'sedes'"),
        ({"tasks": [{"task": "quadratic", "step": 20}]}, r"tasks\[0\]: unknown key 'step'"),
        ({"tasks": [{"task": "quadratic"}]}, "key 'steps' is missing"),
        ({"tasks": []}, "'tasks' is missing or empty"),
        (_suite(seeds=0), "'seeds' must be a positive integer"),
        (_suite(lr_grid=[1e-3, 1e-2]), "at least 8 values"),
        (_suite(lr_grid={"min": 1e-4, "max": 1e-1, "nun": 10}), "unknown key 'nun'"),
        (_suite(baselines=[{"optax": "not_an_optimizer"}]), "optax has no optimizer"),
        (_suite(baselines=[{"optax": "sgd", "name": "adam_tuned"}]), "reserved"),
        ({"tasks": [{"task": "quadratic", "steps": 5}, {"task": "quadratic", "steps": 9}]}, "duplicate task labels"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_malformed_suite_names_the_problem(raw, match):
    with pytest.raises(EvalError, match=match):
        parse_suite(raw)


def test_include_tasks_prepends_another_suites_tasks_as_written(tmp_path):
    wide, old = load_suite("default_decision_wide"), load_suite("default_decision")
    assert wide.tasks[: len(old.tasks)] == old.tasks  # labels, steps, per-task eval_every, overrides
    assert len(wide.tasks) == len(old.tasks) + 7
    (tmp_path / "a.yaml").write_text("eval_every: 7\ntasks: [{task: quadratic, steps: 5, label: q5, eval_every: 1}]\n")
    both = tmp_path / "b.yaml"
    both.write_text(f"include_tasks: [{tmp_path / 'a.yaml'}, smoke]\neval_every: 3\n"
                    "tasks: [{task: quadratic, steps: 9, label: q9}]\n")
    suite = load_suite(both)
    assert [t.display for t in suite.tasks] == ["q5"] + [t.display for t in load_suite("smoke").tasks] + ["q9"]
    assert suite.tasks[0].eval_every == 1 and suite.eval_every == 3  # settings are the including file's
    assert len(load_suite(tmp_path / "a.yaml").tasks) == 1


def test_include_tasks_errors_name_the_file(tmp_path):
    with pytest.raises(EvalError, match="include_tasks 'nope'.*unknown suite"):
        parse_suite({"include_tasks": "nope"})
    with pytest.raises(EvalError, match="must be a suite name or path"):
        parse_suite({"include_tasks": [3], "tasks": [{"task": "quadratic", "steps": 5}]})
    with pytest.raises(EvalError, match="duplicate task labels"):
        parse_suite({"include_tasks": "smoke", "tasks": [dict(load_suite("smoke").to_dict()["tasks"][0])]})
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"include_tasks: {b}\n")
    b.write_text(f"include_tasks: {a}\ntasks: [{{task: quadratic, steps: 5}}]\n")
    with pytest.raises(EvalError, match="forms a cycle"):
        load_suite(a)


def test_grid_always_contains_default_lr():
    suite = parse_suite(_suite(lr_grid={"min": 2e-4, "max": 2e-1, "num": 8}, default_lr="1e-3"))
    assert 1e-3 in suite.lr_grid and len(suite.lr_grid) == 9


def test_bad_task_name_and_override_are_clear():
    from lopt.tasks.base import TaskError

    with pytest.raises(TaskError, match="unknown task 'nope'.*mlp_digits"):
        build_task(parse_suite({"tasks": [{"task": "nope", "steps": 5}]}).tasks[0])
    spec = parse_suite({"tasks": [{"task": "mlp_digits", "steps": 5, "overrides": {"widht": 3}}]}).tasks[0]
    with pytest.raises(EvalError, match="unknown override 'widht'"):
        build_task(spec)


def test_scaled_steps_give_at_least_20_validation_points():
    assert scaled_steps(1000, 1.0, 50) == (1000, 50)
    assert scaled_steps(300, 1.0, 25) == (300, 15)  # 12 points would be too few
    assert scaled_steps(1000, 0.013, 50) == (13, 1)  # shorter than 20 steps: every step
    for steps, scale, every in ((60, 1.0, 10), (20000, 1.0, 500), (777, 0.37, 50), (5000, 1.0, 250)):
        n, e = scaled_steps(steps, scale, every)
        assert n % e == 0 and e <= every and n // e >= 20 and abs(n - steps * scale) <= e


def test_divergence_and_final_values():
    curves = np.array([[1.0, 0.5, 0.2], [1.0, np.nan, 0.1], [1.0, 11.0, 0.5], [2.0, 15.0, 0.1]])
    div = metrics.diverged_runs(curves, factor=10.0)
    assert div.tolist() == [False, True, True, False]
    final = metrics.final_values(curves, div)
    assert final.tolist() == [0.2, INF, INF, 0.1]
    assert metrics.seed_mean(final) == INF and metrics.seed_mean(final[[0, 3]]) == pytest.approx(0.15)


def test_speedup_on_constructed_curves():
    steps = [0, 10, 20, 30, 40]
    base = [5.0, 3.0, 2.0, 1.0, 0.5]
    # training: we end at 2.0 after 20 steps; the baseline gets there at step 20
    assert metrics.speedup(2.0, steps, base, 20) == {"speedup": 1.0, "censored": False, "baseline_steps": 20, "steps": 20}
    assert metrics.speedup(3.0, steps, base, 20)["speedup"] == 0.5  # the baseline is twice as fast
    # validation: our best 1.0 reached at step 10; the baseline needs 30 steps -> 3x, uncensored
    ours = [5.0, 1.0, 1.2, 1.5, 2.0]
    best, t_star = metrics.best_along(steps, ours)
    assert (best, t_star) == (1.0, 10)
    assert metrics.speedup(best, steps, base, t_star) == {"speedup": 3.0, "censored": False, "baseline_steps": 30,
                                                          "steps": 10}
    never = metrics.speedup(0.1, steps, base, 20)  # censored at the baseline's last step over ours
    assert never["speedup"] == 2.0 and never["censored"]
    assert metrics.speedup(INF, steps, base, 20)["speedup"] is None
    assert metrics.speedup(1.0, steps, base, 0)["speedup"] is None  # best at step 0: never improved
    assert metrics.speedup(1.0, steps, [5.0, np.nan, 0.9, 0.1, 0.1], 10)["baseline_steps"] == 20  # nan never reaches


def test_speedup_over_runs_takes_the_fewest_steps_of_any_horizon():
    """AdamW-cosine planned for T, 1.25T, ...: S is the first step any run reaches the target; censored at the
    longest run's end when none does."""
    planned = ([0, 10, 20], [5.0, 3.0, 2.0])  # T = 20: never below 2.0
    longer = ([0, 10, 20, 30], [5.0, 3.5, 2.5, 1.0])  # planned for 30: reaches 1.0 at step 30
    longest = ([0, 10, 20, 30, 40], [5.0, 3.8, 1.5, 0.9, 0.5])  # planned for 40: reaches 1.0 at step 30 too
    got = metrics.speedup_over_runs(1.0, [planned, longer, longest], 10)
    assert got == {"speedup": 3.0, "censored": False, "baseline_steps": 30, "steps": 10, "run": 1}
    assert metrics.speedup_over_runs(1.5, [planned, longer, longest], 10)["baseline_steps"] == 20  # run 2 at 20
    assert metrics.speedup_over_runs(1.5, [planned, longer, longest], 10)["run"] == 2
    never = metrics.speedup_over_runs(0.1, [planned, longer, longest], 10)
    assert never == {"speedup": 4.0, "censored": True, "baseline_steps": None, "steps": 10}
    # one run: exactly :func:`speedup`
    assert metrics.speedup_over_runs(2.0, [planned], 20) == metrics.speedup(2.0, *planned, 20)
    assert metrics.speedup_over_runs(INF, [planned, longer], 20)["speedup"] is None


def test_horizon_ladder_rungs():
    from lopt.eval.tuned_runs import horizon_ladder

    assert horizon_ladder(100, 10, 2.0) == [130, 150, 180, 200]  # 1.25, 1.5, 1.75, 2 x T, whole eval intervals
    assert horizon_ladder(100, 10, 1.5) == [130, 150]
    assert horizon_ladder(100, 10, 1.0) == []  # no longer runs: speedups censored at T
    assert horizon_ladder(8, 4, 2.0) == [12, 16]  # rounding merges rungs, never repeats one


def test_shorter_horizons_rungs():
    from lopt.eval.tuned_runs import shorter_horizons

    assert shorter_horizons(100, 10) == [80, 50, 30]  # 0.75, 0.5, 0.25 x T, longest first, whole eval intervals
    assert shorter_horizons(40, 10) == [30, 20, 10]
    assert shorter_horizons(8, 4) == [4]  # at least one eval interval, never T itself, never repeated
    assert shorter_horizons(4, 4) == []


def test_seed_mean_curve_and_best_along():
    curves = np.array([[4.0, 2.0, 1.0, np.nan], [2.0, 1.0, 1.0, 3.0]])
    mean = metrics.seed_mean_curve(curves)
    assert mean.tolist() == [3.0, 1.5, 1.0, INF]  # a blow-up is never averaged away
    assert metrics.best_along([0, 5, 10, 15], mean) == (1.0, 10)
    assert metrics.best_along([0, 5], [INF, np.nan]) == (INF, None)
    assert metrics.best_along([0, 5, 10], [2.0, 1.0, 1.0]) == (1.0, 5)  # first step on ties


@pytest.mark.parametrize(
    "ref, floor, atol, counts",
    [
        (1.0, 0.0, 0.0, True),  # 50 bands of 2% above 0
        (1.0, 0.79, 0.0, True),  # (1 - 0.79) / 0.02 = 10.5 bands
        (1.0, 0.81, 0.0, False),  # 9.5 bands
        (1e-4, 0.0, 1e-5, False),  # (1e-4) / (2e-6 + 1e-5) = 8.3 bands: at the floor for all practical purposes
        (1e-3, 0.0, 1e-5, True),  # 1e-3 / 3e-5 = 33 bands
        (INF, 0.0, 1e-5, True),  # a diverged reference leaves room above the floor
    ],
)
def test_saturation_rule_on_constructed_cases(ref, floor, atol, counts):
    rule = metrics.counts_for_metric(ref, floor, rtol=0.02, atol=atol, bands=10)
    assert rule["counts"] is counts
    if math.isfinite(ref):  # the rule is "ends >= bands tie bands above the floor", band = the tie tolerance
        assert rule["bands_above_floor"] == pytest.approx((ref - floor) / metrics.tie_band(ref, 0.02, atol))
        near = ref - metrics.tie_band(ref, 0.02, atol)  # a loss one band below the reference ties with it
        assert metrics.compare(near * (1 + 1e-9), ref, 0.02, atol) == "tie"


def test_saturation_uses_the_reference_baseline_only():
    from lopt.eval.evaluate import saturation

    suite = parse_suite(_suite(saturation={"reference": "adamw_cosine", "bands": 10}))
    opts = {  # the learned optimizer's numbers must not matter
        "learned": {"final_train_loss": 0.0, "best_valid_loss": 0.0},
        "adam_tuned": {"final_train_loss": 1e-6, "best_valid_loss": 0.5},
        "adamw_cosine": {"final_train_loss": 0.3, "best_valid_loss": 1e-6},
    }
    got = saturation(suite, opts, ["adam_tuned", "adamw_cosine"], floor=0.0, atol=1e-4)
    assert got["train"]["counts"] and not got["valid"]["counts"]
    assert got["train"]["reference"] == "adamw_cosine" and "tie bands above the floor" in got["valid"]["why"]
    fallback = saturation(suite, opts, ["adam_tuned"], floor=0.0, atol=1e-4)  # reference not run: tuned Adam
    assert fallback["train"]["reference"] == "adam_tuned" and not fallback["train"]["counts"]
    assert fallback["valid"]["counts"]
    assert saturation(suite, opts, [], floor=0.0, atol=1e-4)["train"]["counts"]  # nothing to judge by


class _FakeRunner:
    """Returns constructed curves for (lr, seed) pairs: lr 1e-2 trains best, lr 1e-3 validates best."""

    def __call__(self, data, lrs, seeds):
        from lopt.eval.runs import Curves

        train = {1e-3: [2.0, 1.0, 0.5], 1e-2: [2.0, 0.5, 0.1], 1e-1: [2.0, 0.1, 0.01], 1e-4: [2.0, 1.9, 1.8]}
        valid = {1e-3: [2.0, 0.9, 1.0], 1e-2: [2.0, 1.0, 1.2], 1e-1: [2.0, 0.5, 0.5], 1e-4: [2.0, 0.9, 0.95]}
        tr = np.array([train[lr] for lr in lrs])
        va = np.array([valid[lr] for lr in lrs])
        tr[[i for i, (lr, s) in enumerate(zip(lrs, seeds)) if lr == 1e-1 and s == -1], 1] = 50.0  # diverges
        return Curves(np.array([0, 10, 20]), tr, va, None)


def test_tuning_picks_the_best_validation_loss_and_skips_diverged_rates():
    from lopt.eval.tuning import tune_lr, tuning_seeds

    lr, record = tune_lr(_FakeRunner(), None, [1e-4, 1e-3, 1e-2, 1e-1], tuning_seeds(2), 20, divergence_factor=10.0)
    # 1e-1 validates best but diverged on seed -1; 1e-2 trains best but validates worse; 1e-4 and 1e-3 both
    # reach 0.9: the first (smallest) rate wins the tie
    assert record["scores"] == [0.9, 0.9, 1.0, INF]
    assert lr == 1e-4 and record["chosen_lr"] == 1e-4 and record["seeds"] == [0, -1]
    lr, _ = tune_lr(_FakeRunner(), None, [1e-3, 1e-2, 1e-1], [0], 20, divergence_factor=10.0)
    assert lr == 1e-1  # with only seed 0 nothing diverged


def test_warmup_cosine_schedule():
    import jax

    from lopt.eval.baselines import warmup_cosine

    sched = warmup_cosine(0.1, 100)  # 5 warm-up steps, then 95 of cosine
    values = np.asarray(jax.jit(jax.vmap(sched))(np.arange(101)))
    np.testing.assert_allclose(values[:5], 0.1 * np.arange(1, 6) / 5, rtol=1e-6)
    np.testing.assert_allclose(values[5], 0.1, rtol=1e-6)
    np.testing.assert_allclose(values[100], 0.0, atol=1e-9)
    np.testing.assert_allclose(values[15], 0.1 * 0.5 * (1 + np.cos(np.pi * 10 / 95)), rtol=1e-5)
    assert np.all(np.diff(values[5:]) <= 1e-9)  # decays monotonically after the peak
    traced = jax.jit(lambda lr: warmup_cosine(lr, 100)(5))(0.3)  # the peak may be traced (one program per grid)
    np.testing.assert_allclose(traced, 0.3, rtol=1e-6)


def test_baselines_flag_parsing():
    from lopt.eval.baselines import BUILTIN, parse_baselines

    assert parse_baselines(None) == BUILTIN == parse_baselines("all")
    assert parse_baselines("none") == ()
    assert parse_baselines("prodigy, adam_default") == ("adam_default", "prodigy")  # canonical order
    with pytest.raises(EvalError, match="unknown baseline 'adam_tunde'.*adam_tuned"):
        parse_baselines("adam_tunde")


def test_saturation_schema_has_defaults_and_checks_keys():
    suite = parse_suite(_suite())
    assert (suite.saturation_reference, suite.saturation_bands) == ("adamw_cosine", 10.0)
    assert suite.to_dict()["saturation"] == {"reference": "adamw_cosine", "bands": 10.0}
    with pytest.raises(EvalError, match="saturation: unknown key 'band'"):
        parse_suite(_suite(saturation={"band": 3}))
    with pytest.raises(EvalError, match="saturation.reference"):
        parse_suite(_suite(saturation={"reference": "sgd"}))
    for name in suite_names():  # every shipped suite writes its rule down
        assert "saturation:" in load_suite_text(name), name


def load_suite_text(name: str) -> str:
    from lopt import configs

    return configs.resolve("eval", name).read_text()


def test_win_tie_loss():
    assert metrics.compare(1.0, 1.01, rtol=0.02, atol=0.0) == "tie"
    assert metrics.compare(0.9, 1.0, rtol=0.02, atol=0.0) == "win"
    assert metrics.compare(1.1, 1.0, rtol=0.02, atol=0.0) == "loss"
    assert metrics.compare(1e-9, 3e-9, rtol=0.02, atol=1e-6) == "tie"
    assert metrics.compare(INF, 1.0, 0.02, 0.0) == "loss"
    assert metrics.compare(1.0, INF, 0.02, 0.0) == "win"
    assert metrics.compare(INF, INF, 0.02, 0.0) == "tie"
    assert metrics.count_outcomes(["win", "tie", "win"]) == {"win": 2, "tie": 1, "loss": 0}


def test_median_and_geometric_mean_skip_missing():
    assert metrics.median([0.5, None, 2.0, 1.0]) == 1.0
    assert metrics.median([None]) is None
    assert abs(metrics.geometric_mean([0.5, 2.0, None]) - 1.0) < 1e-12


def test_decision_v8_is_the_wide_suite_plus_three_tasks():
    """`default_decision_v8` includes `default_decision_wide`'s tasks first, exactly, then its own three."""
    v8, wide = load_suite("default_decision_v8"), load_suite("default_decision_wide")
    assert v8.tasks[: len(wide.tasks)] == wide.tasks and len(v8.tasks) == len(wide.tasks) + 3


def test_decision_suites_share_no_task_configuration_with_the_reporting_suites():
    """What ships is decided on one set of tasks and reported on another (issue 14): no decision suite may
    hold a reporting task's configuration (task and overrides), whatever its number of steps."""
    def configs(name):
        return {(t.task, tuple(sorted((k, repr(v)) for k, v in dict(t.overrides).items())))
                for t in load_suite(name).tasks}

    reporting = configs("held_out") | configs("realistic")
    decision = [name for name in suite_names() if name.startswith("default_decision")]
    assert {"default_decision_v8", "default_decision_long", "default_decision_long_v14"} <= set(decision)
    for name in decision:
        assert not configs(name) & reporting, name
