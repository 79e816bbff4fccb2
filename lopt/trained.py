"""A learned optimizer together with its trained weights: the object users hold.

``TrainedOptimizer`` pairs an architecture with its meta-parameters and a
free-form ``metadata`` dict (training provenance: config, steps, meta-loss,
...). It is what :func:`lopt.load` and :func:`lopt.pretrained` return and what
meta-training saves; ``as_optax(num_steps)`` turns it into an optax optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any

import jax.numpy as jnp
import optax

from lopt import io
from lopt.base import LearnedOptimizer, OptimizerError
from lopt.optax_export import as_optax


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedOptimizer:
    """An architecture, its meta-parameters and where they came from."""

    arch: LearnedOptimizer
    meta_params: Any
    metadata: dict = dataclasses.field(default_factory=dict)

    def as_optax(self, num_steps: int, update_scales: Any | None = None,
                 kernel: str = "auto") -> optax.GradientTransformationExtraArgs:
        """An optax optimizer planning ``num_steps`` updates (see :mod:`lopt.optax_export`; ``kernel``:
        :mod:`lopt.kernels`)."""
        return as_optax(self.arch, self.meta_params, num_steps, update_scales, kernel)

    def with_weight_decay(self, weight_decay: float) -> "TrainedOptimizer":
        """The same optimizer with its learned decoupled weight decay replaced by ``weight_decay``.

        Why: a learned decay is chosen for validation loss, and a strong one holds the training loss up
        on long runs; a user who wants to fit the training set (or to regularize more) sets it here, as
        ``optax.adamw``'s ``weight_decay``. The decay stays decoupled and scaled by the step's learning
        rate. Only architectures that learn a decay (``normed_fc``, the shipped defaults since v2) have
        one to replace; the change is recorded in ``metadata`` and survives :meth:`save`. Where the
        architecture scales its decay with the planned horizon (``normed_fc``'s ``decay_horizon``, the
        shipped default since v11), ``weight_decay`` is the rate of runs up to that horizon and longer
        runs are scaled from it as before.
        """
        if not isinstance(self.meta_params, dict) or "log_wd" not in self.meta_params:
            raise OptimizerError(f"architecture {self.arch.arch!r} has no learned weight decay to replace")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) \
                or not math.isfinite(weight_decay) or weight_decay <= 0:
            raise OptimizerError(f"weight_decay must be a finite number > 0, got {weight_decay!r}")
        weight_decay = float(weight_decay)  # numpy scalars too
        meta = {**self.meta_params, "log_wd": jnp.asarray(math.log(weight_decay), jnp.float32)}
        return TrainedOptimizer(self.arch, meta, {**self.metadata, "weight_decay_override": weight_decay})

    def save(self, path: str | os.PathLike, provenance: dict | None = None) -> None:
        """Write a safetensors file; ``provenance`` is merged over ``metadata``."""
        io.write(path, self.arch, self.meta_params, {**self.metadata, **(provenance or {})})


def load(path: str | os.PathLike) -> TrainedOptimizer:
    """Read an optimizer file written by :meth:`TrainedOptimizer.save` (never unpickles)."""
    arch, meta_params, provenance = io.read(path)
    return TrainedOptimizer(arch, meta_params, provenance)
