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


def test_scaled_steps_are_multiples_of_eval_every():
    assert scaled_steps(1000, 1.0, 50) == (1000, 50)
    assert scaled_steps(1000, 0.013, 50) == (13, 13)
    n, e = scaled_steps(1000, 0.33, 50)
    assert n % e == 0 and abs(n - 330) <= 25


def test_divergence_and_final_values():
    curves = np.array([[1.0, 0.5, 0.2], [1.0, np.nan, 0.1], [1.0, 11.0, 0.5], [2.0, 15.0, 0.1]])
    div = metrics.diverged_runs(curves, factor=10.0)
    assert div.tolist() == [False, True, True, False]
    final = metrics.final_values(curves, div)
    assert final.tolist() == [0.2, INF, INF, 0.1]
    assert metrics.seed_mean(final) == INF and metrics.seed_mean(final[[0, 3]]) == pytest.approx(0.15)


def test_speedup_definition():
    steps = [0, 10, 20, 30, 40]
    adam = [5.0, 3.0, 2.0, 1.0, 0.5]
    assert metrics.speedup(2.0, steps, adam, 20, 2.0) == {
        "speedup": 1.0, "speedup_censored": False, "adam_steps_to_match": 20}
    assert metrics.speedup(3.0, steps, adam, 20, 2.0)["speedup"] == 0.5
    never = metrics.speedup(0.1, steps, adam, 20, 2.0)
    assert never["speedup"] == 2.0 and never["speedup_censored"]
    assert metrics.speedup(INF, steps, adam, 20, 2.0)["speedup"] is None


def test_win_tie_loss():
    assert metrics.compare(1.0, 1.01, rtol=0.02, atol=0.0) == "tie"
    assert metrics.compare(0.9, 1.0, rtol=0.02, atol=0.0) == "win"
    assert metrics.compare(1.1, 1.0, rtol=0.02, atol=0.0) == "loss"
    assert metrics.compare(1e-9, 3e-9, rtol=0.02, atol=1e-6) == "tie"
    assert metrics.compare(INF, 1.0, 0.02, 0.0) == "loss"
    assert metrics.compare(1.0, INF, 0.02, 0.0) == "win"
    assert metrics.compare(INF, INF, 0.02, 0.0) == "tie"
    assert metrics.count_outcomes(["win", "tie", "win"]) == {"win": 2, "tie": 1, "loss": 0}


def test_win_possible_matches_compare_at_zero_loss():
    """A baseline within the tie tolerance of 0 cannot be beaten; just above it, a = 0 wins."""
    for b, atol in ((1e-7, 1e-6), (1e-6 / 0.98, 1e-6), (2e-6, 1e-6), (0.5, 0.0), (INF, 1e-6)):
        assert metrics.win_possible(b, 0.02, atol) == (metrics.compare(0.0, b, 0.02, atol) == "win"), b
    assert not metrics.win_possible(0.0, 0.02, 0.0)


def test_win_possible_with_a_loss_floor_matches_compare_at_the_floor():
    """Above 0, the best any optimizer can reach is the task's floor: a baseline near it cannot be beaten."""
    floor, atol = 0.004, 5e-5
    for b in (0.004, 0.0041, 0.00413, 0.0042, 0.01, INF):
        assert metrics.win_possible(b, 0.02, atol, floor) == (metrics.compare(floor, b, 0.02, atol) == "win"), b
    assert metrics.win_possible(0.0041, 0.02, atol) and not metrics.win_possible(0.0041, 0.02, atol, floor)


def test_median_and_geometric_mean_skip_missing():
    assert metrics.median([0.5, None, 2.0, 1.0]) == 1.0
    assert metrics.median([None]) is None
    assert abs(metrics.geometric_mean([0.5, 2.0, None]) - 1.0) < 1e-12
