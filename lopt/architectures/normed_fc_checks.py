"""The hyperparameter checks of ``normed_fc``: each bad value is a clear :class:`OptimizerError` naming it."""

from __future__ import annotations

from typing import Any

from lopt.architectures.normed_fc_scalars import RELATIVE_STEP_RMS, TENSOR_STATS
from lopt.base import OptimizerError


def check_hyperparameters(arch: Any) -> None:
    """Raises for the first hyperparameter of ``arch`` (a :class:`NormedFC`) outside its range."""
    if not arch.momentum_decays:
        raise OptimizerError("normed_fc: momentum_decays needs at least one decay (the first is Adam's beta1)")
    if not 0.0 <= arch.warmup_fraction < 1.0:
        raise OptimizerError(f"normed_fc: warmup_fraction must be in [0, 1), got {arch.warmup_fraction}")
    if not arch.learning_rate > 0 or not arch.weight_decay > 0:
        raise OptimizerError("normed_fc: learning_rate and weight_decay must be > 0")
    if arch.step_size not in ("fixed", "distance"):
        raise OptimizerError(f"normed_fc: step_size must be 'fixed' or 'distance', got {arch.step_size!r}")
    if not arch.initial_distance > 0 or not 0.0 < arch.distance_decay <= 1.0:
        raise OptimizerError("normed_fc: initial_distance must be > 0 and distance_decay in (0, 1]")
    if arch.decay_min_ndim < 0:
        raise OptimizerError(f"normed_fc: decay_min_ndim must be >= 0, got {arch.decay_min_ndim}")
    if not 0.0 <= arch.distance_exponent <= 1.0:
        raise OptimizerError(f"normed_fc: distance_exponent must be in [0, 1], got {arch.distance_exponent}")
    if not arch.brake_rate >= 0.0 or not 0.0 < arch.brake_floor <= 1.0:
        raise OptimizerError("normed_fc: brake_rate must be >= 0 and brake_floor in (0, 1]")
    for name in ("decay_horizon", "lr_horizon"):
        horizon, exponent = getattr(arch, name), getattr(arch, f"{name}_exponent")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise OptimizerError(f"normed_fc: {name} must be an integer >= 0, got {horizon!r}")
        if not 0.0 <= exponent <= 1.0:
            raise OptimizerError(f"normed_fc: {name}_exponent must be in [0, 1], got {exponent}")
    if not 0.0 <= arch.relative_step_exponent <= 2.0 or not arch.relative_step_reference > 0.0:
        raise OptimizerError("normed_fc: relative_step_exponent must be in [0, 2] and relative_step_reference > 0, "
                             f"got {arch.relative_step_exponent} and {arch.relative_step_reference}")
    if arch.relative_step_rms not in RELATIVE_STEP_RMS:
        raise OptimizerError(f"normed_fc: relative_step_rms must be one of {RELATIVE_STEP_RMS}, "
                             f"got {arch.relative_step_rms!r}")
    if arch.tensor_stats not in TENSOR_STATS:
        raise OptimizerError(f"normed_fc: tensor_stats must be one of {TENSOR_STATS}, got {arch.tensor_stats!r}")
