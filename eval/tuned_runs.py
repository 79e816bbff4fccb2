"""The tuned baselines' runs: a learning-rate grid on the tuning seeds, then the chosen rate on the reporting seeds.

Adam (constant rate) and AdamW with warm-up and cosine decay (peak rate) both
take their rate as a traced scalar, so a whole grid is one compiled program
(:class:`lopt.eval.runs.GridRunner`), and when padding is cheap the reporting
runs reuse that same program. Tuned Adam's reporting runs last
``speedup_horizon`` times the planned steps (its trajectory does not depend on
the horizon), so speedups over it can be measured past 1; AdamW-cosine's
schedule is the horizon, so it runs exactly the planned steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import optax

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


@dataclasses.dataclass
class TaskRuns:
    """What the runs of one task produced: curves at the planned steps, longer ones where a baseline ran longer."""

    curves: dict[str, Curves] = dataclasses.field(default_factory=dict)
    long: dict[str, Curves] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] = dataclasses.field(default_factory=dict)
    lrs: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_time_s: dict[str, float] = dataclasses.field(default_factory=dict)


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
        long_steps = int(math.ceil(suite.speedup_horizon * num_steps / every)) * every
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
