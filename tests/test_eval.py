"""End-to-end checks of ``lopt eval`` on the smoke suite (one shared run, ~4 compiles)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from lopt.eval.compare import compare_on_suite

LEARNED = "small_fc_fresh"


def fresh_optimizer():
    """A real, untrained small_fc (a fresh one already trains, like Adafactor with momentum)."""
    import lopt
    from lopt import architectures

    arch = architectures.get("small_fc")
    return lopt.TrainedOptimizer(arch, arch.init_meta_params(jax.random.PRNGKey(0)), {})


TINY = {  # every built-in baseline on two tiny tasks: compiles dominate, so few and small programs
    "name": "tiny", "seeds": 2, "tuning_seeds": 1, "eval_every": 10,
    "lr_grid": {"min": 1.0e-4, "max": 1.0e-1, "num": 8},
    "tasks": [
        {"task": "quadratic", "steps": 40, "overrides": {"dim": 4}},
        {"task": "mlp_digits", "steps": 40, "overrides": {"hidden": [8]}},
    ],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from lopt.eval.suite import parse_suite

    out = tmp_path_factory.mktemp("smoke_eval")
    report = compare_on_suite({LEARNED: fresh_optimizer()}, parse_suite(TINY), out, progress=False, verbose=False)
    return report, out


def test_report_shows_every_baseline_on_both_metrics(smoke):
    from lopt.eval.baselines import BUILTIN

    report, out = smoke
    on_disk = json.loads((out / "report.json").read_text())  # written with allow_nan=False: strict JSON
    names = [LEARNED, *BUILTIN]
    assert on_disk["baselines"] == list(BUILTIN)
    assert [t["label"] for t in on_disk["tasks"]] == ["quadratic", "mlp_digits"]
    for task in on_disk["tasks"]:
        assert task["curve_steps"] == list(range(0, 42, 2))  # 20 validation points after step 0, same for all
        assert set(task["optimizers"]) == set(names)
        assert set(task["tuning"]) == {"adam_tuned", "adamw_cosine"}
        for name in names:
            entry = task["optimizers"][name]
            assert np.asarray(entry["curve"]["valid_loss"]).shape == (2, 21), name
            assert entry["best_valid_loss"] == pytest.approx(
                min(np.mean(entry["curve"]["valid_loss"], axis=0)), rel=1e-12)
        for metric in ("train", "valid"):
            assert set(task["speedup"][LEARNED]) == set(BUILTIN) and task["counted"][metric]["why"]
        for name in BUILTIN[3:]:  # the tuning-free ones train at their defaults (validation improves on the init)
            entry = task["optimizers"][name]
            assert entry["diverged"] == 0 and entry["best_valid_loss"] < np.mean(entry["curve"]["valid_loss"], 0)[0]
        assert set(task["wall_time_s"]) == {LEARNED, "adam_default + adam_tuned", "adamw_cosine", *BUILTIN[3:]}
    md = (out / "report.md").read_text()
    assert all(f"| {n} " in md or f" {n} |" in md for n in names) and "## Which tasks count" in md


def test_every_optimizer_starts_from_the_same_whole_split_validation_loss(smoke):
    """Same init key for all; step 0 is validated on the whole split (schedule-free: averaged = init params)."""
    from lopt.eval.evaluate import build_task
    from lopt.eval.suite import parse_suite

    report, _ = smoke
    for spec, task in zip(parse_suite(TINY).tasks, report["tasks"]):
        t = build_task(spec)
        data = t.load_data()
        want = [float(t.valid_loss_full(t.init(jax.random.split(jax.random.PRNGKey(s), 3)[0]), data)[0])
                for s in report["protocol"]["report_seeds"]]
        for name, entry in task["optimizers"].items():
            np.testing.assert_allclose([row[0] for row in entry["curve"]["valid_loss"]], want, rtol=1e-5,
                                       err_msg=name)


def test_reported_adamw_cosine_curve_is_a_run_at_the_tuned_rate(smoke):
    """Re-running AdamW-cosine at the chosen rate on a reporting seed gives the reported curve."""
    from lopt.eval.baselines import adamw_cosine
    from lopt.eval.evaluate import build_task
    from lopt.eval.runs import run_optimizer
    from lopt.eval.suite import parse_suite

    report, _ = smoke
    task = report["tasks"][0]
    lr = task["tuning"]["adamw_cosine"]["chosen_lr"]
    assert task["optimizers"]["adamw_cosine"]["lr"] == lr and task["tuning"]["adamw_cosine"]["seeds"] == [0]
    t = build_task(parse_suite(TINY).tasks[0])
    again = run_optimizer(t, t.load_data(), adamw_cosine(lr, task["steps"]), [2], task["steps"], task["eval_every"])
    np.testing.assert_allclose(again.valid_loss[0], task["optimizers"]["adamw_cosine"]["curve"]["valid_loss"][1],
                               rtol=1e-5)


def test_speedups_use_longer_baseline_runs(smoke):
    """Horizon-free baselines ran speedup_horizon x T; AdamW-cosine ran shorter horizons while they got there and
    longer ones until it got there, and its speedups count the fewest steps of any of its runs."""
    from lopt.eval.baselines import TUNING_FREE
    from lopt.eval.tuned_runs import horizon_ladder, shorter_horizons

    report, _ = smoke
    for task in report["tasks"]:
        t, every = task["steps"], task["eval_every"]
        for name in (*TUNING_FREE, "adam_tuned"):
            assert task["speedup_horizons"][name] == [2 * t], name
        horizons = task["speedup_horizons"]["adamw_cosine"]
        shorter = [h for h in horizons[1:] if h < t]
        longer = [h for h in horizons[1:] if h > t]
        assert horizons[0] == t and horizons[1:] == shorter + longer
        assert shorter == shorter_horizons(t, every)[: len(shorter)]
        assert longer == horizon_ladder(t, every, 2.0)[: len(longer)]
        sp = task["speedup"][LEARNED]["adamw_cosine"]
        for metric in ("train", "valid"):
            if sp[metric]["censored"]:  # censored only after the whole longer ladder ran
                assert longer == horizon_ladder(t, every, 2.0)
                assert sp[metric]["speedup"] * sp[metric]["steps"] == longer[-1]
            elif sp[metric]["speedup"] is not None:
                assert sp[metric]["baseline_steps"] <= horizons[sp[metric].get("run", 0)]


def test_reported_tuning_free_curve_is_the_planned_part_of_its_longer_run(smoke):
    """Running prodigy for T steps alone gives the reported curve: running it longer changed nothing up to T."""
    from lopt.eval.baselines import tuning_free
    from lopt.eval.evaluate import build_task
    from lopt.eval.runs import run_optimizer
    from lopt.eval.suite import parse_suite

    report, _ = smoke
    task = report["tasks"][1]
    t = build_task(parse_suite(TINY).tasks[1])
    tx, _ = tuning_free("prodigy")
    again = run_optimizer(t, t.load_data(), tx, [1], task["steps"], task["eval_every"])
    entry = task["optimizers"]["prodigy"]["curve"]
    np.testing.assert_allclose(again.valid_loss[0], entry["valid_loss"][0], rtol=1e-5)
    np.testing.assert_allclose(again.train_loss[0], entry["train_loss"][0], rtol=1e-5)


def test_adamw_cosine_runs_other_horizons_until_it_reaches_the_targets():
    from lopt.eval import metrics
    from lopt.eval.evaluate import build_task
    from lopt.eval.suite import parse_suite
    from lopt.eval.tuned_runs import TaskRuns, extend_adamw_cosine, horizon_ladder, run_adamw_cosine

    suite = parse_suite({**TINY, "seeds": 1})
    t = build_task(suite.tasks[0])
    data = t.load_data()
    runs = TaskRuns()
    run_adamw_cosine(runs, t, data, suite, [1], 40, 10)
    planned = runs.curves["adamw_cosine"]
    # a target the planned run only reaches at its very end (its final training loss): shorter runs are tried,
    # longest first, and the first that falls short ends the search; no longer run is needed
    final = (float(planned.train_loss[0, -1]), float("inf"))
    extend_adamw_cosine(runs, t, data, suite, [1], 40, 10, [final])
    shorter = runs.other_horizons["adamw_cosine"]
    assert 1 <= len(shorter) <= 3 and [int(c.steps[-1]) for c in shorter] == [30, 20, 10][: len(shorter)]
    reach = [metrics.steps_to_reach(c.steps, c.train_loss[0], final[0]) is not None for c in shorter]
    assert all(reach[:-1]) and (len(shorter) == 3 or not reach[-1])  # stopped at the first that fell short
    best_valid = float(planned.valid_loss[0].min())  # the planned run's best: the 30-step plan falls short of it
    extend_adamw_cosine(runs, t, data, suite, [1], 40, 10, [(float("inf"), best_valid)])
    tried = runs.other_horizons["adamw_cosine"]
    assert [int(c.steps[-1]) for c in tried] == [30] and float(tried[0].valid_loss[0].min()) > best_valid
    extend_adamw_cosine(runs, t, data, suite, [1], 40, 10, [(float("inf"), float("inf"))])  # diverged: nothing
    assert runs.other_horizons["adamw_cosine"] == []
    # no run reaches an impossible target: every longer horizon runs, no shorter one (a diverged learned
    # optimizer's inf target is looked for by none)
    extend_adamw_cosine(runs, t, data, suite, [1], 40, 10, [(float("inf"), -1.0)])
    longer = runs.other_horizons["adamw_cosine"]
    assert [int(c.steps[-1]) for c in longer] == horizon_ladder(40, 10, 2.0) == [50, 60, 70, 80]
    # each is a fresh run at the tuned rate planned for its own horizon: the longer the run, the later it anneals
    assert all(c.valid_loss.shape == (1, len(c.steps)) for c in longer)
    assert not np.allclose(longer[0].valid_loss[0, :5], planned.valid_loss[0])
    np.testing.assert_allclose(longer[0].valid_loss[0, 0], planned.valid_loss[0, 0], rtol=1e-6)  # same init


def test_plots_written(smoke):
    _, out = smoke
    for name in ("summary.png", "curves_quadratic.png", "curves_mlp_digits.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_unknown_optimizer_and_suite_give_clear_errors(capsys):
    from lopt.cli import main

    assert main(["eval", "--optimizer", "no_such_optimizer", "--suite", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lopt: error: unknown optimizer 'no_such_optimizer'") and "valid names" in err
    assert len(err.splitlines()) == 1
    assert main(["eval", "--optimizer", "no_such_optimizer", "--suite", "no_such_suite"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'no_such_suite'" in err and "held_out" in err and "smoke" in err


def test_extra_baseline_and_determinism():
    """An optax baseline from the suite YAML is run and compared; same config twice gives the same report."""
    from lopt.eval.evaluate import evaluate_suite
    from lopt.eval.suite import parse_suite

    suite = parse_suite({
        "seeds": 1, "tuning_seeds": 2, "eval_every": 5,
        "baselines": [{"name": "sgd_momentum", "optax": "sgd", "kwargs": {"learning_rate": 0.01, "momentum": 0.9}}],
        "tasks": [{"task": "quadratic", "steps": 20, "label": "quad4", "overrides": {"dim": 4}}],
    })
    opt = {LEARNED: fresh_optimizer()}
    first = evaluate_suite(opt, suite, progress=False, baselines=("adam_default", "adam_tuned"))
    second = evaluate_suite(opt, suite, progress=False, baselines=("adam_default", "adam_tuned"))
    task = first["tasks"][0]
    assert first["baselines"] == ["adam_default", "adam_tuned", "sgd_momentum"]
    assert first["protocol"]["tuning_seeds"] == [0, -1] and first["protocol"]["report_seeds"] == [1]
    assert task["outcomes"][LEARNED]["sgd_momentum"]["valid"] in ("win", "tie", "loss")
    assert math.isfinite(task["optimizers"]["sgd_momentum"]["final_train_loss"])
    for name in (LEARNED, "adam_tuned", "sgd_momentum"):
        assert task["optimizers"][name]["curve"] == second["tasks"][0]["optimizers"][name]["curve"]


def test_baselines_flag_is_checked_before_any_run(capsys):
    from lopt.cli import main

    assert main(["eval", "--optimizer", "default", "--suite", "smoke", "--baselines", "adam,prodigy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lopt: error: unknown baseline 'adam'") and "adamw_cosine" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "schedule_free_adamw" in capsys.readouterr().out


def test_report_without_baselines_has_no_empty_comparison_tables():
    """``--baselines none`` (how candidates are compared with each other): losses only, no empty speedup table."""
    from lopt.eval.evaluate import evaluate_suite
    from lopt.eval.report import outcome_lines, summary_table
    from lopt.eval.suite import parse_suite

    suite = parse_suite({"seeds": 1, "eval_every": 5,
                         "tasks": [{"task": "quadratic", "steps": 10, "label": "quad4", "overrides": {"dim": 4}}]})
    report = evaluate_suite({LEARNED: fresh_optimizer()}, suite, progress=False, baselines=())
    table, lines = summary_table(report), outcome_lines(report)
    assert report["baselines"] == [] and "| quad4 | 10 |" in table
    assert "Speedup and outcome" not in table and not any("win/tie/loss" in line for line in lines)
    assert "- baseline divergences: no baselines run" in lines
