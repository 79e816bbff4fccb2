"""The tuned baselines' runs: a learning-rate grid on the tuning seeds, then the chosen rate on the reporting seeds.

Adam (constant rate) and AdamW with warm-up and cosine decay (peak rate) both
take their rate as a traced scalar, so a whole grid is one compiled program
(:class:`lopt.eval.runs.GridRunner`), and when padding is cheap the reporting
runs reuse that same program. Tuned Adam's reporting runs last
``speedup_horizon`` times the planned steps (its trajectory does not depend on
the horizon), so speedups over it can be measured past 1. AdamW-cosine's
schedule is the horizon: its reporting runs last exactly the planned steps,
and for speedups it is run again planned for shorter and longer horizons
(:func:`extend_adamw_cosine`), so that a speedup over it counts the fewest
steps it needs at any horizon, and is measured, not censored, wherever it can be.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import optax

from lopt.eval import metrics
from lopt.eval.baselines import ADAM_DEFAULT, ADAM_TUNED, ADAMW_COSINE, adamw_cosine
from lopt.eval.runs import Curves, GridRunner
from lopt.eval.suite import Suite
from lopt.eval.tuning import tune_lr, tuning_seeds
from lopt.tasks.base import Task

# A tuning grid and its reporting runs share one compiled program (padded to one
# width) when the padding wastes at most this many training steps: on CPU a compile
# costs seconds, which only pays off for short runs (measured: a 16-wide CNN padding
# cost minutes, a smoke-suite MLP padding milliseconds).
MAX_PADDED_STEPS = 10_000
# AdamW-cosine's other horizons for speedups: (1 +- k * HORIZON_RUNG) x the planned steps, k = 1, 2, ...,
# from HORIZON_RUNG up to the suite's speedup_horizon. The rung is the resolution of a speedup measured this way.
HORIZON_RUNG = 0.25


@dataclasses.dataclass
class TaskRuns:
    """What the runs of one task produced: curves at the planned steps, longer ones where a baseline ran longer."""

    curves: dict[str, Curves] = dataclasses.field(default_factory=dict)
    long: dict[str, Curves] = dataclasses.field(default_factory=dict)
    # Runs of a horizon-following baseline planned for other horizons (speedups only), in the order they ran.
    other_horizons: dict[str, list[Curves]] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] = dataclasses.field(default_factory=dict)
    lrs: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_time_s: dict[str, float] = dataclasses.field(default_factory=dict)


def _whole_intervals(factor: float, num_steps: int, every: int) -> int:
    """``factor * num_steps`` rounded up to whole evaluation intervals."""
    return int(math.ceil(factor * num_steps / every)) * every


def speedup_steps(suite: Suite, num_steps: int, every: int) -> int:
    """How long a baseline whose trajectory does not depend on the horizon runs: ``speedup_horizon`` x the
    planned steps, rounded up to whole evaluation intervals."""
    return _whole_intervals(suite.speedup_horizon, num_steps, every)


def horizon_ladder(num_steps: int, every: int, speedup_horizon: float) -> list[int]:
    """The longer horizons AdamW-cosine is planned for when it never reaches a learned optimizer's numbers.

    ``(1 + k * HORIZON_RUNG) * num_steps`` for ``k = 1, 2, ...`` up to
    ``speedup_horizon * num_steps``, each rounded up to whole evaluation
    intervals (so every run is validated at the same kind of grid).
    """
    out: list[int] = []
    k = 1
    while 1.0 + k * HORIZON_RUNG <= speedup_horizon + 1e-9:
        h = _whole_intervals(1.0 + k * HORIZON_RUNG, num_steps, every)
        if h > (out[-1] if out else num_steps):
            out.append(h)
        k += 1
    return out


def shorter_horizons(num_steps: int, every: int) -> list[int]:
    """The shorter horizons, longest first: ``(1 - k * HORIZON_RUNG) * num_steps`` for ``k = 1, 2, ...`` while
    positive, rounded up to whole evaluation intervals (at least one), each shorter than the last."""
    out: list[int] = []
    k = 1
    while 1.0 - k * HORIZON_RUNG > 1e-9:
        h = max(every, _whole_intervals(1.0 - k * HORIZON_RUNG, num_steps, every))
        if h < (out[-1] if out else num_steps):
            out.append(h)
        k += 1
    return out


def _hits(curves: Curves, targets: list[tuple[float, float]]) -> set[tuple[int, str]]:
    """Which finite targets (learned optimizer index, "train" / "valid") these runs' seed-mean curves reach.

    A non-finite target (a diverged learned optimizer) has no speedup: no run looks for it.
    """
    out = set()
    for i, goals in enumerate(targets):
        for metric, goal, values in (("train", goals[0], curves.train_loss), ("valid", goals[1], curves.valid_loss)):
            if math.isfinite(goal) and metrics.steps_to_reach(
                    curves.steps, metrics.seed_mean_curve(values), goal) is not None:
                out.add((i, metric))
    return out


def extend_adamw_cosine(runs: TaskRuns, task: Task, data: Any, suite: Suite, seeds: list[int], num_steps: int,
                        every: int, targets: list[tuple[float, float]]) -> None:
    """AdamW-cosine planned for other horizons, so that its speedups count the fewest steps it needs.

    ``targets``: each learned optimizer's (final training loss, best validation loss). A schedule that follows
    the horizon has one trajectory per horizon, and the steps it needs to reach a loss are the fewest over
    them. So, at its tuned peak rate and on the reporting seeds:

    * shorter horizons (:func:`shorter_horizons`, longest first) while each still reaches a target, since a
      run that anneals sooner can get there sooner (where the baseline is faster than the learned optimizer);
    * longer horizons (:func:`horizon_ladder`, shortest first) until every target is reached (where the
      learned optimizer is faster: otherwise its speedup would be censored at the planned horizon).

    The runs only feed the speedups (:func:`lopt.eval.metrics.speedup_over_runs`); every other number uses
    the planned horizon. The rate is the one tuned for the planned horizon; a rate tuned per horizon could
    need fewer steps.
    """
    t0 = time.perf_counter()
    lr = runs.lrs[ADAMW_COSINE]
    planned = runs.curves[ADAMW_COSINE]

    def run(horizon: int) -> Curves:
        runner = GridRunner(task, horizon, every, len(seeds), lambda peak: adamw_cosine(peak, horizon))
        return runner(data, [lr] * len(seeds), seeds)

    extra: list[Curves] = []
    reached = _hits(planned, targets)
    if reached:
        for horizon in shorter_horizons(num_steps, every):
            extra.append(run(horizon))
            hits = _hits(extra[-1], targets)
            if not hits:
                break
            reached |= hits
    wanted = {(i, m) for i, goals in enumerate(targets) for m, g in zip(("train", "valid"), goals) if math.isfinite(g)}
    for horizon in horizon_ladder(num_steps, every, suite.speedup_horizon):
        if reached >= wanted:
            break
        extra.append(run(horizon))
        reached |= _hits(extra[-1], targets)
    runs.other_horizons[ADAMW_COSINE] = extra
    runs.wall_time_s[ADAMW_COSINE] = runs.wall_time_s.get(ADAMW_COSINE, 0.0) + time.perf_counter() - t0


def _grid_runners(task: Task, make_tx: Any, tune_steps: int, report_steps: int, every: int, g: int, k: int):
    """(tuner, reporter): one padded program when padding wastes at most MAX_PADDED_STEPS, else two exact ones."""
    width = max(g, k)
    waste = (width - k) * report_steps + (width - g) * report_steps + g * (report_steps - tune_steps)
    if waste <= MAX_PADDED_STEPS:
        both = GridRunner(task, report_steps, every, width, make_tx)
        return both, both
    return GridRunner(task, tune_steps, every, g, make_tx), GridRunner(task, report_steps, every, k, make_tx)


def run_adam(runs: TaskRuns, task: Task, data: Any, suite: Suite, seeds: list[int], num_steps: int, every: int,
             want_default: bool, want_tuned: bool) -> None:
    """Adam(default_lr) and/or tuned Adam; tuned Adam's reporting runs last ``speedup_horizon`` x longer."""
    t0, r = time.perf_counter(), len(seeds)
    names = ([ADAM_DEFAULT] if want_default else []) + ([ADAM_TUNED] if want_tuned else [])
    lrs = {ADAM_DEFAULT: suite.default_lr}
    if want_tuned:
        long_steps = speedup_steps(suite, num_steps, every)
        g = len(suite.lr_grid) * suite.tuning_seeds
        tuner, reporter = _grid_runners(task, optax.adam, num_steps, long_steps, every, g, len(names) * r)
        lrs[ADAM_TUNED], runs.tuning[ADAM_TUNED] = tune_lr(
            tuner, data, suite.lr_grid, tuning_seeds(suite.tuning_seeds), num_steps, suite.divergence_factor)
    else:
        reporter = GridRunner(task, num_steps, every, r)
    out = reporter(data, [lrs[n] for n in names for _ in seeds], seeds * len(names))
    for i, n in enumerate(names):
        runs.long[n] = out.take_runs(slice(i * r, (i + 1) * r))
        runs.curves[n] = runs.long[n].upto(num_steps)
        runs.lrs[n] = lrs[n]
    runs.wall_time_s[" + ".join(names)] = time.perf_counter() - t0


def run_adamw_cosine(runs: TaskRuns, task: Task, data: Any, suite: Suite, seeds: list[int], num_steps: int,
                     every: int) -> None:
    t0 = time.perf_counter()
    make_tx = lambda lr: adamw_cosine(lr, num_steps)  # noqa: E731
    g = len(suite.lr_grid) * suite.tuning_seeds
    tuner, reporter = _grid_runners(task, make_tx, num_steps, num_steps, every, g, len(seeds))
    lr, runs.tuning[ADAMW_COSINE] = tune_lr(
        tuner, data, suite.lr_grid, tuning_seeds(suite.tuning_seeds), num_steps, suite.divergence_factor)
    runs.curves[ADAMW_COSINE] = reporter(data, [lr] * len(seeds), seeds)
    runs.lrs[ADAMW_COSINE] = lr
    runs.wall_time_s[ADAMW_COSINE] = time.perf_counter() - t0
