"""The evaluation protocol: learned optimizers against Adam on every task of a suite.

Per task, with reporting seeds ``1..N`` and tuning seeds ``0, -1, ...``
(disjoint, so the tuned learning rate is never scored on a seed that chose it):

1. each learned optimizer, exported through optax with the planned horizon,
   trains on every reporting seed (one compile, batched over seeds); one in the
   muP mode (its file's metadata or the suite says ``mup: true``) gets each muP
   task's per-layer update factors, as in its meta-training (:mod:`lopt.mup`);
2. Adam's learning rate is tuned: every value of the suite's log grid (which
   always contains the default 1e-3) trains on the tuning seeds in one batched
   call; the value with the lowest mean final training loss wins (first on ties);
3. Adam at the default rate and Adam at the tuned rate train on every
   reporting seed (for short runs the same compiled program as step 2);
4. extra optax baselines from the suite train on every reporting seed.

Every run of a task uses the same keys, hence the same initial parameters and
the same batches. The numbers derived from the curves are defined in
:mod:`lopt.eval.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Protocol

import jax
import numpy as np
import optax

from lopt.eval import metrics, report as report_mod
from lopt.eval.errors import EvalError
from lopt.eval.runs import AdamRunner, Curves, run_optimizer
from lopt.eval.suite import BaselineSpec, Suite, TaskSpec
from lopt.tasks.base import Task

TUNING_SEED = 0
# Grid search and reporting runs of Adam share one compiled program (padded to one
# width) when the padding wastes at most this many training steps: on CPU a compile
# costs seconds, which only pays off for short runs (measured: a 16-wide CNN padding
# cost minutes, a smoke-suite MLP padding milliseconds).
MAX_PADDED_STEPS = 10_000
ADAM_DEFAULT = "adam_default"
ADAM_TUNED = "adam_tuned"

DEFINITIONS = {
    "final train loss": "mean minibatch training loss over the last eval_every steps, averaged over reported seeds; "
    "a diverged run counts as +inf (shown as 'diverged', null in JSON)",
    "valid loss / accuracy": "measured at the last step on 4 validation batches, mean over seeds",
    "tuned Adam": "Adam with the learning rate of the log grid that gives the lowest final train loss averaged "
    "over the tuning seeds (0, -1, ...); reported on the other seeds (1..N)",
    "speedup": "S/T where T is the learned optimizer's steps and S the first step at which tuned Adam's seed-mean "
    "train loss curve reaches the learned optimizer's final train loss; tuned Adam runs speedup_horizon*T steps; "
    "if never reached the speedup is censored at speedup_horizon (shown '>x'); none if the learned one diverged",
    "win/tie/loss": "final train losses a (learned) vs b (baseline): tie if |a-b| <= tie_rtol*max(|a|,|b|) + "
    "tie_atol*loss_scale, else win if a<b, loss if a>b; a diverged side is +inf. Where b*(1-tie_rtol) - loss_floor "
    "<= tie_atol*loss_scale (the baseline reached the task's loss floor: 0, or the exact minimum where the task "
    "knows it) no a >= loss_floor can win: the outcomes count such tasks",
    "divergence": "a run whose train loss curve is non-finite or exceeds divergence_factor x its initial loss",
}


class ExportsOptax(Protocol):
    def as_optax(self, num_steps: int) -> optax.GradientTransformationExtraArgs: ...


def uses_mup(opt: Any, suite: Suite) -> bool:
    """Whether ``opt`` runs in the muP mode: the suite says so or its file's metadata does."""
    from lopt.mup import mup_enabled

    return suite.mup or mup_enabled(getattr(opt, "metadata", {}))


