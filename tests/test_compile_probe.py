"""The compile probe: child processes per XLA flag set, time limits, and the choice it reports."""

from __future__ import annotations

import json

import pytest

from lopt.eval import compile_probe as cp


def _row(variant, **kw):
    return {"variant": variant, "flags": cp.VARIANTS[variant], "finished": "step_s" in kw, "timed_out": False, **kw}


def test_pick_prefers_default_codegen_and_falls_back():
    rows = [_row("default", compile_s=50.0, step_s=1.0), _row("no_triton_gemm", compile_s=20.0, step_s=1.0),
            _row("llvm_o1", compile_s=5.0, step_s=3.0), {**_row("no_loop_unroll"), "timed_out": True}]
    assert cp.pick(rows) == "no_triton_gemm"  # llvm_o1 compiles faster but lowers the code's optimization
    assert cp.pick([rows[2], rows[3]]) == "llvm_o1"  # nothing else finished
    assert cp.pick([rows[3]]) is None


def test_parse_keeps_the_last_phase_and_ignores_other_output():
    out = "\n".join([
        "some XLA warning",
        json.dumps({"variant": "default", "phase": "lowered", "lower_s": 1.5}),
        json.dumps({"variant": "other", "phase": "compiled", "compile_s": 9.0}),
        json.dumps({"variant": "default", "phase": "compiled", "compile_s": 2.5}),
    ])
    row = cp._parse(out, "default")
    assert row["lower_s"] == 1.5 and row["compile_s"] == 2.5 and not row["finished"]


def test_all_variant_combines_the_others():
    for name, flags in cp.VARIANTS.items():
        if name not in ("default", "all"):
            assert flags in cp.VARIANTS["all"]


def test_probe_runs_a_child_per_variant_and_times_out(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert cp.main(["--config", "smoke", "--variants", "default", "--timeout", "240", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["finished"] and rows[0]["compile_s"] > 0 and rows[0]["inner_steps_per_s"] > 0
    assert json.loads(out.read_text())["picked"] == "default"
    assert "| default |" in capsys.readouterr().out
    # A limit too short to import JAX and compile: reported as timed out, nothing picked.
    rows = cp.run_variants("smoke", [], ["default"], timeout=1.0, parallel=True)
    assert rows[0]["timed_out"] and not rows[0]["finished"] and cp.pick(rows) is None


@pytest.mark.parametrize("argv, message", [
    (["--variants", "bogus"], "unknown variant"),
    (["--config", "no_such_config"], "unknown train config"),
    (["--timeout", "0"], "--timeout must be > 0"),
])
def test_bad_arguments_get_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        cp.main(argv)
    assert message in capsys.readouterr().err
