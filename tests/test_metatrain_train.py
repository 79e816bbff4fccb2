"""The meta-training loop: determinism, SIGKILL/Ctrl-C + resume, checkpoints, export.

One tiny config (learned_adam on two 10-d quadratics, truncations of 4,
episodes of 3-9 steps so resets happen inside truncations) and one Engine are
shared by all tests, so the outer step is compiled once in this process; the
two subprocesses share a persistent compilation cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lopt.metatrain import checkpoint
from lopt.metatrain.config import load_config
from lopt.metatrain.trainer import METRICS_FILE, OPTIMIZER_FILE, Engine, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
CONFIG_YAML = f"""
seed: 3
num_outer_steps: {STEPS}
tasks:
  - {{name: quadratic, num_tasks: 2}}
optimizer: {{arch: learned_adam}}
unroll: {{truncation_length: 4, episode: log_uniform, min_episode_length: 3, max_episode_length: 9}}
estimator: {{kind: pes, std: 0.01}}
meta_opt: {{learning_rate: 0.01, warmup_steps: 3}}
validation: {{every: 0}}
log_every: 5
checkpoint_every: 1
keep_checkpoints: 2
progress: false
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("metatrain")
    cfg_path = base / "tiny.yaml"
    cfg_path.write_text(CONFIG_YAML)
    config = load_config(cfg_path)
    engine = Engine(config)
    reference = jax.device_get(engine.run(engine.init_state(), 0, STEPS)["meta_params"])
    return base, cfg_path, config, engine, reference


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _spawn(cfg_path: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "lopt.cli", "train", "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = checkpoint.list_checkpoints(out)
        if found and found[-1][0] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def test_same_config_and_seed_give_identical_meta_params(setup):
    _, _, config, engine, reference = setup
    again = jax.device_get(engine.run(engine.init_state(), 0, STEPS)["meta_params"])
    assert _leaves_equal(again, reference)
    # and the meta-parameters really moved (the test would be vacuous otherwise)
    init = jax.device_get(engine.init_state()["meta_params"])
    assert not _leaves_equal(init, reference)


def test_ctrl_c_then_sigkill_then_resume_matches_uninterrupted(setup):
    base, cfg_path, config, engine, reference = setup
    out, cache = base / "killed", base / "jax_cache"
    # 1. Ctrl-C: the run saves a checkpoint and exits cleanly with status 130
    proc = _spawn(cfg_path, out, cache)
    _wait_for_checkpoint(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"checkpoint saved" in err
    first = checkpoint.list_checkpoints(out)[-1][0]
    assert 2 <= first < STEPS
    # 2. resumed, then SIGKILL-ed at an arbitrary moment (possibly mid-write)
    proc = _spawn(cfg_path, out, cache)
    _wait_for_checkpoint(proc, out, first + 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.list_checkpoints(out)[-1][0]
    assert first + 3 <= killed_at < STEPS
    assert len(checkpoint.list_checkpoints(out)) <= config.keep_checkpoints + 1  # +1 if killed before pruning
    # 3. resumed in this process to the end: identical to the uninterrupted run
    trained = train(config, out, engine=engine)
    assert _leaves_equal(jax.device_get(trained.meta_params), reference)
    steps = [json.loads(line)["step"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated or lost records
    assert (out / OPTIMIZER_FILE).is_file()
    assert not [p for p in os.listdir(out) if p.startswith(".tmp_")]


def test_checkpoint_from_another_config_is_refused(setup, tmp_path):
    _, _, config, engine, _ = setup
    state = engine.init_state()
    checkpoint.save(tmp_path, 5, {"meta_params": state["meta_params"]}, {"note": "partial"})
    with pytest.raises(checkpoint.CheckpointError, match="different configuration"):
        checkpoint.restore_latest(tmp_path, state)
    bad = checkpoint.checkpoint_path(tmp_path, 6)
    bad.write_bytes(b"not a safetensors file")
    # a damaged newest file is skipped, but an older one of another config is still refused
    with pytest.raises(checkpoint.CheckpointError, match="different configuration"):
        checkpoint.restore_latest(tmp_path, state)
    checkpoint.checkpoint_path(tmp_path, 5).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint .*corrupted"):
        checkpoint.restore_latest(tmp_path, state)


def test_init_from_warm_starts_from_an_optimizer_file(setup, tmp_path):
    """``optimizer.init_from`` replaces the random init; another architecture is a clear error."""
    from lopt.metatrain.config import ConfigError

    base, cfg_path, config, engine, reference = setup
    from lopt.metatrain.trainer import _export

    _export(engine, reference, tmp_path, STEPS)
    warm = load_config(cfg_path, [f"optimizer.init_from={tmp_path / OPTIMIZER_FILE}"])
    state = Engine(warm).init_state()
    assert _leaves_equal(jax.device_get(state["meta_params"]), reference)
    assert not _leaves_equal(jax.device_get(engine.init_state()["meta_params"]), reference)
    other = load_config(cfg_path, [f"optimizer.init_from={tmp_path / OPTIMIZER_FILE}", "optimizer.hparams={learning_rate: 0.01}"])
    with pytest.raises(ConfigError, match="optimizer.init_from: .* holds LearnedAdam"):
        Engine(other).init_state()
    missing = load_config(cfg_path, [f"optimizer.init_from={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(ConfigError, match="optimizer.init_from: cannot read"):
        Engine(missing).init_state()


def test_a_resumed_warm_start_does_not_need_its_init_file(setup, tmp_path):
    """Once a warm-started run has a checkpoint, its ``init_from`` file may be gone."""
    import shutil

    from lopt.metatrain.config import ConfigError
    from lopt.metatrain.trainer import _export

    base, cfg_path, config, engine, reference = setup
    _export(engine, reference, tmp_path, STEPS)
    init = tmp_path / "stage_before.safetensors"
    shutil.move(tmp_path / OPTIMIZER_FILE, init)
    warm = load_config(cfg_path, [f"optimizer.init_from={init}"])
    warm_engine = Engine(warm)
    first = train(warm, tmp_path / "run", progress=False, engine=warm_engine)
    init.unlink()
    again = train(warm, tmp_path / "run", progress=False, engine=warm_engine)  # resumes at the end: no init read
    assert _leaves_equal(again.meta_params, first.meta_params)
    with pytest.raises(ConfigError, match="optimizer.init_from: cannot read"):
        train(warm, tmp_path / "fresh_run", progress=False, engine=warm_engine)


def test_a_run_cut_short_on_its_planned_schedule_is_the_planned_runs_checkpoint(setup):
    """``meta_opt.schedule_steps`` keeps the meta-learning-rate schedule of a longer run; without it the shorter
    run anneals sooner and ends elsewhere."""
    base, cfg_path, config, engine, reference = setup
    cut = STEPS // 2
    planned = jax.device_get(engine.run(engine.init_state(), 0, cut)["meta_params"])
    short = load_config(cfg_path, [f"num_outer_steps={cut}", f"meta_opt.schedule_steps={STEPS}"])
    short_engine = Engine(short)
    got = jax.device_get(short_engine.run(short_engine.init_state(), 0, cut)["meta_params"])
    assert _leaves_equal(got, planned)
    annealed = Engine(load_config(cfg_path, [f"num_outer_steps={cut}"]))
    other = jax.device_get(annealed.run(annealed.init_state(), 0, cut)["meta_params"])
    assert not _leaves_equal(other, planned)
