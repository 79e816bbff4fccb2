"""The client check: user-style models and data, every optimizer run, tuned rates from the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lopt.eval import client_check as cc
from lopt.eval import client_models as cm


def test_digits_splits_are_disjoint_and_labelled():
    d = cm.digits()
    assert d["x"].shape == (cm.DIGITS_TRAIN, 64) and d["vx"].shape == (1797 - cm.DIGITS_TRAIN, 64)
    assert d["x"].min() >= 0 and d["x"].max() <= 1 and set(np.unique(d["y"])) == set(range(10))
    train = {r.tobytes() for r in d["x"]}
    assert sum(r.tobytes() in train for r in d["vx"]) < 10  # sklearn's digits hold a few exact duplicates
    assert cm.digits(rows=True)["x"].shape == (cm.DIGITS_TRAIN, 8, 8)


def test_character_windows_predict_the_next_character():
    c = cm.characters()
    assert c["x"].shape[1] == cm.CONTEXT and c["x"].shape == c["y"].shape
    np.testing.assert_array_equal(c["x"][:, 1:], c["y"][:, :-1])
    np.testing.assert_array_equal(c["x"][1:, 0], c["y"][:-1, -1])  # windows are contiguous, not overlapping
    assert c["x"].max() < 128 and len(c["vx"]) == cm.VALID_WINDOWS


def test_quick_check_runs_every_optimizer(tmp_path, capsys):
    assert cc.main(["--workloads", "gelu_mlp_10k", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "client_check_gelu_mlp_10k.json").read_text())
    assert set(res["optimizers"]) == {*cc.SHIPPED, "adam_default", "adam_tuned", "adamw_cosine", "prodigy"}
    for name, r in res["optimizers"].items():
        assert r["diverged"] == 0 and all(np.isfinite(r["final_train"] + r["best_valid"])), name
        assert (r["lr"] in res["lr_grid"]) == (name in ("adam_tuned", "adamw_cosine"))
    # Learning is happening: every optimizer ends below the loss of a uniform guess over 10 classes.
    assert max(max(r["best_valid"]) for r in res["optimizers"].values()) < np.log(10)
    md = (tmp_path / "client_check.md").read_text()
    assert "| gelu_mlp_10k | 200 | 1 |" in md and md in capsys.readouterr().out + "\n"


def test_results_of_several_processes_are_merged_in_workload_order(tmp_path):
    def fake(loss):
        r = {"final_train": [loss], "best_valid": [loss], "lr": None, "diverged": 0}
        return {"steps": 10, "seeds": [1], "optimizers": {"default": r, "adam_tuned": {**r, "lr": 1e-3},
                                                          "adamw_cosine": {**r, "lr": 1e-2}}}

    (tmp_path / "client_check_cnn1d.json").write_text(json.dumps(fake(0.5)))
    (tmp_path / "client_check_resmlp_layernorm.json").write_text(json.dumps(fake(2.0)))
    merged = cc.collect(tmp_path)
    assert list(merged) == ["resmlp_layernorm", "cnn1d"]  # WORKLOADS order, not file or alphabetical order
    table = cc.render(merged)
    assert table.index("| resmlp_layernorm | 10 | 1 | 2 |") < table.index("| cnn1d | 10 | 1 | 0.5 |")


@pytest.mark.parametrize("argv, message", [(["--workloads", "nope"], "unknown workload"),
                                           (["--seeds", "0"], "--seeds must be >= 1")])
def test_bad_arguments_get_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        cc.main(argv)
    assert message in capsys.readouterr().err


def test_training_run_takes_a_trained_optimizer():
    import jax

    import lopt

    w = cc.WORKLOADS["gelu_mlp_10k"]
    run = cc.training_run(w, lopt.pretrained("default").with_weight_decay(1e-2), 40)
    final, curve = run(jax.random.PRNGKey(1), 0.0)
    assert np.isfinite(float(final)) and curve.shape == (cc.NUM_EVALS,) and np.all(np.isfinite(curve))