def learned_optax(opt: ExportsOptax, task: Task, num_steps: int, mup: bool) -> optax.GradientTransformationExtraArgs:
    """``opt`` as optax for ``task``; in the muP mode with the task's per-layer factors.

    The factors come from :func:`lopt.mup.update_scales_for_task`, the one
    policy that meta-training and meta-validation use too: in the muP mode a
    task without muP factors is refused (see :func:`check_mup_tasks`).
    """
    from lopt.mup import update_scales_for_task

    scales = update_scales_for_task(task, enabled=mup)
    return opt.as_optax(num_steps) if scales is None else opt.as_optax(num_steps, update_scales=scales)


def check_mup_tasks(learned: Mapping[str, ExportsOptax], suite: Suite) -> None:
    """Refuse, before any run, a muP-mode optimizer on a suite with non-muP tasks."""
    modes = [name for name, opt in learned.items() if uses_mup(opt, suite)]
    if not modes:
        return
    for spec in suite.tasks:
        if not callable(getattr(build_task(spec), "mup_scales", None)):
            raise EvalError(
                f"{modes[0]!r} runs in the muP mode but task {spec.display!r} of suite {suite.name!r} has no muP "
                "factors; evaluate it on a muP suite (e.g. mup_generalization)"
            )


def build_task(spec: TaskSpec) -> Task:
    """The registered task of ``spec`` with its field overrides applied (errors name the bad field)."""
    from lopt.tasks.registry import get_task

    task = get_task(spec.task)
    if not spec.overrides:
        return task
    fields = {f.name for f in dataclasses.fields(task)}
    for k, _ in spec.overrides:
        if k not in fields:
            raise EvalError(f"task {spec.display!r}: unknown override {k!r}; fields of {spec.task}: {', '.join(sorted(fields))}")
    try:
        return dataclasses.replace(task, **dict(spec.overrides))
    except (TypeError, ValueError) as err:
        raise EvalError(f"task {spec.display!r}: bad overrides ({err})") from None


def scaled_steps(steps: int, scale: float, eval_every: int) -> tuple[int, int]:
    """(steps, eval_every) after ``--steps-scale``: steps a positive multiple of eval_every."""
    every = min(eval_every, max(1, int(round(steps * scale))))
    n = max(1, int(round(steps * scale / every))) * every
    return n, every


def make_baseline(spec: BaselineSpec) -> optax.GradientTransformation:
    try:
        return getattr(optax, spec.optax_name)(**dict(spec.kwargs))
    except TypeError as err:
        raise EvalError(f"baseline {spec.name!r}: bad kwargs for optax.{spec.optax_name} ({err})") from None


def summarize_runs(curves: Curves, divergence_factor: float) -> dict[str, Any]:
    """Final numbers (means over seeds, divergences as inf) and the curves of one optimizer on one task."""
    div = metrics.diverged_runs(curves.train_loss, divergence_factor)
    train = metrics.final_values(curves.train_loss, div)
    valid = metrics.final_values(curves.valid_loss, div)
    entry = {
        "final_train_loss": metrics.seed_mean(train),
        "final_train_loss_per_seed": train.tolist(),
        "final_valid_loss": metrics.seed_mean(valid),
        "final_valid_loss_per_seed": valid.tolist(),
        "final_valid_accuracy": None,
        "diverged": int(div.sum()),
        "curve": {"train_loss": curves.train_loss.tolist(), "valid_loss": curves.valid_loss.tolist()},
    }
    if curves.valid_accuracy is not None:
        acc = curves.valid_accuracy[:, -1][~div]  # accuracy of the runs that did not diverge
        entry["final_valid_accuracy"] = float(np.mean(acc)) if acc.size else None
        entry["curve"]["valid_accuracy"] = curves.valid_accuracy.tolist()
    return entry


def tuning_seeds(count: int) -> list[int]:
    """Seeds ``0, -1, -2, ...``: never among the reporting seeds ``1..N``."""
    return [TUNING_SEED - i for i in range(count)]


