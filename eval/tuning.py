"""Learning-rate tuning of the tuned baselines (Adam, AdamW-cosine): by best validation loss.

A learning rate's score is the best validation loss (minimum over the
evaluation steps of the seed-mean curve, see :mod:`lopt.eval.metrics`) of its
runs on the tuning seeds ``0, -1, ...``, which are never reporting seeds, so a
rate is never scored on the seeds that chose it. A rate with a diverged tuning
run scores ``inf``: with several tuning seeds, a rate at the edge of stability
that happened to survive one seed loses. The lowest score wins, the first
(smallest rate) on ties. Validation, not training loss, because that is how a
practitioner with early stopping tunes, and a rate that over-fits fast is not
the one they would keep.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lopt.eval import metrics

TUNING_SEED = 0


def tuning_seeds(count: int) -> list[int]:
    """Seeds ``0, -1, -2, ...``: never among the reporting seeds ``1..N``."""
    return [TUNING_SEED - i for i in range(count)]


def tune_lr(runner: Any, data: Any, grid: Sequence[float], seeds: Sequence[int], num_steps: int,
            divergence_factor: float) -> tuple[float, dict[str, Any]]:
    """Run every (rate, tuning seed) pair in one call of ``runner``; return (chosen rate, record for the report).

    ``runner(data, lrs, seeds) -> Curves`` (a :class:`lopt.eval.runs.GridRunner`);
    its curves may run past ``num_steps`` (a shared longer program): only the
    first ``num_steps`` count.
    """
    grid, seeds = [float(g) for g in grid], list(seeds)
    curves = runner(data, [lr for lr in grid for _ in seeds], [s for _ in grid for s in seeds]).upto(num_steps)
    div = metrics.diverged_runs(curves.train_loss, divergence_factor).reshape(len(grid), len(seeds))
    valid = curves.valid_loss.reshape(len(grid), len(seeds), -1)
    scores = []
    for i in range(len(grid)):
        best, _ = metrics.best_along(curves.steps, metrics.seed_mean_curve(valid[i]))
        scores.append(float("inf") if div[i].any() else best)
    best_idx = int(np.argmin(scores))  # first minimum on ties
    record = {
        "seeds": seeds,
        "lr_grid": grid,
        "criterion": "best validation loss (seed mean) on the tuning seeds; a diverged tuning run scores inf",
        "scores": scores,
        "chosen_lr": grid[best_idx],
        "chosen_score": scores[best_idx],
    }
    return grid[best_idx], record
