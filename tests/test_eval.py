"""End-to-end checks of ``lopt eval`` on the smoke suite (one shared run, ~4 compiles)."""

from __future__ import annotations

import json
import math

import jax
import pytest

from lopt.eval.compare import compare_on_suite

LEARNED = "small_fc_fresh"


def fresh_optimizer():
    """A real, untrained small_fc (a fresh one already trains, like Adafactor with momentum)."""
    import lopt
    from lopt import architectures

    arch = architectures.get("small_fc")
    return lopt.TrainedOptimizer(arch, arch.init_meta_params(jax.random.PRNGKey(0)), {})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke_eval")
    report = compare_on_suite({LEARNED: fresh_optimizer()}, "smoke", out, progress=False, verbose=False)
    return report, out


def test_report_has_every_field(smoke):
    report, out = smoke
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("suite", "learned", "baselines", "protocol", "tasks", "summary", "wall_time_s", "device"):
        assert key in on_disk, key
    assert on_disk["learned"] == [LEARNED]
    assert on_disk["baselines"][:2] == ["adam_default", "adam_tuned"]
    seeds = on_disk["protocol"]["report_seeds"]
    assert not set(on_disk["protocol"]["tuning_seeds"]) & set(seeds) and len(seeds) == 2
    assert [t["label"] for t in on_disk["tasks"]] == ["quadratic", "mlp_digits"]
    for task in on_disk["tasks"]:
        for key in ("steps", "curve_steps", "tuning", "optimizers", "speedup", "outcomes", "num_params"):
            assert key in task, key
        assert task["curve_steps"][0] == 0 and task["curve_steps"][-1] == task["steps"]
        for name in [LEARNED, "adam_default", "adam_tuned"]:
            entry = task["optimizers"][name]
            for key in ("final_train_loss", "final_valid_loss", "final_valid_accuracy", "diverged", "curve"):
                assert key in entry, (name, key)
            assert len(entry["curve"]["train_loss"]) == len(seeds)
            assert len(entry["curve"]["train_loss"][0]) == len(task["curve_steps"])
            assert math.isfinite(entry["final_train_loss"]) and entry["diverged"] == 0
        sp = task["speedup"][LEARNED]
        assert sp["speedup"] is not None and 0 <= sp["speedup"] <= on_disk["suite"]["speedup_horizon"]
        assert set(task["outcomes"][LEARNED]) == {"adam_default", "adam_tuned"}
    digits = on_disk["tasks"][1]["optimizers"]
    assert 0.0 <= digits["adam_tuned"]["final_valid_accuracy"] <= 1.0  # accuracy where defined
    assert on_disk["tasks"][0]["optimizers"]["adam_tuned"]["final_valid_accuracy"] is None  # quadratic: none
    counts = on_disk["summary"][LEARNED]["win_tie_loss"]["adam_tuned"]
    assert sum(counts.values()) == len(on_disk["tasks"])
    assert on_disk["summary"][LEARNED]["speedup_median"] is not None
    for task in on_disk["tasks"]:  # win_possible is consistent with the outcome
        if not task["win_possible"]["adam_tuned"]:
            assert task["outcomes"][LEARNED]["adam_tuned"] != "win"
    md = (out / "report.md").read_text()
    assert "| quadratic |" in md and "| mlp_digits |" in md and "win/tie/loss" in md


def test_tuned_adam_never_worse_than_default_on_tuning_seed(smoke):
    report, _ = smoke
    for task in report["tasks"]:
        tuning = task["tuning"]
        assert report["suite"]["default_lr"] in tuning["lr_grid"] and len(tuning["lr_grid"]) >= 8
        assert tuning["chosen_score"] <= tuning["default_lr_score"]
        assert tuning["chosen_score"] == min(tuning["scores"])
        assert task["optimizers"]["adam_tuned"]["lr"] == tuning["chosen_lr"]
    # on these easy tasks, tuning moves the learning rate somewhere useful
    assert any(t["tuning"]["chosen_lr"] != report["suite"]["default_lr"] for t in report["tasks"])


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
    first = evaluate_suite(opt, suite, progress=False)
    second = evaluate_suite(opt, suite, progress=False)
    task = first["tasks"][0]
    assert first["baselines"] == ["adam_default", "adam_tuned", "sgd_momentum"]
    assert first["protocol"]["tuning_seeds"] == [0, -1] and first["protocol"]["report_seeds"] == [1]
    assert task["outcomes"][LEARNED]["sgd_momentum"] in ("win", "tie", "loss")
    assert math.isfinite(task["optimizers"]["sgd_momentum"]["final_train_loss"])
    for name in (LEARNED, "adam_tuned", "sgd_momentum"):
        assert task["optimizers"][name]["curve"] == second["tasks"][0]["optimizers"][name]["curve"]
