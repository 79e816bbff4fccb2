"""Recipes: a multi-stage meta-training curriculum as one YAML file, run by one command.

A recipe is data, not a shell line: a ``base`` training config (a mapping, or
the name/path of a training config) and an ordered list of ``stages``, each a
``name`` and the keys it changes (``set``: dotted keys such as
``meta_opt.learning_rate`` or nested mappings, merged over the base)::

    name: default_v2
    description: what it is for
    base: {seed: 0, num_outer_steps: 2000, tasks: [...], ...}
    stages:
      - {name: explore, set: {num_outer_steps: 3000}}
      - {name: polish, set: {optimizer.init_from: previous, meta_opt.learning_rate: 3.0e-4}}

``optimizer.init_from: previous`` warm-starts a stage from the stage before.
:func:`run_recipe` trains stage after stage into ``OUT/<stage>/`` with the
ordinary trainer, so each stage checkpoints and resumes as ``lopt train``
does, and a rerun skips stages already finished. Provenance (the recipe text,
each stage's full config, seed, outer steps, wall and CPU time and the SHA-256
of its result) is kept in ``OUT/recipe.json`` as stages finish, and written
into the metadata of the final ``OUT/optimizer.safetensors``: a shipped file
says exactly how it was made, and nobody writes that by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from lopt import configs
from lopt.io import json_safe
from lopt.metatrain.config import ConfigError, TrainConfig, check, from_dict, set_dotted, to_dict, yaml_load

PREVIOUS = "previous"  # optimizer.init_from value: the stage before's result
STATE_FILE = "recipe.json"
OPTIMIZER_FILE = "optimizer.safetensors"
_TOP_KEYS = {"name", "description", "base", "stages"}
_STAGE_KEYS = {"name", "set", "description"}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: TrainConfig
    init_from_previous: bool
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: tuple[Stage, ...]
    text: str  # the recipe file as written (stored in the provenance)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _merge(raw: dict, key: str, value: Any, where: str) -> None:
    """Set dotted ``key`` in ``raw``; a mapping value is merged key by key."""
    if isinstance(value, dict):
        for k, v in value.items():
            _merge(raw, f"{key}.{k}", v, where)
        return
    set_dotted(raw, key, value, f"{where}: ")


def _base_mapping(base: Any, where: str) -> dict:
    if isinstance(base, dict):
        return base
    if isinstance(base, str):
        try:
            path = configs.resolve("train", base)
        except FileNotFoundError as err:
            raise ConfigError(f"{where}: base: {err}") from None
        loaded = yaml_load(path.read_text())
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: base config {base!r} must hold a mapping")
        return loaded
    raise ConfigError(f"{where}: base must be a config mapping or the name/path of a training config")


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """Validate a recipe's YAML text into a :class:`Recipe` (every stage's config checked)."""
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with keys {', '.join(sorted(_TOP_KEYS))}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_TOP_KEYS))}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}: stages must be a non-empty list")
    base = _base_mapping(raw.get("base", {}), where)
    stages, seen = [], set()
    for i, st in enumerate(stages_raw):
        at = f"{where}: stages[{i}]"
        if not isinstance(st, dict):
            raise ConfigError(f"{at} must be a mapping with keys name, set")
        bad = sorted(set(st) - _STAGE_KEYS)
        if bad:
            raise ConfigError(f"{at}: unknown key {bad[0]!r}; valid keys: {', '.join(sorted(_STAGE_KEYS))}")
        name = st.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name in seen:
            raise ConfigError(f"{at}: name must be a unique, non-empty folder name, got {name!r}")
        seen.add(name)
        merged = json.loads(json.dumps(base))  # a deep copy of plain YAML data
        overrides = st.get("set") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{at}: set must be a mapping of dotted keys to values")
        for key, value in overrides.items():
            _merge(merged, str(key), value, at)
        init_from = merged.get("optimizer", {}).get("init_from", "") if isinstance(merged.get("optimizer"), dict) else ""
        previous = init_from == PREVIOUS
        if previous:
            if i == 0:
                raise ConfigError(f"{at}: optimizer.init_from: previous, but it is the first stage")
            merged["optimizer"]["init_from"] = ""  # filled in at run time with the previous stage's file
        try:
            config = from_dict(TrainConfig, merged)
            check(config)
        except ConfigError as err:
            raise ConfigError(f"{at} ({name}): {err}") from None
        stages.append(Stage(name, config, previous, str(st.get("description", ""))))
    return Recipe(str(raw.get("name") or "recipe"), str(raw.get("description", "")), tuple(stages), text)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by shipped name (``lopt recipe --list``) or by path."""
    try:
        path = configs.resolve("recipes", name_or_path)
    except FileNotFoundError as err:
        raise ConfigError(str(err).replace("recipes config", "recipe")) from None
    return parse_recipe(path.read_text(), where=str(path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_config(recipe: Recipe, index: int, out: Path) -> TrainConfig:
    """Stage ``index``'s config with ``init_from: previous`` resolved to a file under ``out``."""
    stage = recipe.stages[index]
    if not stage.init_from_previous:
        return stage.config
    prev = out / recipe.stages[index - 1].name / OPTIMIZER_FILE
    opt = dataclasses.replace(stage.config.optimizer, init_from=str(prev))
    return dataclasses.replace(stage.config, optimizer=opt)


def _read_state(out: Path, recipe: Recipe) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        return {"recipe": recipe.name, "recipe_sha256": recipe.sha256, "stages": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable recipe record ({err}); move it away to start over") from None
    if state.get("recipe_sha256") != recipe.sha256:
        raise ConfigError(
            f"{out} holds a run of another recipe (or an edited one: {STATE_FILE} records a different SHA-256); "
            "choose another --out"
        )
    return state


def _write_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(json_safe(state), indent=1, sort_keys=True))
    os.replace(tmp, out / STATE_FILE)


def machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU core(s), Python {platform.python_version()}"


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    train_fn: Callable[[TrainConfig, Path], Any],
    log: Callable[[str], None] = print,
) -> Path:
    """Run every stage not yet finished, then write ``out/optimizer.safetensors`` with the provenance.

    ``train_fn(config, stage_dir)`` is the trainer (``lopt.metatrain.trainer.train``
    with the caller's options bound); it resumes a stage that was interrupted.
    """
    from lopt.metatrain.build import init_from_file  # a file path or pretrained:NAME; imports jax, so here

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out, recipe)
    for i, stage in enumerate(recipe.stages):
        stage_dir = out / stage.name
        result = stage_dir / OPTIMIZER_FILE
        done = state["stages"].get(stage.name)
        if done and result.is_file() and file_sha256(result) == done.get("sha256"):
            log(f"stage {i + 1}/{len(recipe.stages)} {stage.name}: done already ({done['wall_s']:.0f} s)")
            continue
        config = stage_config(recipe, i, out)
        log(f"stage {i + 1}/{len(recipe.stages)} {stage.name}: {config.num_outer_steps} outer steps into {stage_dir}")
        resumed = stage_dir.is_dir() and any(stage_dir.glob("ckpt_*"))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        train_fn(config, stage_dir)
        state["stages"][stage.name] = {
            "index": i,
            "config": to_dict(config),
            "seed": config.seed,
            "outer_steps": config.num_outer_steps,
            "init_from_sha256": (file_sha256(init_from_file(config.optimizer.init_from))
                                     if config.optimizer.init_from else ""),
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": time.process_time() - cpu0,
            "resumed": resumed,  # times then cover only the part run by the invocation that finished it
            "sha256": file_sha256(result),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
        }
        _write_state(out, state)
    return write_final(recipe, out, state)


def write_final(recipe: Recipe, out: Path, state: dict) -> Path:
    """The last stage's optimizer with the whole recipe's provenance in its metadata."""
    from lopt.trained import load

    stages = [state["stages"][s.name] for s in recipe.stages]
    last = load(out / recipe.stages[-1].name / OPTIMIZER_FILE)
    provenance = {
        "recipe": {"name": recipe.name, "description": recipe.description, "sha256": recipe.sha256, "text": recipe.text},
        "stages": [
            {"name": s.name, **{k: v for k, v in rec.items() if k != "index"}} for s, rec in zip(recipe.stages, stages)
        ],
        "compute": {
            "wall_s": sum(r["wall_s"] for r in stages),
            "cpu_s": sum(r["cpu_s"] for r in stages),
            "machine": stages[-1]["machine"],
            "any_stage_resumed": any(r["resumed"] for r in stages),
        },
    }
    final = out / OPTIMIZER_FILE
    last.save(final, provenance=json_safe(provenance))
    return final
