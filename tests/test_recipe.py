"""Recipes: one YAML file of stages, run by `lopt recipe`, provenance written into the result."""

import json

import pytest

import lopt
from lopt.cli import main
from lopt.metatrain.config import ConfigError
from lopt.metatrain.recipe import file_sha256, load_recipe, parse_recipe

TINY = """
name: tiny
description: two tiny stages
base:
  seed: 3
  num_outer_steps: 2
  tasks: [{name: quadratic, num_tasks: 2}]
  unroll: {truncation_length: 4, episode: constant, episode_length: 8}
  validation: {every: 0}
  checkpoint_every: 2
stages:
  - {name: first}
  - name: second
    set: {seed: 4, optimizer.init_from: previous, meta_opt: {learning_rate: 3e-4}}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    path = root / "tiny.yaml"
    path.write_text(TINY)
    out = root / "out"
    assert main(["recipe", str(path), "--out", str(out), "--no-progress"]) == 0
    return path, out


def test_stages_merge_over_the_base_and_previous_is_the_stage_before():
    recipe = parse_recipe(TINY)
    first, second = recipe.stages
    assert (first.config.seed, second.config.seed) == (3, 4)
    assert second.config.meta_opt.learning_rate == 3e-4 and first.config.meta_opt.learning_rate != 3e-4
    assert second.config.unroll.truncation_length == 4  # untouched keys come from the base
    assert second.init_from_previous and not first.init_from_previous


def test_run_writes_provenance_into_the_final_file(finished):
    path, out = finished
    meta = lopt.load(out / "optimizer.safetensors").metadata
    assert meta["recipe"]["name"] == "tiny" and meta["recipe"]["text"] == TINY
    assert [s["name"] for s in meta["stages"]] == ["first", "second"]
    for stage in meta["stages"]:
        assert stage["sha256"] == file_sha256(out / stage["name"] / "optimizer.safetensors")
        assert stage["wall_s"] > 0 and stage["cpu_s"] >= 0
    # the second stage warm-started from exactly the first stage's result
    assert meta["stages"][1]["init_from_sha256"] == meta["stages"][0]["sha256"]
    assert meta["stages"][1]["config"]["optimizer"]["init_from"] == str(out / "first" / "optimizer.safetensors")
    assert meta["compute"]["wall_s"] == pytest.approx(sum(s["wall_s"] for s in meta["stages"]))


def test_rerun_skips_finished_stages(finished, capsys):
    path, out = finished
    before = {p.name: p.stat().st_mtime_ns for p in (out / "second").iterdir()}
    assert main(["recipe", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "done already" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "second").iterdir()} == before


def test_an_edited_recipe_is_refused_in_the_same_out(finished, capsys, tmp_path):
    path, out = finished
    edited = tmp_path / "tiny.yaml"
    edited.write_text(TINY.replace("seed: 4", "seed: 5"))
    assert main(["recipe", str(edited), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / "recipe.json").read_text())["stages"]["second"]["seed"] == 4  # nothing lost


@pytest.mark.parametrize(
    "text, match",
    [
        ("stages: []", "non-empty list"),
        ("stages: [{name: a, bogus: 1}]", "unknown key 'bogus'"),
        ("stages: [{name: a, set: {optimizer.init_from: previous}}]", "first stage"),
        ("stages: [{name: a}, {name: a}]", "unique"),
        ("stages: [{name: a, set: {estimator.std: -1}}]", "estimator.std"),
        ("base: no_such_config\nstages: [{name: a}]", "no_such_config"),
        ("stages: [{name: a, set: {num_outer_stepz: 3}}]", "num_outer_stepz"),
    ],
)
def test_bad_recipes_are_one_clear_error(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(text)


def test_cli_lists_and_dry_runs_shipped_recipes(capsys):
    assert main(["recipe", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "default_v1" in names
    assert main(["recipe", "default_v1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "5. polish" in plan and "from previous stage" in plan
    assert main(["recipe", "no_such_recipe"]) == 2
    assert "unknown recipe 'no_such_recipe'" in capsys.readouterr().err


def test_every_shipped_recipe_validates():
    from lopt import configs

    for name in configs.names("recipes"):
        recipe = load_recipe(name)
        assert recipe.stages and recipe.name == name


def test_shipped_files_name_the_recipe_that_made_them():
    """A shipped optimizer's provenance is a committed recipe whose last stage is the config stored in the file."""
    from pathlib import Path

    from lopt.metatrain.config import TrainConfig, from_dict, to_dict
    from lopt.metatrain.recipe import stage_config

    checked = 0
    for name in lopt.pretrained():
        meta = lopt.pretrained(name).metadata
        if not isinstance(meta.get("recipe"), dict):
            continue  # trained before recipes existed and never re-recorded (e.g. hyper_mup)
        committed = load_recipe(meta["recipe"]["name"])
        assert committed.sha256 == meta["recipe"]["sha256"] == parse_recipe(meta["recipe"]["text"]).sha256, name
        last = to_dict(stage_config(committed, len(committed.stages) - 1, Path("out")))
        stored = to_dict(from_dict(TrainConfig, meta["config"]))  # keys added since it was saved take defaults
        blank = lambda c: {**c, "optimizer": {**c["optimizer"], "init_from": ""}}
        assert blank(last) == blank(stored), name
        assert [s["name"] for s in meta["stages"]] == [s.name for s in committed.stages], name
        checked += 1
    assert checked >= 1
