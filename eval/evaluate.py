"""The evaluation protocol: learned optimizers against the optimizers users would pick instead.

Per task, with reporting seeds ``1..N`` and tuning seeds ``0, -1, ...``
(disjoint, so a tuned learning rate is never scored on a seed that chose it):

1. each learned optimizer, exported through optax with the planned horizon,
   trains on every reporting seed (one compile, batched over seeds); one in the
   muP mode (its file's metadata or the suite says ``mup: true``) gets each muP
   task's per-layer update factors, as in its meta-training (:mod:`lopt.mup`);
2. the built-in baselines picked by ``--baselines`` (:mod:`lopt.eval.baselines`):
   Adam(1e-3) and tuned Adam (one program for the grid and the reporting runs
   where padding is cheap), AdamW with warm-up and cosine decay at a tuned peak
   rate (one program per horizon), and the tuning-free prodigy,
   schedule_free_adamw (validated at its averaged parameters) and dadapt_adamw;
   tuning picks the rate by best validation loss (:mod:`lopt.eval.tuning`).
   For speedups, the baselines whose trajectory does not depend on the
   horizon (tuned Adam, the tuning-free ones) run ``speedup_horizon`` times
   longer, and AdamW-cosine runs again planned for shorter and longer
   horizons (the steps it needs are the fewest over its horizons);
3. extra optax baselines from the suite YAML, fixed hyperparameters.

Every run of a task uses the same keys, hence the same initial parameters and
the same batches, and is validated on the whole validation split at the same
steps (at least ``MIN_VALID_EVALS`` times). The numbers derived from the curves
and the rule saying which tasks count are defined in :mod:`lopt.eval.metrics`.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Protocol, Sequence

import jax
import numpy as np
import optax

from lopt.eval import metrics, report as report_mod
from lopt.eval.baselines import ADAM_DEFAULT, ADAM_TUNED, ADAMW_COSINE, BUILTIN, TUNING_FREE, tuning_free
from lopt.eval.errors import EvalError
from lopt.eval.runs import Curves, run_optimizer
from lopt.eval.tuned_runs import TaskRuns, extend_adamw_cosine, run_adam, run_adamw_cosine, speedup_steps
from lopt.eval.suite import BaselineSpec, Suite, TaskSpec
from lopt.eval.tuning import TUNING_SEED, tuning_seeds
from lopt.tasks.base import Task

MIN_VALID_EVALS = 20  # validation points per run after step 0 (issue 14: at least 20 per run)

DEFINITIONS = {
    "final train loss": "mean minibatch training loss over the last eval_every steps, averaged over reported seeds; "
    "a diverged run counts as +inf (shown as 'diverged', null in JSON)",
    "best valid loss": "minimum over the evaluation steps of the seed-mean validation loss, measured on the whole "
    "validation split at the same steps for every optimizer (at least 20 times per run); schedule_free_adamw is "
    "validated at its averaged parameters",
    "tuned baselines": "adam_tuned (constant rate) and adamw_cosine (AdamW, linear warm-up over 5% of the steps, "
    "cosine decay to 0) use the rate of the suite's log grid with the lowest best valid loss on the tuning seeds "
    "(0, -1, ...); reported on the other seeds (1..N)",
    "tuning-free baselines": "prodigy, schedule_free_adamw, dadapt_adamw from optax.contrib at their defaults",
    "speedup (valid)": "S/T* where T* is the first step at which the learned optimizer reaches its best valid loss "
    "and S the first step at which the baseline's seed-mean valid curve reaches it. So that S is measured where "
    "the baseline needs more than T steps: tuned Adam and the tuning-free baselines (whose trajectory does not "
    "depend on the horizon) run speedup_horizon*T steps; AdamW-cosine runs again at its tuned rate planned for "
    "1.25T, 1.5T, ... up to speedup_horizon*T (shortest first, until it gets there) and for 0.75T, 0.5T, 0.25T (while they still "
    "get there: a run that anneals sooner can get there sooner), and S is the fewest steps any of its runs needs "
    "(resolution T/4). Censored (shown '>x') at the longest run's last step / T* when no run gets there "
    "(a lower bound). It measures how fast, not how good: a learned optimizer whose best is worse can still reach "
    "it sooner (speedup > 1 with a loss), so read it with win/tie/loss",
    "speedup (train)": "S/T where T is the learned optimizer's steps and S the first step at which the baseline's "
    "seed-mean train curve reaches the learned optimizer's final train loss; longer runs and censoring as for the "
    "valid one",
    "win/tie/loss": "a (learned) vs b (baseline), final train losses or best valid losses: tie if |a-b| <= "
    "tie_rtol*max(|a|,|b|) + tie_atol*loss_scale (one tie band), else win if a<b, loss if a>b; a diverged side "
    "is +inf",
    "saturation rule": "a task counts for a metric only if the reference baseline (suite key saturation.reference, "
    "tuned AdamW-cosine by default, tuned Adam when it was not run) ends at least saturation.bands tie bands above "
    "the task's loss floor on that metric (its final train loss, its best valid loss); win/tie/loss counts and "
    "speedup aggregates use the counted tasks only",
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
    from lopt.tasks.base import TaskError
    from lopt.tasks.registry import get_task, with_overrides

    task = get_task(spec.task)
    try:
        return with_overrides(task, dict(spec.overrides), f"task {spec.display!r}")
    except TaskError as err:
        raise EvalError(str(err)) from None


def scaled_steps(steps: int, scale: float, eval_every: int, min_evals: int = MIN_VALID_EVALS) -> tuple[int, int]:
    """(steps, eval_every) after ``--steps-scale``: steps a positive multiple of eval_every, and eval_every
    small enough for at least ``min_evals`` validation points after step 0 (every step when runs are shorter)."""
    target = max(1, int(round(steps * scale)))
    every = max(1, min(eval_every, target // min_evals))
    n = max(1, int(round(target / every))) * every
    return n, every


def make_baseline(spec: BaselineSpec) -> optax.GradientTransformation:
    try:
        return getattr(optax, spec.optax_name)(**dict(spec.kwargs))
    except TypeError as err:
        raise EvalError(f"baseline {spec.name!r}: bad kwargs for optax.{spec.optax_name} ({err})") from None


def summarize_runs(curves: Curves, divergence_factor: float) -> dict[str, Any]:
    """Final and best numbers (means over seeds, divergences as inf) and the curves of one optimizer on one task."""
    div = metrics.diverged_runs(curves.train_loss, divergence_factor)
    train = metrics.final_values(curves.train_loss, div)
    valid = metrics.final_values(curves.valid_loss, div)
    best, best_step = metrics.best_along(curves.steps, metrics.seed_mean_curve(curves.valid_loss))
    per_seed = [metrics.best_along(curves.steps, row)[0] for row in curves.valid_loss]
    entry = {
        "final_train_loss": metrics.seed_mean(train),
        "final_train_loss_per_seed": train.tolist(),
        "best_valid_loss": best,
        "best_valid_step": best_step,
        "best_valid_loss_per_seed": per_seed,
        "final_valid_loss": metrics.seed_mean(valid),
        "best_valid_accuracy": None,
        "diverged": int(div.sum()),
        "curve": {"train_loss": curves.train_loss.tolist(), "valid_loss": curves.valid_loss.tolist()},
    }
    if curves.valid_accuracy is not None:
        if best_step is not None:  # accuracy at the early-stopping step
            i = int(np.searchsorted(curves.steps, best_step))
            entry["best_valid_accuracy"] = float(np.mean(curves.valid_accuracy[:, i]))
        entry["curve"]["valid_accuracy"] = curves.valid_accuracy.tolist()
    return entry


def reference_baseline(suite: Suite, ran: Sequence[str]) -> str | None:
    """The baseline the saturation rule looks at: the suite's reference, else tuned Adam, else none."""
    for name in (suite.saturation_reference, ADAM_TUNED):
        if name in ran:
            return name
    return None


