"""Meta-training configuration: typed frozen dataclasses, loaded from YAML.

The dataclass defaults *are* the default configuration (the reference
setting: ``small_fc`` on 8 ``mlp_digits`` tasks, PES with truncations of 20,
episodes of 2000); ``configs/train/default.yaml`` only mirrors them, so
``lopt train`` works without any file. YAML is read with a safe loader (no
object construction) and checked field by field: an unknown key or a value of
the wrong type is a :class:`ConfigError` naming the dotted key
(``estimator.std``), never a deep traceback. ``--set key=value`` overrides use
the same dotted keys, with the value parsed as YAML
(``--set unroll.param_scale_range=[0.5,2]``).

Numbers: YAML 1.1 (PyYAML) reads ``3e-4`` and ``1e3`` as *strings* (its float
pattern wants a dot and a signed exponent); :func:`yaml_load` also resolves
every float literal a user would type (``3e-4``, ``1E3``, ``.5e-2``). A
non-finite number is refused wherever a finite one is meant; where infinity
means something (``meta_opt.grad_clip: .inf`` is "no clipping") it is stored
as the equivalent finite value (0 = off), so every config stays strict JSON.
An integer field accepts an integral float (``num_outer_steps: 1e4``).

``mup: true`` selects the muP mode of :mod:`lopt.mup` (the muLO recipe): the
architecture runs as ``for_mup(arch)`` and every task's per-layer muP factors
multiply the optimizer's updates; every training and validation task must then
be a muP task (``tasks/mup.py``), which :mod:`lopt.metatrain.build` checks.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from lopt import architectures, configs
from lopt.base import OptimizerError, check_hparams

from lopt.metatrain.estimators import FULL_ES_EPISODES, NONFINITE_MODES
from lopt.metatrain.unroll import LOSS_TRANSFORMS, META_LOSSES, MetaTrainError


class ConfigError(MetaTrainError):
    """A training configuration is malformed (the message names the key)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One entry of the training mixture: a registered task or task family.

    A family's static variants become separate vmapped groups sharing
    ``num_tasks`` slots by the family's weights (at least one each).
    ``overrides`` replace fields of the task's frozen dataclass (of every
    variant, for a family), as in evaluation suites: ``{batch_size: 16}``.
    """

    name: str = "mlp_digits"
    num_tasks: int = 8
    sample_hparams: bool = True
    overrides: dict = dataclasses.field(default_factory=dict)


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
    max_episode_length: int = 2000  # also full_es's constant episode length under log_uniform
    stagger: bool = True
    loss_clip: float = 10.0  # normalized losses above this (or non-finite) count as this
    param_scale_range: tuple[float, float] = (1.0, 1.0)  # augmentation, log-uniform; (1,1) = off
    loss_scale_range: tuple[float, float] = (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    kind: str = "pes"  # pes | es | full_es | backprop
    std: float = 0.01
    sign: bool = False  # full_es only: sign-ES
    # full_es only: longest (every task runs the schedule's longest episode) | sampled (each task runs one whole
    # episode of a length drawn from the schedule, so a log-uniform schedule's lengths all occur in one step)
    episodes: str = "longest"
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
    # The horizon the schedule is planned for (0: num_outer_steps). Set it above num_outer_steps to stop a run
    # early on its planned schedule: the result is then the planned run's checkpoint at num_outer_steps.
    schedule_steps: int = 0
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


# ---------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``3E4``, ``.5e2`` as floats (YAML 1.2 does)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely, with every usual float literal read as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# Float keys where infinity means something, and the finite value that means the same.
INFINITE_MEANS = {"meta_opt.grad_clip": 0.0}  # no clipping (0 = off)


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
        _check_finite_inside(value, key)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # 1e4 written for 10000
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            if key in INFINITE_MEANS and value == math.inf:
                return INFINITE_MEANS[key]
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _check_finite_inside(value: Any, key: str) -> None:
    """Free-form mappings (hparams, kwargs): no NaN or infinity anywhere inside."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite_inside(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite_inside(v, f"{key}[{i}]")


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
        value = yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {text!r} is not valid YAML ({err.__class__.__name__})") from None
    set_dotted(raw, key.strip(), value, "override ")


