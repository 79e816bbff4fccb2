"""``lopt bench --quick`` writes bench.json with every field (step time + memory: 2 small compiles)."""

from __future__ import annotations

import json

import pytest

from lopt.eval.bench import parse_parts
from lopt.eval.errors import EvalError


def test_bench_quick_writes_json(tmp_path, capsys):
    from lopt.cli import main

    rc = main(["bench", "--quick", "--only", "step_time,memory", "--architectures", "small_fc,pretrained:default",
               "--steps", "10", "--out", str(tmp_path)])
    assert rc == 0
    assert "x adam" in capsys.readouterr().out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "step_time", "memory", "settings"} <= set(result)
    assert result["machine"]["cpu_count"] >= 1
    model = result["step_time"]["models"]["mlp_digits"]
    for v in model["learned"].values():  # the ratio is the two measured times, not a separate number
        assert v["ratio_to_adam"] == pytest.approx(v["ms_per_step"] / model["adam_ms_per_step"])
    mem = result["memory"]["mlp_digits"]
    assert mem["num_params"] == 2410
    assert 8.0 <= mem["adam_bytes_per_param"] < 8.1  # two float32 moments (+ a step counter)
    # --architectures selects the optimizers measured; pretrained:NAME is a shipped one with its own options
    assert set(mem["learned"]) == {"small_fc", "pretrained:default"}
    assert set(model["learned"]) == {"small_fc", "pretrained:default"}
    assert mem["learned"]["small_fc"]["bytes_per_param"] > mem["adam_bytes_per_param"]
    assert (tmp_path / "bench.md").exists()


def test_bench_rejects_unknown_names(capsys):
    from lopt.cli import main

    with pytest.raises(EvalError, match="unknown bench part 'speed'"):
        parse_parts("step_time,speed")
    assert main(["bench", "--only", "memory", "--models", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["bench", "--only", "memory", "--architectures", "pretrained:nope"]) == 2
    assert "unknown architecture 'pretrained:nope'" in capsys.readouterr().err
    assert main(["bench", "--only", "memory", "--architectures", "pretrained:default@gpu"]) == 2
    assert "unknown implementation 'gpu'" in capsys.readouterr().err
    assert main(["bench", "--only", "memory", "--architectures", "pretrained:default@pallas"]) == 2  # CPU here
    assert "Pallas's interpreter" in capsys.readouterr().err


def test_bench_large_part_reports_every_optimizer_against_adam_and_adamw(tmp_path):
    """``--only large`` in quick mode (a small stand-in for the 10.5M model): fields and exact state sizes."""
    from lopt.cli import main
    from lopt.eval import bench_large

    rc = main(["bench", "--quick", "--only", "large", "--architectures", "small_fc,learned_adam", "--out", str(tmp_path)])
    assert rc == 0
    large = json.loads((tmp_path / "bench.json").read_text())["large"]
    assert large["num_params"] == bench_large.num_params((64, 128, 128, 64))
    opts = large["optimizers"]
    assert set(opts) == {"adam", "adamw", "small_fc", "learned_adam"}
    for v in opts.values():
        assert {"full_step_ms", "full_step_x_adam", "ns_per_param", "ns_per_param_x_adam", "state_x_adam"} <= set(v)
    assert opts["adam"]["full_step_x_adam"] == 1.0 and opts["adam"]["ns_per_param_x_adam"] == 1.0
    # learned_adam keeps Adam's two moments per parameter; small_fc four, plus factored rows/columns
    assert opts["learned_adam"]["state_x_adam"] == pytest.approx(1.0, abs=1e-3)
    assert 2.0 < opts["small_fc"]["state_x_adam"] < 2.1
    assert "Large model" in (tmp_path / "bench.md").read_text()