def saturation(suite: Suite, opts: Mapping[str, Any], ran: Sequence[str], floor: float, atol: float) -> dict:
    """Which metrics this task counts for, and why (see :mod:`lopt.eval.metrics`, "Saturation rule")."""
    ref = reference_baseline(suite, ran)
    out = {}
    for metric, key in (("train", "final_train_loss"), ("valid", "best_valid_loss")):
        if ref is None:
            out[metric] = {"counts": True, "reference": None, "why": "no reference baseline was run"}
            continue
        value = opts[ref][key]
        rule = metrics.counts_for_metric(value, floor, suite.tie_rtol, atol, suite.saturation_bands)
        above = rule["bands_above_floor"]
        why = (f"{ref} {key.replace('_', ' ')} {value:.4g} is "
               + ("diverged" if above is None else f"{above:.1f} tie bands above the floor {floor:.4g}")
               + f" ({'>=' if rule['counts'] else '<'} {suite.saturation_bands:g} required)")
        out[metric] = {**rule, "reference": ref, "reference_value": value, "floor": floor,
                       "bands_required": suite.saturation_bands, "why": why}
    return out


def compare_task(learned: Sequence[str], baselines: Sequence[str], runs: TaskRuns, opts: Mapping[str, Any],
                 num_steps: int, rtol: float, atol: float) -> tuple[dict, dict]:
    """Speedups and win/tie/loss of every learned optimizer against every baseline, on both metrics."""
    speedups: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}
    for n in learned:
        speedups[n], outcomes[n] = {}, {}
        a = opts[n]
        for b in baselines:
            cs = [runs.long.get(b, runs.curves[b]), *runs.other_horizons.get(b, [])]
            speedups[n][b] = {
                "train": metrics.speedup_over_runs(
                    a["final_train_loss"], [(c.steps, metrics.seed_mean_curve(c.train_loss)) for c in cs], num_steps),
                "valid": metrics.speedup_over_runs(
                    a["best_valid_loss"], [(c.steps, metrics.seed_mean_curve(c.valid_loss)) for c in cs],
                    a["best_valid_step"]),
            }
            outcomes[n][b] = {
                "train": metrics.compare(a["final_train_loss"], opts[b]["final_train_loss"], rtol, atol),
                "valid": metrics.compare(a["best_valid_loss"], opts[b]["best_valid_loss"], rtol, atol),
            }
    return speedups, outcomes


