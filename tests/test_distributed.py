"""Sharded and multi-host meta-training give the single-device result.

JAX fixes its device count when it starts, so every check runs in a
subprocess: this file doubles as the worker script (``python
tests/test_distributed.py devices CONFIG OUT``). One tiny config (two
quadratic groups of 4 and 2 tasks, so one group is split over all devices
and one only partly; PES with resets inside truncations; a constant meta
learning rate so a resumed run equals an uninterrupted one) is used for:

* 1 device vs 4 forced host devices in one process: same meta-parameters;
* 2 processes x 2 devices on localhost (gloo CPU collectives) via
  ``lopt train --distributed``, resuming from a checkpoint the single-device
  run wrote halfway (so every process must read it, and the checkpoint must
  not depend on the device layout): process 0 alone writes, and the result is
  the single-device result.

Every subprocess has a timeout, so a broken collective fails the test
instead of hanging it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TIMEOUT_S = 240
CONFIG_YAML = f"""
seed: 5
num_outer_steps: {STEPS}
tasks:
  - {{name: quadratic, num_tasks: 4}}
  - {{name: quadratic_ill, num_tasks: 2}}
optimizer: {{arch: learned_adam}}
unroll: {{truncation_length: 4, episode: log_uniform, min_episode_length: 3, max_episode_length: 9}}
estimator: {{kind: pes, std: 0.01}}
meta_opt: {{learning_rate: 0.01, schedule: constant}}
validation: {{every: 0}}
log_every: 1
checkpoint_every: 1
keep_checkpoints: 2
progress: false
"""


def _env(num_devices: int, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=str(ROOT),
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(tree) -> np.ndarray:
    import jax

    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Run the device-count worker once; its single-device result is the reference."""
    base = tmp_path_factory.mktemp("distributed")
    cfg = base / "tiny.yaml"
    cfg.write_text(CONFIG_YAML)
    cmd = [sys.executable, __file__, "devices", str(cfg), str(base / "reference.npy"), str(base / "two_procs")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(4, base / "cache"), capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return base, cfg, report, np.load(base / "reference.npy")


def test_four_devices_match_one_device(setup):
    _, _, report, _ = setup
    assert report["num_devices"] == 4
    # the 4-task group is split one task per device, the 2-task group over 2 devices
    assert report["shard_rows"] == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert report["distinct_shards"] == [4, 2]
    assert report["moved"] > 1e-4  # the meta-parameters really changed
    assert report["max_abs_diff"] <= 1e-5 * max(1.0, report["max_abs"])


def _launch_pair(cfg: Path, out: Path, cache: Path) -> list[subprocess.CompletedProcess]:
    """``lopt train --distributed`` as 2 processes x 2 CPU devices; both must exit."""
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "lopt.cli", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
        cmd += ["--distributed", "--coordinator", f"127.0.0.1:{port}"]
        cmd += ["--num-processes", "2", "--process-id", str(pid)]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(2, cache), **pipes))
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r in results:
        assert r.returncode == 0, r.stderr.decode()[-3000:]
    return results


def _our_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What lopt printed (gloo's C++ logging shares the streams)."""
    text = (result.stdout + result.stderr).decode()
    return [line for line in text.splitlines() if line.startswith("lopt")]


def test_two_processes_resume_and_match_one_device(setup):
    from lopt.metatrain import checkpoint

    base, cfg, _, reference = setup
    out = base / "two_procs"
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [STEPS // 2]  # written by the 1-device run
    first, second = _launch_pair(cfg, out, base / "cache")
    assert any("wrote" in line for line in _our_lines(first))
    assert _our_lines(second) == []  # only process 0 reports and writes
    found = checkpoint.list_checkpoints(out)
    assert found[-1][0] == STEPS
    arrays, _ = checkpoint._read(found[-1][1])
    meta = np.concatenate([np.ravel(v) for k, v in sorted(arrays.items()) if k.startswith("['meta_params']")])
    assert meta.shape == reference.shape
    np.testing.assert_allclose(meta, reference, rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS // 2 + 1, STEPS + 1))  # resumed; one writer: no duplicated records
    assert (out / "optimizer.safetensors").is_file()


def test_bad_process_flags_are_one_line_errors(capsys):
    from lopt.cli import main

    assert main(["train", "--distributed", "--num-processes", "2", "--process-id", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lopt: error: process id 2 is not in [0, 2)"
    assert main(["train", "--num-processes", "0"]) == 2  # any multi-host flag implies --distributed
    assert "number of processes must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------- worker (subprocess side)
def _devices_worker(cfg_path: str, reference_path: str, ckpt_dir: str) -> None:
    import jax

    from lopt.metatrain import checkpoint
    from lopt.metatrain.config import load_config, to_dict
    from lopt.metatrain.trainer import Engine

    config = load_config(cfg_path)
    one = Engine(config, devices=jax.devices()[:1])
    init = one.gather(one.init_state())["meta_params"]
    half = one.run(one.init_state(), 0, STEPS // 2)
    info = {"config": to_dict(config), "arch": one.arch.arch}
    checkpoint.save(ckpt_dir, STEPS // 2, one.gather(half), info)
    ref = one.gather(one.run(half, STEPS // 2, STEPS))["meta_params"]
    many = Engine(config)
    state = many.run(many.init_state(), 0, STEPS)
    got = many.gather(state)["meta_params"]
    # checkpoint keys are sorted key paths: save the reference in that order
    leaves = jax.tree_util.tree_flatten_with_path(ref)[0]
    ordered = [np.ravel(np.asarray(x)) for _, x in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0]))]
    np.save(reference_path, np.concatenate(ordered))
    steps = [g.slots.step for g in state["est"].groups]
    report = {
        "num_devices": many.mesh.num_devices,
        "shard_rows": [[s.data.shape[0] for s in x.addressable_shards] for x in steps],
        "distinct_shards": [len({s.index[0].start for s in x.addressable_shards}) for x in steps],
        "moved": float(np.max(np.abs(_flat(ref) - _flat(init)))),
        "max_abs": float(np.max(np.abs(_flat(ref)))),
        "max_abs_diff": float(np.max(np.abs(_flat(ref) - _flat(got)))),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "devices":
        _devices_worker(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown worker mode {sys.argv[1]!r}")