def tune_adam(runner: AdamRunner, data: Any, suite: Suite, num_steps: int):
    """Grid search on the tuning seeds; returns (chosen lr, record for the report).

    A learning rate's score is its final train loss averaged over the tuning
    seeds (``inf`` if any of them diverged): with more than one tuning seed,
    a rate at the edge of stability that happened to survive one seed loses.
    """
    grid, seeds = list(suite.lr_grid), tuning_seeds(suite.tuning_seeds)
    curves = runner(data, [lr for lr in grid for _ in seeds], [s for _ in grid for s in seeds]).upto(num_steps)
    div = metrics.diverged_runs(curves.train_loss, suite.divergence_factor)
    finals = metrics.final_values(curves.train_loss, div).reshape(len(grid), len(seeds))
    scores = np.asarray([metrics.seed_mean(row) for row in finals])
    best = int(np.argmin(scores))  # first minimum on ties
    default_idx = int(np.argmin([abs(math.log(g) - math.log(suite.default_lr)) for g in grid]))
    record = {
        "seeds": seeds,
        "lr_grid": grid,
        "scores": scores.tolist(),
        "chosen_lr": float(grid[best]),
        "chosen_score": float(scores[best]),
        "default_lr_score": float(scores[default_idx]),
    }
    return float(grid[best]), record


def evaluate_task(
    spec: TaskSpec,
    learned: Mapping[str, ExportsOptax],
    suite: Suite,
    report_seeds: list[int],
    steps_scale: float = 1.0,
    tick: Any = None,
) -> dict[str, Any]:
    """Every optimizer of the protocol on one task; returns the task's report entry."""
    tick = tick or (lambda *_: None)
    task = build_task(spec)
    data = task.load_data()
    num_steps, every = scaled_steps(spec.steps, steps_scale, spec.eval_every or suite.eval_every)
    factor, opts, timing = suite.divergence_factor, {}, {}
    curves_by: dict[str, Curves] = {}

    for name, opt in learned.items():
        t0 = time.perf_counter()
        tx = learned_optax(opt, task, num_steps, uses_mup(opt, suite))
        curves_by[name] = run_optimizer(task, data, tx, report_seeds, num_steps, every)
        timing[name] = time.perf_counter() - t0
        tick(f"{spec.display}: {name}")

    t0 = time.perf_counter()
    long_steps = int(math.ceil(suite.speedup_horizon * num_steps / every)) * every
    r, g = len(report_seeds), len(suite.lr_grid) * suite.tuning_seeds
    padded_waste = (max(g, 2 * r) - 2 * r) * long_steps + (max(g, 2 * r) - g) * long_steps + g * (long_steps - num_steps)
    if padded_waste <= MAX_PADDED_STEPS:  # short: padding costs less than a second compile
        tuner = reporter = AdamRunner(task, long_steps, every, width=max(g, 2 * r))
    else:  # long: exactly sized programs, tuning only as long as the learned optimizer runs
        tuner, reporter = AdamRunner(task, num_steps, every, width=g), AdamRunner(task, long_steps, every, width=2 * r)
    lr, tuning = tune_adam(tuner, data, suite, num_steps)
    tick(f"{spec.display}: tune adam")
    both = reporter(data, [suite.default_lr] * r + [lr] * r, report_seeds * 2)
    adam_long = both.take_runs(slice(r, 2 * r))
    curves_by[ADAM_DEFAULT] = both.take_runs(slice(0, r)).upto(num_steps)
    curves_by[ADAM_TUNED] = adam_long.upto(num_steps)
    timing["adam (tuning + reporting)"] = time.perf_counter() - t0
    tick(f"{spec.display}: adam")

    for b in suite.baselines:
        t0 = time.perf_counter()
        curves_by[b.name] = run_optimizer(task, data, make_baseline(b), report_seeds, num_steps, every)
        timing[b.name] = time.perf_counter() - t0
        tick(f"{spec.display}: {b.name}")

    for name, c in curves_by.items():
        opts[name] = summarize_runs(c, factor)
    opts[ADAM_DEFAULT]["lr"] = suite.default_lr
    opts[ADAM_TUNED]["lr"] = lr

    baselines = [ADAM_DEFAULT, ADAM_TUNED] + [b.name for b in suite.baselines]
    atol = suite.tie_atol * float(task.loss_scale)
    adam_mean = np.mean(np.where(np.isfinite(adam_long.train_loss), adam_long.train_loss, np.inf), axis=0)
    speedups, outcomes = {}, {}
    for name in learned:
        a = opts[name]["final_train_loss"]
        speedups[name] = metrics.speedup(a, adam_long.steps, adam_mean, num_steps, suite.speedup_horizon)
        outcomes[name] = {b: metrics.compare(a, opts[b]["final_train_loss"], suite.tie_rtol, atol) for b in baselines}
    floor = float(task.loss_floor)
    win_possible = {b: metrics.win_possible(opts[b]["final_train_loss"], suite.tie_rtol, atol, floor) for b in baselines}
    return {
        "label": spec.display,
        "task": spec.task,
        "task_name": task.name,
        "description": task.describe(),
        "overrides": dict(spec.overrides),
        "num_params": task.num_params(),
        "loss_scale": float(task.loss_scale),
        "loss_floor": floor,
        "steps": num_steps,
        "eval_every": every,
        "curve_steps": curves_by[ADAM_DEFAULT].steps.tolist(),
        "tuning": tuning,
        "optimizers": opts,
        "speedup": speedups,
        "outcomes": outcomes,
        "win_possible": win_possible,
        "wall_time_s": timing,
    }


