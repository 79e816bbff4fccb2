"""Training configs: defaults, YAML files, overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lopt.metatrain.build import build_estimator, build_meta_optimizer, build_unroller
from lopt.metatrain.config import ConfigError, TrainConfig, load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


def test_default_yaml_mirrors_the_dataclass_defaults():
    assert load_config(None) == TrainConfig()
    assert yaml.safe_load((CONFIGS / "default.yaml").read_text()) == to_dict(TrainConfig())


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_build(name):
    config = load_config(CONFIGS / name)
    unroller = build_unroller(config)
    assert unroller.num_tasks >= 1
    build_meta_optimizer(config)


def test_reference_config_is_the_benchmark_setting():
    c = load_config(CONFIGS / "reference.yaml")
    u = build_unroller(c)
    assert (c.optimizer.arch, c.estimator.kind, u.truncation_length, u.num_branches) == ("small_fc", "pes", 20, 2)
    assert u.num_tasks == 8 and u.schedule.longest == 2000
    assert u.groups[0].task.num_params() == 2410


def test_full_es_runs_whole_episodes_of_the_schedules_longest():
    """full_es ignores ``unroll.episode_length`` (the constant schedule's key) under a log-uniform schedule."""
    log_uniform = ["estimator.kind=full_es", "unroll.episode=log_uniform", "unroll.min_episode_length=50",
                   "unroll.max_episode_length=200", "unroll.episode_length=2000", "tasks=[quadratic]"]
    u = build_unroller(load_config(None, log_uniform))
    assert (u.schedule.kind, u.schedule.longest, u.truncation_length, u.stagger) == ("constant", 200, 200, False)
    u = build_unroller(load_config(None, ["estimator.kind=full_es", "unroll.episode_length=300", "tasks=[quadratic]"]))
    assert (u.schedule.longest, u.truncation_length) == (300, 300)


def test_full_es_sampled_episodes_keep_the_schedule_and_only_full_es_takes_them():
    sampled = ["estimator.kind=full_es", "estimator.episodes=sampled", "unroll.episode=log_uniform",
               "unroll.min_episode_length=50", "unroll.max_episode_length=200", "tasks=[quadratic]"]
    c = load_config(None, sampled)
    u = build_unroller(c)
    assert (u.schedule.kind, u.schedule.min_length, u.truncation_length, u.stagger) == ("log_uniform", 50, 200, False)
    assert build_estimator(c, u).episodes == "sampled"
    with pytest.raises(ConfigError, match="estimator.episodes.*full_es only"):
        load_config(None, ["estimator.kind=es", "estimator.episodes=sampled", "tasks=[quadratic]"])
    with pytest.raises(ConfigError, match="estimator.episodes: 'every'"):
        load_config(None, ["estimator.kind=full_es", "estimator.episodes=every", "tasks=[quadratic]"])


def test_overrides_parse_values_as_yaml():
    c = load_config(None, ["estimator.std=0.05", "unroll.param_scale_range=[0.5, 2]", "tasks=[quadratic]"])
    assert c.estimator.std == 0.05
    assert c.unroll.param_scale_range == (0.5, 2.0)
    assert c.tasks[0].name == "quadratic" and c.tasks[0].num_tasks == 8


@pytest.mark.parametrize(
    "override, key",
    [
        ("estimator.stdd=0.1", "estimator.stdd"),
        ("unrol.truncation_length=3", "unrol"),
        ("estimator.std=abc", "estimator.std"),
        ("unroll.truncation_length=2.5", "unroll.truncation_length"),
        ("unroll.stagger=3", "unroll.stagger"),
        ("unroll.param_scale_range=[1]", "unroll.param_scale_range"),
        ("tasks=[{name: quadratic, num_task: 3}]", "tasks[0].num_task"),
        ("estimator.kind=sgd", "estimator.kind"),
        ("unroll.truncation_length=0", "unroll.truncation_length"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_bad_names_and_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="unknown task or family 'nope'"):
        build_unroller(load_config(None, ["tasks=[nope]"]))
    with pytest.raises(ConfigError, match="meta_opt.name"):
        build_meta_optimizer(load_config(None, ["meta_opt.name=not_an_optimizer"]))


def test_task_overrides_change_every_group_of_the_entry():
    """A mixture entry's ``overrides`` reach the unroller's tasks (each variant of a family), lists as tuples."""
    c = load_config(None, ["tasks=[{name: mlp_digits, num_tasks: 2, overrides: {batch_size: 16, hidden: [48]}},"
                           " {name: digits_cnn_family, num_tasks: 4, overrides: {batch_size: 24}}]"])
    groups = build_unroller(c).groups
    assert (groups[0].task.batch_size, groups[0].task.hidden, groups[0].num_tasks) == (16, (48,), 2)
    assert len(groups) == 5 and {g.task.batch_size for g in groups[1:]} == {24}
    plain = build_unroller(load_config(None, ["tasks=[{name: mlp_digits, num_tasks: 2}]"])).groups[0].task
    assert plain.batch_size == 128 and plain.hidden == (32,)


@pytest.mark.parametrize(
    "override, message",
    [
        ("tasks=[{name: mlp_digits, overrides: {batch_sze: 16}}]", r"tasks\[0\].overrides: unknown override 'batch_sze'"),
        ("tasks=[{name: mlp_digits, overrides: {batch_size: 0}}]", r"tasks\[0\].overrides: bad overrides .*batch_size"),
        ("tasks=[quadratic, {name: mlp_digits, overrides: [1]}]", r"tasks\[1\].overrides: expected a mapping"),
    ],
)
def test_bad_task_overrides_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
