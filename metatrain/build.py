"""Turn a :class:`~lopt.metatrain.config.TrainConfig` into the engine's pure pieces.

Kept apart from the training loop so tests, the throughput benchmark and the
trainer all build exactly the same architecture, task groups, estimator and
meta-optimizer from one config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optax

from lopt import architectures
from lopt.base import LearnedOptimizer
from lopt.mup import for_mup
from lopt.metatrain.config import ConfigError, MetaOptConfig, TaskSpec, TrainConfig
from lopt.metatrain.estimators import ESTIMATORS
from lopt.metatrain.unroll import Augmentation, EpisodeSchedule, Group, Unroller
from lopt.tasks import registry
from lopt.tasks.base import Task, TaskError


def resolve_tasks(spec: TaskSpec, where: str = "tasks") -> list[Group]:
    """A task name gives one group; a family name one group per static variant (overrides applied to each)."""
    if spec.name in registry.task_names():
        variants, counts = [registry.get_task(spec.name)], [spec.num_tasks]
    elif spec.name in registry.family_names():
        family = registry.get_family(spec.name)
        variants = list(family.tasks)
        counts = [max(1, round(w * spec.num_tasks)) for w in family.normalized_weights()]
    else:
        valid = ", ".join(registry.task_names() + registry.family_names())
        raise ConfigError(f"{where}: unknown task or family {spec.name!r}; valid names: {valid}")
    try:
        variants = [registry.with_overrides(t, spec.overrides, where) for t in variants]
    except TaskError as err:
        raise ConfigError(str(err)) from None
    return [Group(task, n, spec.sample_hparams) for task, n in zip(variants, counts)]


def resolve_task(name: str) -> Task:
    if name not in registry.task_names():
        raise ConfigError(f"validation.tasks: unknown task {name!r}; valid tasks: {', '.join(registry.task_names())}")
    return registry.get_task(name)


def build_arch(config: TrainConfig) -> LearnedOptimizer:
    """The configured architecture; in the muP mode as :func:`lopt.mup.for_mup` adapts it."""
    arch = architectures.get(config.optimizer.arch, **config.optimizer.hparams)
    return for_mup(arch) if config.mup else arch


def load_init_meta_params(config: TrainConfig, arch: LearnedOptimizer) -> Any | None:
    """Meta-parameters of ``optimizer.init_from`` (a warm start), or None for a fresh init.

    By default the file's architecture (name and every hyperparameter) must
    equal the configured one, else a ConfigError. Structure and shapes need no
    second check then: :func:`lopt.load` already rebuilds the meta-parameters
    against the file's architecture and refuses any mismatch.

    With ``optimizer.init_from_partial`` the configured architecture may
    differ from the file's in the options its class lists in
    ``extension_options`` (e.g. ``small_fc``'s ``learned_schedule``, which
    adds meta-parameters, or ``centered``, which uses the same ones
    differently): the file's tensors are then placed into a fresh init by
    :func:`overlay_meta_params` and any added ones keep their fresh values.
    This is how a later stage of a recipe changes an already trained optimizer
    without starting over.
    """
    path = config.optimizer.init_from
    if not path:
        return None
    import jax

    from lopt import load
    from lopt.base import OptimizerError

    try:
        trained = load(init_from_file(path))
    except (OSError, OptimizerError) as err:
        raise ConfigError(f"optimizer.init_from: cannot read {path!r}: {err}") from None
    if config.optimizer.init_from_partial:
        extensible = arch.extension_options
        if type(trained.arch) is not type(arch) or any(
            getattr(trained.arch, f.name) != getattr(arch, f.name)
            for f in dataclasses.fields(arch)
            if f.name not in extensible
        ):
            raise ConfigError(
                f"optimizer.init_from: {path!r} holds {trained.arch!r}; with init_from_partial the config's "
                f"{arch!r} may differ from it only in {', '.join(extensible) or '(no options of this architecture)'}"
            )
    elif trained.arch != arch:
        raise ConfigError(f"optimizer.init_from: {path!r} holds {trained.arch!r}, but the config builds {arch!r}")
    return jax.tree.map(np.asarray, trained.meta_params)


def init_from_file(value: str) -> Path:
    """The file ``optimizer.init_from`` names: a path, or ``pretrained:NAME`` for a shipped optimizer.

    The shipped name works from any directory (a relative path to the
    package's file only from the repository root); a recipe records the
    file's SHA-256, which pins the weights a name meant when it ran.
    """
    from lopt.pretrained import PREFIX, path_of

    return path_of(value[len(PREFIX):]) if value.startswith(PREFIX) else Path(value)


def overlay_meta_params(fresh: Any, loaded: Any, where: str = "meta_params") -> Any:
    """``fresh`` with every tensor that ``loaded`` holds replaced by the loaded one.

    Both are nested dicts of arrays (the plain meta-parameter pytree). Every
    key of ``loaded`` must exist in ``fresh`` with the same shape (a clear
    ConfigError names the first that does not); keys only ``fresh`` has keep
    their fresh values. With equal structures the result is ``loaded``.
    """
    if isinstance(loaded, dict):
        if not isinstance(fresh, dict):
            raise ConfigError(f"optimizer.init_from: {where} is a tensor in the configured architecture, a group in the file")
        missing = sorted(set(loaded) - set(fresh))
        if missing:
            raise ConfigError(f"optimizer.init_from: {where} has no {missing[0]!r} in the configured architecture")
        return {k: overlay_meta_params(v, loaded[k], f"{where}.{k}") if k in loaded else v for k, v in fresh.items()}
    if isinstance(fresh, dict) or np.shape(fresh) != np.shape(loaded):
        raise ConfigError(
            f"optimizer.init_from: {where} has shape {np.shape(loaded)} in the file, "
            f"{'a group' if isinstance(fresh, dict) else np.shape(fresh)} in the configured architecture"
        )
    return loaded


def check_mup_tasks(config: TrainConfig, groups: tuple[Group, ...]) -> None:
    """In the muP mode every training and validation task must expose ``mup_scales``."""
    if not config.mup:
        return
    tasks = [(f"tasks ({g.task.name})", g.task) for g in groups]
    if config.validation.every > 0:
        tasks += [(f"validation.tasks ({name})", resolve_task(name)) for name in config.validation.tasks]
    for where, task in tasks:
        if not callable(getattr(task, "mup_scales", None)):
            raise ConfigError(f"mup: true needs muP tasks (tasks/mup.py, e.g. mup_mlp_family); {where} is not one")


def build_unroller(config: TrainConfig, arch: LearnedOptimizer | None = None) -> Unroller:
    arch = build_arch(config) if arch is None else arch
    groups = tuple(g for spec in config.tasks for g in resolve_tasks(spec))
    check_mup_tasks(config, groups)
    u, e = config.unroll, config.estimator
    schedule = EpisodeSchedule(u.episode, u.episode_length, u.min_episode_length, u.max_episode_length)
    truncation, stagger = u.truncation_length, u.stagger
    if e.kind == "full_es":  # whole episodes from a fresh start every outer step (FullES.episodes)
        if e.episodes == "longest":
            schedule = EpisodeSchedule("constant", schedule.longest)
        truncation, stagger = schedule.longest, False
    return Unroller(
        arch=arch,
        groups=groups,
        truncation_length=truncation,
        schedule=schedule,
        num_branches=1 if e.kind == "backprop" else 2,
        meta_loss=e.meta_loss,
        loss_transform=e.loss_transform,
        progress_weight=e.progress_weight,
        stagger=stagger,
        augment=Augmentation(tuple(u.param_scale_range), tuple(u.loss_scale_range)),
        loss_clip=u.loss_clip,
        mup=config.mup,
    )


def build_estimator(config: TrainConfig, unroller: Unroller | None = None) -> Any:
    unroller = build_unroller(config) if unroller is None else unroller
    e = config.estimator
    cls = ESTIMATORS[e.kind]
    if e.kind == "backprop":
        return cls(unroller, nonfinite=e.nonfinite)
    if e.kind == "full_es":
        return cls(unroller, std=e.std, nonfinite=e.nonfinite, sign=e.sign, episodes=e.episodes)
    return cls(unroller, std=e.std, nonfinite=e.nonfinite)


def build_schedule(cfg: MetaOptConfig, num_steps: int) -> optax.Schedule:
    lr, end = cfg.learning_rate, cfg.learning_rate * cfg.final_lr_fraction
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(1, num_steps), alpha=cfg.final_lr_fraction)
    if cfg.schedule == "linear":
        return optax.linear_schedule(lr, end, max(1, num_steps))
    warmup = min(cfg.warmup_steps, max(0, num_steps - 1))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(warmup + 1, num_steps), end_value=end)


def build_meta_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Optional global-norm clip, then any optax optimizer (by name) on a schedule."""
    cfg = config.meta_opt
    factory = getattr(optax, cfg.name, None)
    if not callable(factory) or cfg.name.startswith("_"):
        raise ConfigError(f"meta_opt.name: {cfg.name!r} is not an optax optimizer (e.g. adam, adamw, sgd, lion)")
    try:
        opt = factory(learning_rate=build_schedule(cfg, cfg.schedule_steps or config.num_outer_steps), **cfg.kwargs)
    except TypeError as err:
        raise ConfigError(f"meta_opt: optax.{cfg.name} rejected its arguments: {err}") from None
    if not isinstance(opt, optax.GradientTransformation):
        raise ConfigError(f"meta_opt.name: optax.{cfg.name} did not return a gradient transformation")
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt

