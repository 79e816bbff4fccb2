"""A learned optimizer together with its trained weights: the object users hold.

``TrainedOptimizer`` pairs an architecture with its meta-parameters and a
free-form ``metadata`` dict (training provenance: config, steps, meta-loss,
...). It is what :func:`lopt.load` and :func:`lopt.pretrained` return and what
meta-training saves; ``as_optax(num_steps)`` turns it into an optax optimizer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import optax

from lopt import io
from lopt.base import LearnedOptimizer
from lopt.optax_export import as_optax


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedOptimizer:
    """An architecture, its meta-parameters and where they came from."""

    arch: LearnedOptimizer
    meta_params: Any
    metadata: dict = dataclasses.field(default_factory=dict)

    def as_optax(self, num_steps: int, update_scales: Any | None = None) -> optax.GradientTransformationExtraArgs:
        """An optax optimizer planning ``num_steps`` updates (see :mod:`lopt.optax_export`)."""
        return as_optax(self.arch, self.meta_params, num_steps, update_scales)

    def save(self, path: str | os.PathLike, provenance: dict | None = None) -> None:
        """Write a safetensors file; ``provenance`` is merged over ``metadata``."""
        io.write(path, self.arch, self.meta_params, {**self.metadata, **(provenance or {})})


def load(path: str | os.PathLike) -> TrainedOptimizer:
    """Read an optimizer file written by :meth:`TrainedOptimizer.save` (never unpickles)."""
    arch, meta_params, provenance = io.read(path)
    return TrainedOptimizer(arch, meta_params, provenance)