def evaluate_suite(
    learned: Mapping[str, ExportsOptax],
    suite: Suite,
    seeds: int | None = None,
    steps_scale: float = 1.0,
    progress: bool = True,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run the protocol on every task of ``suite``; returns the report dict (see :mod:`lopt.eval.report`)."""
    if not learned:
        raise EvalError("no learned optimizer to evaluate")
    reserved = {ADAM_DEFAULT, ADAM_TUNED} | {b.name for b in suite.baselines}
    clash = sorted(set(learned) & reserved)
    if clash:
        raise EvalError(f"learned optimizer name {clash[0]!r} clashes with a baseline name")
    if steps_scale <= 0:
        raise EvalError(f"steps scale must be > 0, got {steps_scale}")
    num_seeds = suite.seeds if seeds is None else int(seeds)
    if num_seeds < 1:
        raise EvalError(f"need at least 1 reporting seed, got {num_seeds}")
    report_seeds = list(range(TUNING_SEED + 1, TUNING_SEED + 1 + num_seeds))
    check_mup_tasks(learned, suite)
    units = len(suite.tasks) * (len(learned) + 2 + len(suite.baselines))
    start = time.perf_counter()
    with _progress(units, progress) as bar:

        def tick(msg: str) -> None:
            bar.set_description(msg[:60])
            bar.update(1)

        tasks = [evaluate_task(spec, learned, suite, report_seeds, steps_scale, tick) for spec in suite.tasks]
    dev = jax.devices()[0]
    report = {
        "suite": suite.to_dict(),
        "learned": list(learned),
        "baselines": [ADAM_DEFAULT, ADAM_TUNED] + [b.name for b in suite.baselines],
        "sources": {n: (sources or {}).get(n, n) for n in learned},
        "mup_mode": {n: uses_mup(opt, suite) for n, opt in learned.items()},
        "protocol": {
            "tuning_seeds": tuning_seeds(suite.tuning_seeds),
            "report_seeds": report_seeds,
            "steps_scale": steps_scale,
            "definitions": DEFINITIONS,
        },
        "tasks": tasks,
        "wall_time_s": time.perf_counter() - start,
        "device": f"{dev.platform} ({getattr(dev, 'device_kind', '?')}, {jax.device_count()} device(s))",
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
    }
    report["summary"] = report_mod.summarize(report)
    return report


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="run", leave=False)