def evaluate_task(
    spec: TaskSpec,
    learned: Mapping[str, ExportsOptax],
    suite: Suite,
    report_seeds: list[int],
    baselines: Sequence[str] = BUILTIN,
    steps_scale: float = 1.0,
    tick: Any = None,
) -> dict[str, Any]:
    """Every optimizer of the protocol on one task; returns the task's report entry."""
    tick = tick or (lambda *_: None)
    task = build_task(spec)
    data = task.load_data()
    num_steps, every = scaled_steps(spec.steps, steps_scale, spec.eval_every or suite.eval_every)
    runs = TaskRuns()

    for name, opt in learned.items():
        t0 = time.perf_counter()
        tx = learned_optax(opt, task, num_steps, uses_mup(opt, suite))
        runs.curves[name] = run_optimizer(task, data, tx, report_seeds, num_steps, every)
        runs.wall_time_s[name] = time.perf_counter() - t0
        tick(f"{spec.display}: {name}")
    opts = {name: summarize_runs(runs.curves[name], suite.divergence_factor) for name in learned}
    if ADAM_DEFAULT in baselines or ADAM_TUNED in baselines:
        run_adam(runs, task, data, suite, report_seeds, num_steps, every, ADAM_DEFAULT in baselines,
                 ADAM_TUNED in baselines)
        for name in (n for n in (ADAM_DEFAULT, ADAM_TUNED) if n in baselines):
            tick(f"{spec.display}: {name}")
    if ADAMW_COSINE in baselines:
        run_adamw_cosine(runs, task, data, suite, report_seeds, num_steps, every)
        targets = [(opts[n]["final_train_loss"], opts[n]["best_valid_loss"]) for n in learned]
        extend_adamw_cosine(runs, task, data, suite, report_seeds, num_steps, every, targets)
        tick(f"{spec.display}: {ADAMW_COSINE}")
    for name in (n for n in TUNING_FREE if n in baselines):  # horizon-free at their defaults: run longer
        t0 = time.perf_counter()
        tx, at = tuning_free(name)
        long_steps = speedup_steps(suite, num_steps, every)
        runs.long[name] = run_optimizer(task, data, tx, report_seeds, long_steps, every, eval_params=at)
        runs.curves[name] = runs.long[name].upto(num_steps)
        runs.wall_time_s[name] = time.perf_counter() - t0
        tick(f"{spec.display}: {name}")
    for b in suite.baselines:
        t0 = time.perf_counter()
        runs.curves[b.name] = run_optimizer(task, data, make_baseline(b), report_seeds, num_steps, every)
        runs.wall_time_s[b.name] = time.perf_counter() - t0
        tick(f"{spec.display}: {b.name}")

    opts.update({name: summarize_runs(c, suite.divergence_factor) for name, c in runs.curves.items()
                 if name not in opts})
    for name, lr in runs.lrs.items():
        opts[name]["lr"] = lr
    ran = [b for b in baselines if b in runs.curves] + [b.name for b in suite.baselines]
    atol, floor = suite.tie_atol * float(task.loss_scale), float(task.loss_floor)
    speedups, outcomes = compare_task(list(learned), ran, runs, opts, num_steps, suite.tie_rtol, atol)
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
        "curve_steps": runs.curves[next(iter(runs.curves))].steps.tolist(),
        "tuning": runs.tuning,
        "optimizers": opts,
        "counted": saturation(suite, opts, ran, floor, atol),
        "speedup": speedups,
        "speedup_horizons": {b: [int(c.steps[-1]) for c in [runs.long.get(b, runs.curves[b]),
                                                             *runs.other_horizons.get(b, [])]] for b in ran},
        "outcomes": outcomes,
        "wall_time_s": runs.wall_time_s,
    }


