"""Meta-training configuration: typed frozen dataclasses, loaded from YAML.

The dataclass defaults *are* the default configuration (the reference
setting: ``small_fc`` on 8 ``mlp_digits`` tasks, PES with truncations of 20,
episodes of 2000); ``configs/train/default.yaml`` only mirrors them, so
``lopt train`` works without any file. YAML is read with ``yaml.safe_load``
and checked field by field: an unknown key or a value of the wrong type is a
:class:`ConfigError` naming the dotted key (``estimator.std``), never a deep
traceback. ``--set key=value`` overrides use the same dotted keys, with the
value parsed as YAML (``--set unroll.param_scale_range=[0.5,2]``).

``mup: true`` selects the muP mode of :mod:`lopt.mup` (the muLO recipe): the
architecture runs as ``for_mup(arch)`` and every task's per-layer muP factors
multiply the optimizer's updates; every training and validation task must then
be a muP task (``tasks/mup.py``), which :mod:`lopt.metatrain.build` checks.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from lopt import configs

from lopt.metatrain.unroll import LOSS_TRANSFORMS, META_LOSSES, MetaTrainError


class ConfigError(MetaTrainError):
    """A training configuration is malformed (the message names the key)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One entry of the training mixture: a registered task or task family.

    A family's static variants become separate vmapped groups sharing
    ``num_tasks`` slots by the family's weights (at least one each).
    """

    name: str = "mlp_digits"
    num_tasks: int = 8
    sample_hparams: bool = True


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    arch: str = "small_fc"
    hparams: dict = dataclasses.field(default_factory=dict)
    # Warm start: an optimizer file (lopt format) whose meta-parameters replace the
    # random init; its architecture must equal the configured one. "" = fresh init.
    init_from: str = ""
    # Let the configured architecture differ from the file's in the options its
    # class lists in extension_options (small_fc: learned_schedule,
    # schedule_decay_init, centered); added tensors start fresh. See
    # build.load_init_meta_params.
    init_from_partial: bool = False


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
    truncation_length: int = 20
    episode: str = "constant"  # constant | log_uniform
    episode_length: int = 2000  # constant schedule
    min_episode_length: int = 100  # log_uniform schedule
    max_episode_length: int = 2000
    stagger: bool = True
    loss_clip: float = 10.0  # normalized losses above this (or non-finite) count as this
    param_scale_range: tuple[float, float] = (1.0, 1.0)  # augmentation, log-uniform; (1,1) = off
    loss_scale_range: tuple[float, float] = (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    kind: str = "pes"  # pes | es | full_es | backprop
    std: float = 0.01
    sign: bool = False  # full_es only: sign-ES
    meta_loss: str = "mean"  # mean | valid | last
    # identity | log: log puts equal weight on every halving of the loss. log is the default: with identity the
    # first steps of every episode dominate the meta-gradient (BENCHMARKS.md, "The main job's fresh optimizer").
    loss_transform: str = "log"
    progress_weight: float = 0.0  # >= 0: the last step of an episode weighs 1 + this times its first
    nonfinite: str = "clip"  # clip | mask


@dataclasses.dataclass(frozen=True)
class MetaOptConfig:
    name: str = "adam"  # any optax optimizer taking learning_rate
    learning_rate: float = 3e-3  # 3e-4 moved small_fc too little in the main job's 2,000 steps; 1e-2 was unstable
    schedule: str = "warmup_cosine"  # constant | cosine | warmup_cosine | linear
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0  # global-norm clip of the meta-gradient; 0 = off
    kwargs: dict = dataclasses.field(default_factory=dict)  # extra optax arguments (b1, weight_decay, ...)


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    tasks: tuple[str, ...] = ("mlp_digits_tanh",)  # held-out tasks, trained from scratch
    every: int = 500  # outer steps; 0 = never
    num_steps: int = 300  # inner steps per validation run
    num_seeds: int = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    num_outer_steps: int = 2000
    mup: bool = False  # muP mode (lopt/mup.py): per-layer update factors of muP tasks
    tasks: tuple[TaskSpec, ...] = (TaskSpec(),)
    optimizer: OptimizerConfig = OptimizerConfig()
    unroll: UnrollConfig = UnrollConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    meta_opt: MetaOptConfig = MetaOptConfig()
    validation: ValidationConfig = ValidationConfig()
    log_every: int = 10
    checkpoint_every: int = 100  # outer steps
    keep_checkpoints: int = 3
    progress: bool = True


# ---------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against an annotation; errors name ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is TaskSpec:
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(names)}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def to_dict(config: Any) -> Any:
    """A config as plain JSON/YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {text!r} is not valid YAML ({err.__class__.__name__})") from None
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    if path is not None:
        try:
            path = configs.resolve("train", path)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        raw = loaded or {}
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(TrainConfig, raw)
    check(config)
    return config


def check(config: TrainConfig) -> None:
    """Value checks beyond types (positive sizes, known choices)."""
    choices = {
        "estimator.kind": (config.estimator.kind, ("pes", "es", "full_es", "backprop")),
        "estimator.meta_loss": (config.estimator.meta_loss, META_LOSSES),
        "estimator.nonfinite": (config.estimator.nonfinite, ("clip", "mask")),
        "estimator.loss_transform": (config.estimator.loss_transform, LOSS_TRANSFORMS),
        "unroll.episode": (config.unroll.episode, ("constant", "log_uniform")),
        "meta_opt.schedule": (config.meta_opt.schedule, ("constant", "cosine", "warmup_cosine", "linear")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(valid)}")
    positive = {
        "num_outer_steps": config.num_outer_steps,
        "unroll.truncation_length": config.unroll.truncation_length,
        "unroll.episode_length": config.unroll.episode_length,
        "unroll.min_episode_length": config.unroll.min_episode_length,
        "log_every": config.log_every,
        "checkpoint_every": config.checkpoint_every,
        "keep_checkpoints": config.keep_checkpoints,
        "validation.num_steps": config.validation.num_steps,
        "validation.num_seeds": config.validation.num_seeds,
    }
    for i, spec in enumerate(config.tasks):
        positive[f"tasks[{i}].num_tasks"] = spec.num_tasks
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if not config.tasks:
        raise ConfigError("tasks: need at least one task")
    if config.estimator.std <= 0:
        raise ConfigError(f"estimator.std: must be > 0, got {config.estimator.std}")
    if not config.estimator.progress_weight >= 0:
        raise ConfigError(f"estimator.progress_weight: must be >= 0, got {config.estimator.progress_weight}")
    if config.unroll.max_episode_length < config.unroll.min_episode_length:
        raise ConfigError("unroll.max_episode_length: must be >= unroll.min_episode_length")
    for key in ("param_scale_range", "loss_scale_range"):
        lo, hi = getattr(config.unroll, key)
        if not 0 < lo <= hi:
            raise ConfigError(f"unroll.{key}: need 0 < low <= high, got [{lo}, {hi}]")

