"""The registry of learned-optimizer architectures, by name.

``get(name, **hparams)`` builds one (hyperparameters are the dataclass fields;
lists are turned into tuples so the result is hashable and can be a static
argument of ``jax.jit``); ``names()`` lists them. ``small_fc`` is the default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lopt.architectures.hyper import Hyper
from lopt.architectures.learned_adam import LearnedAdam
from lopt.architectures.mlp import MLPOpt
from lopt.architectures.normed_fc import NormedFC
from lopt.architectures.small_fc import SmallFC
from lopt.base import LearnedOptimizer, OptimizerError, check_hparams

DEFAULT = SmallFC.arch

REGISTRY: dict[str, type[LearnedOptimizer]] = {cls.arch: cls for cls in (SmallFC, MLPOpt, LearnedAdam, Hyper, NormedFC)}


def names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(REGISTRY)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def get(name: str = DEFAULT, **hparams: Any) -> LearnedOptimizer:
    """The architecture called ``name`` with the given hyperparameters."""
    try:
        cls = REGISTRY[name]
    except (KeyError, TypeError):
        raise OptimizerError(f"unknown architecture {name!r}; valid architectures: {', '.join(names())}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise OptimizerError(
            f"architecture {name!r} has no hyperparameter {unknown[0]!r}; valid: {', '.join(sorted(fields))}"
        )
    check_hparams(cls, hparams)  # a one-line error instead of a TypeError deep inside JAX
    return cls(**{k: _freeze(v) for k, v in hparams.items()})
