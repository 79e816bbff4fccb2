"""Fault injection against ``lopt train`` / ``lopt eval``: a table of bad inputs and faults.

Every case runs the real command line in this process (``lopt.cli.main``)
and asserts three things: the exit status, a one-line ``lopt: error: ...``
message naming the problem, and that nothing written before is lost (every
file of an earlier run keeps its bytes). Speed: one tiny config, and
``trainer.Engine`` is replaced by a cache so every run of the same config
reuses one compiled outer step; a refused input never compiles anything.
Ctrl-C needs a real process and is the only subprocess.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt
from lopt import cli
from lopt.metatrain import checkpoint, trainer
from lopt.metatrain.config import to_dict

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TINY = f"""
seed: 0
num_outer_steps: {STEPS}
tasks: [{{name: quadratic, num_tasks: 2}}]
optimizer: {{arch: learned_adam}}
unroll: {{truncation_length: 4, episode: log_uniform, min_episode_length: 3, max_episode_length: 9}}
estimator: {{kind: pes, std: 0.01}}
meta_opt: {{learning_rate: 1e-2, warmup_steps: 1}}
validation: {{tasks: [quadratic], every: 2, num_steps: 5, num_seeds: 1}}
log_every: 2
checkpoint_every: 1
keep_checkpoints: 5
progress: false
"""


def _strict_json(line: str):
    def bad(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(line, parse_constant=bad)


class _FakeValidator:
    """Validation records with a non-finite loss, as a diverging held-out task gives."""

    def __call__(self, meta_params):
        return [{"task": "quadratic", "valid_loss": float("inf"), "train_loss": float("nan"), "adam_valid_loss": 1.0}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A finished tiny run (``done``), its config file, and an Engine cache shared by all cases."""
    base = tmp_path_factory.mktemp("bad_inputs")
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY)
    engines: dict[str, trainer.Engine] = {}
    real_engine, real_validator = trainer.Engine, trainer._make_validator

    def cached(config, devices=None):
        key = json.dumps(to_dict(config), sort_keys=True)
        if key not in engines:
            engines[key] = real_engine(config, devices)
        return engines[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "Engine", cached)
    mp.setattr(trainer, "_make_validator", lambda engine: _FakeValidator())
    done = base / "done"
    assert cli.main(["train", "--config", str(cfg), "--out", str(done), "--no-progress"]) == 0
    yield {"base": base, "cfg": cfg, "done": done}
    mp.undo()
    assert real_engine is trainer.Engine and real_validator is trainer._make_validator


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _copy_run(env, name: str) -> Path:
    dst = env["base"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(env["done"], dst)
    return dst


def _ckpts(run: Path) -> list[Path]:
    return [p for _, p in checkpoint.list_checkpoints(run)]


# ---------------------------------------------------------------- setups: each returns (argv, protected dir)
def _train(env, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(env["cfg"]), "--out", str(run), "--no-progress", *extra]


def _config_file(text: str):
    def setup(env, tmp):
        path = tmp / "bad.yaml"
        path.write_text(text)
        run = _copy_run(env, f"cfg_{abs(hash(text))}")
        return ["train", "--config", str(path), "--out", str(run), "--no-progress"], run

    return setup


def _override(*sets: str):
    def setup(env, tmp):
        run = _copy_run(env, "override")
        return _train(env, run, *[a for s in sets for a in ("--set", s)]), run

    return setup


def _rerun_changed(env, tmp):
    run = _copy_run(env, "changed")
    return _train(env, run, "--set", "seed=5"), run


def _rerun_changed_partial(env, tmp):
    run = _copy_run(env, "changed_partial")
    (run / trainer.OPTIMIZER_FILE).unlink()
    for p in _ckpts(run)[-2:]:
        p.unlink()
    return _train(env, run, "--set", "meta_opt.learning_rate=3e-4"), run


def _all_checkpoints_corrupt(env, tmp):
    run = _copy_run(env, "all_corrupt")
    for p in _ckpts(run):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return _train(env, run), run


def _other_structure_allowed(env, tmp):
    run = _copy_run(env, "other_structure")
    return _train(env, run, "--allow-config-change", "--set", "tasks=[{name: quadratic, num_tasks: 3}]"), run


def _out_is_a_file(env, tmp):
    path = tmp / "a_file"
    path.write_text("keep me")
    return _train(env, path), tmp


def _eval(*argv: str, make=None):
    def setup(env, tmp):
        if make:
            make(tmp)
        return ["eval", *argv, "--suite", "smoke", "--out", str(tmp / "ev"), "--no-plots", "--quiet"], tmp

    return setup


def _shipped_default() -> Path:
    return Path(str(importlib.resources.files("lopt.pretrained"))) / "default.safetensors"


def _cut_optimizer(tmp: Path) -> None:
    (tmp / "cut.safetensors").write_bytes(_shipped_default().read_bytes()[:1000])


# id, setup, exit status, message pattern (searched in the one error line)
CASES = [
    ("grad_clip_nan", _override("meta_opt.grad_clip=.nan"), 2, r"meta_opt\.grad_clip: expected a finite number"),
    ("loss_clip_inf", _override("unroll.loss_clip=.inf"), 2, r"unroll\.loss_clip: expected a finite number"),
    ("std_nan", _override("estimator.std=.nan"), 2, r"estimator\.std: expected a finite number"),
    ("lr_nan", _override("meta_opt.learning_rate=.nan"), 2, r"meta_opt\.learning_rate"),
    ("kwargs_nan", _override("meta_opt.kwargs={b1: .nan}"), 2, r"meta_opt\.kwargs\.b1"),
    ("hparam_string", _override("optimizer.hparams.learning_rate=abc"), 2, r"optimizer\.hparams\.learning_rate"),
    ("hparam_inf", _override("optimizer.hparams.beta1=.inf"), 2, r"optimizer\.hparams\.beta1"),
    ("hparam_unknown", _override("optimizer.hparams.nope=1"), 2, r"optimizer\.hparams.*'nope'"),
    ("arch_unknown", _override("optimizer.arch=nope"), 2, r"optimizer\.arch: unknown architecture 'nope'"),
    ("loss_clip_negative", _override("unroll.loss_clip=-1"), 2, r"unroll\.loss_clip: must be > 0"),
    ("truncation_too_long", _override("unroll.truncation_length=50"), 2, r"unroll\.truncation_length: 50 is longer"),
    ("lr_negative", _override("meta_opt.learning_rate=-1e-3"), 2, r"meta_opt\.learning_rate: must be > 0"),
    ("steps_zero", _override("num_outer_steps=0"), 2, r"num_outer_steps: must be >= 1"),
    ("schedule_steps_negative", _override("meta_opt.schedule_steps=-5"), 2, r"meta_opt\.schedule_steps: must be >= 0"),
    ("seed_string", _override("seed=abc"), 2, r"seed: expected an integer"),
    ("steps_fraction", _override("num_outer_steps=2.5"), 2, r"num_outer_steps: expected an integer"),
    ("lr_not_a_number", _override("meta_opt.learning_rate=1e-3x"), 2, r"meta_opt\.learning_rate: expected a number"),
    ("unknown_key", _override("estimator.stdd=1"), 2, r"unknown config key 'estimator\.stdd'"),
    ("not_key_value", _override("seed"), 2, r"override 'seed' is not key=value"),
    ("bad_choice", _override("estimator.kind=sgd"), 2, r"estimator\.kind: 'sgd' is not one of"),
    ("unknown_task", _override("tasks=[nope]"), 2, r"unknown task or family 'nope'"),
    ("unknown_meta_opt", _override("meta_opt.name=nope"), 2, r"meta_opt\.name: 'nope' is not an optax optimizer"),
    ("empty_yaml", _config_file(""), 2, r"is empty"),
    ("comments_only_yaml", _config_file("# nothing here\n"), 2, r"is empty"),
    ("yaml_list", _config_file("- 1\n- 2\n"), 2, r"must hold a mapping"),
    ("yaml_syntax", _config_file("seed: [1,\n"), 2, r"is not valid YAML"),
    ("yaml_file_nan", _config_file("estimator: {std: .nan}\n"), 2, r"estimator\.std: expected a finite number"),
    ("missing_config", lambda env, tmp: (["train", "--config", str(tmp / "no.yaml"), "--out", str(env["done"])],
                                         env["done"]), 2, r"config file not found"),
    ("rerun_other_seed", _rerun_changed, 2, r"holds a run with another config \(seed: 0 -> 5\).*--allow-config-change"),
    ("rerun_partial_other_lr", _rerun_changed_partial, 2, r"meta_opt\.learning_rate: 0\.01 -> 0\.0003"),
    ("all_checkpoints_corrupt", _all_checkpoints_corrupt, 2, r"no intact checkpoint in .*ckpt_0+1\.safetensors"),
    ("other_structure_allowed", _other_structure_allowed, 2, r"written by a different configuration"),
    ("out_is_a_file", _out_is_a_file, 2, r"exists and is not a directory"),
    ("eval_folder_not_file", _eval("--optimizer", "somedir", make=lambda t: (t / "somedir").mkdir()), 2,
     r"somedir: is a directory, not an optimizer file"),
    ("eval_unknown_name", _eval("--optimizer", "nope"), 2, r"unknown optimizer 'nope'"),
    ("eval_missing_file", _eval("--optimizer", "x/opt.safetensors"), 2, r"optimizer file not found: x/opt"),
    ("eval_truncated_file", _eval("--optimizer", "cut.safetensors", make=_cut_optimizer), 2, r"cut\.safetensors: .*trunc"),
]


@pytest.mark.parametrize("name, setup, status, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(env, tmp_path, capsys, monkeypatch, name, setup, status, pattern):
    monkeypatch.chdir(tmp_path)
    argv, protected = setup(env, tmp_path)
    before = _snapshot(protected)
    capsys.readouterr()
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lopt: error: ")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in err
    after = _snapshot(protected)
    lost = [k for k, v in before.items() if after.get(k) != v]
    assert not lost, f"files changed or lost: {lost}"


def test_cases_are_many():
    assert len(CASES) >= 30


# ---------------------------------------------------------------- faults the run must survive
def test_the_finished_run_has_strict_json_metrics_and_metadata(env):
    done = env["done"]
    records = [_strict_json(line) for line in (done / trainer.METRICS_FILE).read_text().splitlines()]
    valid = [r for r in records if r.get("kind") == "validation"]
    assert valid and valid[0]["valid_loss"] == "inf" and valid[0]["train_loss"] == "nan"
    train = [r for r in records if "meta_loss" in r]
    assert [r["step"] for r in train] == [2, 4] and all(r["skipped_meta_steps_total"] == 0 for r in train)
    assert lopt.load(done / trainer.OPTIMIZER_FILE).metadata["skipped_meta_steps"] == 0


def test_rerunning_a_finished_run_with_its_own_config_changes_nothing(env, capsys):
    run = _copy_run(env, "same_again")
    before = _snapshot(run)
    assert cli.main(_train(env, run, "--set", "keep_checkpoints=9")) == 0  # bookkeeping keys may change
    after = _snapshot(run)
    assert all(after[k] == v for k, v in before.items() if k.startswith("ckpt_") or k == "metrics.jsonl")
    got = lopt.load(run / trainer.OPTIMIZER_FILE).meta_params
    want = lopt.load(env["done"] / trainer.OPTIMIZER_FILE).meta_params
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert "warning" not in capsys.readouterr().err


def test_corrupt_newest_checkpoint_falls_back_to_an_intact_one(env, capsys):
    run = _copy_run(env, "corrupt_newest")
    (run / trainer.OPTIMIZER_FILE).unlink()
    newest = _ckpts(run)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    older = {p.name: p.read_bytes() for p in _ckpts(run)[:-1]}
    capsys.readouterr()
    assert cli.main(_train(env, run)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and newest.name in warnings[0] and "resuming from" in warnings[0], err
    assert all((run / n).read_bytes() == b for n, b in older.items())  # nothing older was lost
    got = lopt.load(run / trainer.OPTIMIZER_FILE).meta_params
    want = lopt.load(env["done"] / trainer.OPTIMIZER_FILE).meta_params
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def test_a_damaged_checkpoint_with_intact_framing_is_detected(env, tmp_path):
    run = _copy_run(env, "bitflip")
    newest = _ckpts(run)[-1]
    raw = bytearray(newest.read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in the tensor data: safetensors itself cannot see it
    newest.write_bytes(bytes(raw))
    from lopt.metatrain.config import load_config

    engine = trainer.Engine(load_config(env["cfg"]))
    skipped: list[str] = []
    _, info = checkpoint.restore_latest(run, engine.state_shapes, on_skip=skipped.append)
    assert info["step"] == STEPS - 1 and len(skipped) == 1 and "checksum" in skipped[0]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_allow_config_change_continues_records_it_and_reports_skipped_meta_steps(env, capsys):
    """One extra compile for two behaviours: continuing with a changed config, and skipped meta-steps.

    ``estimator.std=1e-30`` makes 1/std**2 overflow float32, so every meta-gradient of the
    continued steps is non-finite and skipped; 8 of 12 is most of the run: a warning at the end.
    """
    run = _copy_run(env, "allowed")
    changed = ["--set", "num_outer_steps=12", "--set", "estimator.std=1e-30"]
    assert cli.main(_train(env, run, *changed)) == 2  # refused without the flag
    assert cli.main(_train(env, run, "--allow-config-change", *changed)) == 0
    out, err = capsys.readouterr()
    changes = ["estimator.std: 0.01 -> 1.0e-30", f"num_outer_steps: {STEPS} -> 12"]
    assert ", ".join(changes) in out
    assert "8 of 12 meta-steps (67%) were skipped" in err
    meta = lopt.load(run / trainer.OPTIMIZER_FILE).metadata
    assert meta["outer_steps"] == 12 and meta["skipped_meta_steps"] == 8
    assert meta["config_changes"] == [{"step": STEPS, "changes": changes}]
    records = [_strict_json(x) for x in (run / trainer.METRICS_FILE).read_text().splitlines()]
    assert [r["skipped_meta_steps_total"] for r in records if "meta_loss" in r] == [0, 0, 2, 4, 6, 8]
    assert "--allow-config-change" in _help(capsys)


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    return capsys.readouterr().out


def test_non_finite_metadata_never_loses_the_trained_optimizer(env, tmp_path):
    from lopt.metatrain.config import load_config

    engine = trainer.Engine(load_config(env["cfg"]))
    mp = engine.arch.init_meta_params(jax.random.PRNGKey(0))
    trainer._export(engine, mp, tmp_path, 1, extra={"x": float("inf"), "y": np.float32(2), "z": object()})
    meta = lopt.load(tmp_path / trainer.OPTIMIZER_FILE).metadata
    assert meta["x"] == "inf" and meta["y"] == 2.0 and isinstance(meta["z"], str)


def test_eval_default_resolves_to_the_shipped_optimizer_despite_a_folder(tmp_path, monkeypatch, capsys):
    from lopt.eval.optimizers import resolve_optimizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    name, opt, source = resolve_optimizer("default")
    assert (name, source) == ("default", "pretrained:default")
    assert "is a directory here" in capsys.readouterr().err
    shutil.copy(_shipped_default(), tmp_path / "mine")
    assert resolve_optimizer("mine")[2] == "mine"
    (tmp_path / "default").rmdir()
    (tmp_path / "mine").rename(tmp_path / "default")
    assert resolve_optimizer("default")[2] == "default"  # an existing file wins, with a note
    assert "pretrained:default" in capsys.readouterr().err
    assert resolve_optimizer("pretrained:default")[2] == "pretrained:default"


def test_a_missing_training_extra_names_the_install_command(monkeypatch, capsys):
    """`lopt recipe` on a deploy-only install (no `[train]` extra) is an install step to name, not a traceback."""
    import lopt.metatrain.cli_recipe as cli_recipe

    def missing(name):
        def main(args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return main

    monkeypatch.setattr(cli_recipe, "main", missing("yaml"))
    assert cli.main(["recipe", "default_v7", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "`lopt recipe` needs the meta-training extras" in err and "'yaml'" in err and "lopt[train]" in err
    monkeypatch.setattr(cli_recipe, "main", missing("not_an_extra"))  # any other missing module is a bug: raised
    with pytest.raises(ModuleNotFoundError):
        cli.main(["recipe", "default_v7", "--dry-run"])


# ---------------------------------------------------------------- Ctrl-C (a real process)
def test_ctrl_c_during_the_first_compile_exits_cleanly_keeping_everything(env, tmp_path):
    run = _copy_run(env, "sigint")
    (run / trainer.OPTIMIZER_FILE).unlink()
    for p in _ckpts(run)[2:]:
        p.unlink()
    before = _snapshot(run)
    stamp = (run / "config.json").stat().st_mtime_ns
    cmd = [sys.executable, "-m", "lopt.cli", *_train(env, run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # config.json is rewritten once the run is set up, just before the first outer step compiles
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (run / "config.json").stat().st_mtime_ns == stamp:
        time.sleep(0.005)
    time.sleep(0.2)  # into the first outer step's compile, most of the time
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    after = _snapshot(run)
    for name, data in before.items():  # earlier checkpoints and metrics are all still there
        if name.startswith("ckpt_"):
            assert after.get(name) == data, name
    assert {r["step"] for r in map(_strict_json, after["metrics.jsonl"].decode().splitlines())} >= {2}
    # the step in flight finished and was saved, or none had started and nothing new existed
    assert ("checkpoint saved" in err) == (checkpoint.list_checkpoints(run)[-1][0] > 2), err