def set_dotted(raw: dict, key: str, value: Any, where: str = "") -> None:
    """Set dotted ``key`` (``meta_opt.learning_rate``) in a raw config mapping, creating sections.

    ``where`` prefixes the error (e.g. ``"override "``) when a step of the
    path is a value rather than a section.
    """
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}{key}: {p!r} is not a section")
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
            loaded = yaml_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
        if loaded is None:  # empty or only comments: never run the defaults by surprise
            raise ConfigError(
                f"config file {str(path)!r} is empty; write the keys to change, or leave out --config "
                "(or use --config default) for the built-in defaults"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        raw = loaded
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
        "estimator.nonfinite": (config.estimator.nonfinite, NONFINITE_MODES),
        "estimator.loss_transform": (config.estimator.loss_transform, LOSS_TRANSFORMS),
        "estimator.episodes": (config.estimator.episodes, FULL_ES_EPISODES),
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
    if config.estimator.episodes != "longest" and config.estimator.kind != "full_es":
        raise ConfigError(f"estimator.episodes: {config.estimator.episodes!r} applies to full_es only, "
                          f"not {config.estimator.kind!r}; remove it or set estimator.kind: full_es")
    if config.unroll.max_episode_length < config.unroll.min_episode_length:
        raise ConfigError("unroll.max_episode_length: must be >= unroll.min_episode_length")
    for key in ("param_scale_range", "loss_scale_range"):
        lo, hi = getattr(config.unroll, key)
        if not 0 < lo <= hi:
            raise ConfigError(f"unroll.{key}: need 0 < low <= high, got [{lo}, {hi}]")
    u = config.unroll
    if u.loss_clip <= 0:  # every clipped term would be constant: all meta-gradients zero
        raise ConfigError(f"unroll.loss_clip: must be > 0 (normalized losses above it count as it), got {u.loss_clip}")
    longest = u.episode_length if u.episode == "constant" else u.max_episode_length
    if config.estimator.kind != "full_es" and u.truncation_length > longest:
        which = "unroll.episode_length" if u.episode == "constant" else "unroll.max_episode_length"
        raise ConfigError(
            f"unroll.truncation_length: {u.truncation_length} is longer than the longest episode ({which} {longest}); "
            f"use at most {longest}"
        )
    m = config.meta_opt
    if m.learning_rate <= 0:
        raise ConfigError(f"meta_opt.learning_rate: must be > 0, got {m.learning_rate}")
    for key, value in (("meta_opt.grad_clip", m.grad_clip), ("meta_opt.final_lr_fraction", m.final_lr_fraction),
                       ("meta_opt.warmup_steps", m.warmup_steps), ("meta_opt.schedule_steps", m.schedule_steps),
                       ("validation.every", config.validation.every)):
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    _check_arch(config.optimizer)
    _check_names(config)


def _check_names(config: TrainConfig) -> None:
    """Task and meta-optimizer names, so a typo is refused before a run directory is touched."""
    import optax

    from lopt.tasks import registry

    known = registry.task_names() + registry.family_names()
    for i, spec in enumerate(config.tasks):
        if spec.name not in known:
            raise ConfigError(f"tasks[{i}].name: unknown task or family {spec.name!r}; valid names: {', '.join(known)}")
        if spec.overrides:
            from lopt.metatrain.build import resolve_tasks

            resolve_tasks(spec, where=f"tasks[{i}].overrides")
    if config.validation.every > 0:
        for i, name in enumerate(config.validation.tasks):
            if name not in registry.task_names():
                raise ConfigError(
                    f"validation.tasks[{i}]: unknown task {name!r}; valid tasks: {', '.join(registry.task_names())}"
                )
    if not callable(getattr(optax, config.meta_opt.name, None)) or config.meta_opt.name.startswith("_"):
        raise ConfigError(f"meta_opt.name: {config.meta_opt.name!r} is not an optax optimizer (e.g. adam, adamw, sgd, lion)")


def _check_arch(opt: OptimizerConfig) -> None:
    """The architecture and its hyperparameters, before anything is built or compiled."""
    cls = architectures.REGISTRY.get(opt.arch)
    if cls is None:
        raise ConfigError(f"optimizer.arch: unknown architecture {opt.arch!r}; valid: {', '.join(architectures.names())}")
    for name, value in opt.hparams.items():
        try:
            check_hparams(cls, {name: value})
        except OptimizerError as err:
            raise ConfigError(f"optimizer.hparams.{name}: {str(err).split(': ', 1)[-1]} ({opt.arch})") from None
    try:
        architectures.get(opt.arch, **opt.hparams)
    except (OptimizerError, TypeError) as err:
        raise ConfigError(f"optimizer.hparams: {err}") from None
