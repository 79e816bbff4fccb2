"""The muP mode of learned optimizers: per-layer update factors from a muP task.

Why: under muP (see ``tasks/mup.py``) the right update of a hidden matrix
shrinks like ``1 / width``; a learned optimizer meta-trained at small widths
does not know that. The muLO recipe multiplies the optimizer's per-parameter
output by the layer's muP factor, so the *learned* part only has to be right
at the base width and the factors carry it to any width.

How the pieces meet:

* a muP task exposes ``task.mup_scales(params_or_shapes) -> pytree of floats``
  (1 for input layers, embeddings, biases, norms and the readout;
  ``base_fan_in / fan_in`` for hidden matrices);
* :func:`update_scales_for` turns that into the ``update_scales`` pytree of
  ``LearnedOptimizer.init(meta_params, params, num_steps, update_scales=...)``
  and ``TrainedOptimizer.as_optax(num_steps, update_scales=...)``; the base
  class multiplies every raw update leaf by its factor (exactly: one float32
  multiply);
* :func:`for_mup` adapts the architecture: one that scales updates by the
  parameter RMS (``hyper``'s ``scale_by_param_rms``) would count the width
  twice, so it is switched off.

Selecting the mode in a config: a top-level boolean key ``mup`` (default
false) in a train or eval YAML config::

    mup: true                      # apply per-layer muP update factors
    optimizer: {arch: hyper}       # for_mup() sets scale_by_param_rms: false
    tasks: [mup_mlp_family]        # tasks must be muP tasks (tasks/mup.py)

The consumer reads it with :func:`mup_enabled` and, per task, passes
``update_scales_for(task, params)`` to the optimizer's ``init``. With
``mup: false`` (or the key absent) nothing changes: ``update_scales`` is
``None`` and every factor is 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lopt.base import LearnedOptimizer, OptimizerError

CONFIG_KEY = "mup"
RMS_SCALING_FIELD = "scale_by_param_rms"


def mup_enabled(config: Mapping[str, Any]) -> bool:
    """Whether a config or an optimizer file's metadata selects the muP mode; a non-boolean value is an error.

    Evaluation reads a saved optimizer's metadata with it: an optimizer
    meta-trained in the muP mode must be run with each task's muP factors.
    """
    value = config.get(CONFIG_KEY, False)
    if not isinstance(value, bool):
        raise OptimizerError(f"config key {CONFIG_KEY!r} must be true or false, got {value!r}")
    return value


def update_scales_for(task: Any, params: Any, enabled: bool = True) -> Any | None:
    """The ``update_scales`` pytree for ``params`` of ``task`` (``None`` when not ``enabled``).

    ``params`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves. The result
    is a pytree like ``params`` of float32 scalars.
    """
    if not enabled:
        return None
    scales_fn = getattr(task, "mup_scales", None)
    if scales_fn is None:
        name = getattr(task, "name", type(task).__name__)
        raise OptimizerError(f"muP mode needs a muP task (tasks/mup.py); task {name!r} has no mup_scales")
    return check_update_scales(scales_fn(params), params)


def update_scales_for_task(task: Any, enabled: bool = True) -> Any | None:
    """:func:`update_scales_for` from the task's parameter *shapes* (``task.init`` traced, not run).

    muP factors depend only on a task's structure, so this is what meta-training,
    meta-validation and evaluation all use; ``None`` when not ``enabled``.
    """
    if not enabled:
        return None
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    return update_scales_for(task, shapes)


def check_update_scales(scales: Any, params: Any) -> Any:
    """Validate a user-given ``update_scales`` pytree: same structure as params, finite positive scalars."""
    if jax.tree.structure(scales) != jax.tree.structure(params):
        raise OptimizerError("update_scales must be a pytree with exactly the structure of the parameters")
    out = []
    for path, s in jax.tree_util.tree_flatten_with_path(scales)[0]:
        arr = jnp.asarray(s, jnp.float32)
        if arr.shape != ():
            raise OptimizerError(f"update_scales{jax.tree_util.keystr(path)} must be a scalar, got shape {arr.shape}")
        if not isinstance(arr, jax.core.Tracer) and not (bool(jnp.isfinite(arr)) and float(arr) > 0.0):
            raise OptimizerError(f"update_scales{jax.tree_util.keystr(path)} must be finite and > 0, got {float(arr)}")
        out.append(arr)
    return jax.tree.unflatten(jax.tree.structure(scales), out)


def for_mup(arch: LearnedOptimizer) -> LearnedOptimizer:
    """``arch`` as it must run in muP mode: parameter-RMS update scaling switched off."""
    names = {f.name for f in dataclasses.fields(arch)}
    if RMS_SCALING_FIELD in names and getattr(arch, RMS_SCALING_FIELD):
        return dataclasses.replace(arch, **{RMS_SCALING_FIELD: False})
    return arch