def evaluate_suite(
    learned: Mapping[str, ExportsOptax],
    suite: Suite,
    seeds: int | None = None,
    steps_scale: float = 1.0,
    progress: bool = True,
    sources: Mapping[str, str] | None = None,
    baselines: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the protocol on every task of ``suite``; returns the report dict (see :mod:`lopt.eval.report`).

    ``baselines``: built-in baseline names (:data:`lopt.eval.baselines.BUILTIN`,
    all by default) run beside the suite's own optax baselines.
    """
    if not learned:
        raise EvalError("no learned optimizer to evaluate")
    chosen = tuple(BUILTIN if baselines is None else baselines)
    unknown = [b for b in chosen if b not in BUILTIN]
    if unknown:
        raise EvalError(f"unknown baseline {unknown[0]!r}; valid baselines: {', '.join(BUILTIN)}")
    chosen = tuple(b for b in BUILTIN if b in chosen)
    reserved = set(BUILTIN) | {b.name for b in suite.baselines}
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
    units = len(suite.tasks) * (len(learned) + len(chosen) + len(suite.baselines))
    start = time.perf_counter()
    with _progress(units, progress) as bar:

        def tick(msg: str) -> None:
            bar.set_description(msg[:60])
            bar.update(1)

        tasks = [evaluate_task(spec, learned, suite, report_seeds, chosen, steps_scale, tick) for spec in suite.tasks]
    dev = jax.devices()[0]
    report = {
        "suite": suite.to_dict(),
        "learned": list(learned),
        "baselines": list(chosen) + [b.name for b in suite.baselines],
        "sources": {n: (sources or {}).get(n, n) for n in learned},
        "mup_mode": {n: uses_mup(opt, suite) for n, opt in learned.items()},
        "protocol": {
            "tuning_seeds": tuning_seeds(suite.tuning_seeds),
            "report_seeds": report_seeds,
            "steps_scale": steps_scale,
            "min_valid_evals": MIN_VALID_EVALS,
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
