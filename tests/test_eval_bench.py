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
    assert model["adam_ms_per_step"] > 0
    assert model["learned"]["small_fc"]["ratio_to_adam"] > 0
    mem = result["memory"]["mlp_digits"]
    assert mem["num_params"] == 2410
    assert 8.0 <= mem["adam_bytes_per_param"] < 8.1  # two float32 moments (+ a step counter)
    # --architectures selects the optimizers measured; pretrained:NAME is a shipped one with its own options
    assert set(mem["learned"]) == {"small_fc", "pretrained:default"}
    assert model["learned"]["pretrained:default"]["ratio_to_adam"] > 0
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
