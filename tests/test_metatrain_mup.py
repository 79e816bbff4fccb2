"""The muP mode of meta-training (``mup: true``): per-layer factors reach the optimizer and the file.

One tiny config (learned_adam on one width-128 muP MLP, truncations of 2) is
trained for one outer step; everything else is checked without compiling.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lopt
from lopt.metatrain import build
from lopt.metatrain.config import ConfigError, load_config
from lopt.metatrain.trainer import OPTIMIZER_FILE, train

CONFIG_YAML = """
seed: 0
num_outer_steps: 1
mup: true
tasks:
  - {name: mup_mlp_digits, num_tasks: 1}
optimizer: {arch: learned_adam}
unroll: {truncation_length: 2, episode: constant, episode_length: 4}
validation: {every: 0}
log_every: 1
checkpoint_every: 1
progress: false
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("mup_train")
    cfg = base / "mup.yaml"
    cfg.write_text(CONFIG_YAML)
    config = load_config(cfg)
    train(config, base / "run", progress=False)
    return config, base / "run"


def test_mup_config_trains_one_step_and_file_records_mup(trained):
    config, out = trained
    assert config.mup is True
    opt = lopt.load(out / OPTIMIZER_FILE)
    assert opt.metadata["mup"] is True
    assert opt.metadata["config"]["mup"] is True
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(opt.meta_params))


def test_unroller_passes_the_tasks_mup_factors(trained):
    config, _ = trained
    unroller = build.build_unroller(config)
    (group,) = unroller.groups
    scales = unroller.update_scales(group)
    # width 128, base 32: the hidden matrix gets 32/128, every other leaf 1
    assert scales["hidden_0"]["w"] == pytest.approx(0.25)
    assert scales["input"]["w"] == 1.0 and scales["readout"]["w"] == 1.0
    shapes = jax.eval_shape(lambda k: unroller.init_state(unroller.arch.init_meta_params(k), k), jax.random.PRNGKey(0))
    assert shapes[0].branches.opt_state.scales["hidden_0"]["w"].shape == (1, 2)  # (tasks, branches)
    off = build.build_unroller(load_config(overrides=["mup=false", "tasks=[mup_mlp_digits]"]))
    assert off.update_scales(off.groups[0]) is None


def test_mup_mode_adapts_hyper_and_refuses_non_mup_tasks():
    arch = build.build_arch(load_config(overrides=["mup=true", "optimizer.arch=hyper"]))
    assert arch.scale_by_param_rms is False
    assert build.build_arch(load_config(overrides=["optimizer.arch=hyper"])).scale_by_param_rms is True
    with pytest.raises(ConfigError, match="mup: true needs muP tasks.*mlp_digits"):
        build.build_unroller(load_config(overrides=["mup=true", "validation.every=0"]))
    with pytest.raises(ConfigError, match="validation.tasks"):
        build.build_unroller(load_config(overrides=["mup=true", "tasks=[mup_mlp_digits]"]))
    with pytest.raises(ConfigError, match="mup"):
        load_config(overrides=["mup=yes please"])


def test_evaluation_applies_the_factors_the_file_asks_for(trained):
    from lopt.eval.evaluate import learned_optax, uses_mup
    from lopt.eval.suite import EvalError, load_suite, parse_suite
    from lopt.tasks.mup import MupMLP

    _, out = trained
    opt = lopt.load(out / OPTIMIZER_FILE)
    plain = parse_suite({"tasks": [{"task": "mup_mlp_digits", "steps": 5}]})
    assert plain.mup is False and uses_mup(opt, plain)  # the file's metadata says mup
    assert load_suite("mup_generalization").mup and not load_suite("mup_generalization_sp").mup
    task = MupMLP(width=64)
    params = task.init(jax.random.PRNGKey(0))
    state = learned_optax(opt, task, 5, mup=True).init(params)
    assert float(state.scales["hidden_0"]["w"]) == pytest.approx(0.5)  # 32 / 64
    state = learned_optax(opt, task, 5, mup=False).init(params)
    assert float(state.scales["hidden_0"]["w"]) == 1.0
    with pytest.raises(EvalError, match="mup"):
        parse_suite({"mup": "yes", "tasks": [{"task": "mup_mlp_digits", "steps": 5}]})
