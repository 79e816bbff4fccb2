"""The numbers a report is made of, each defined in one place.

All functions are plain numpy over finished curves (host side, after the
jitted runs): they are the *definitions* a reader of ``report.md`` needs.

**Final training loss.** The last point of a run's training curve (a
windowed mean of minibatch losses, see :mod:`lopt.eval.runs`). A task's final
loss for an optimizer is the mean over the reporting seeds; a diverged run
counts as ``+inf`` (so a mean over seeds with a divergence is ``inf``: no
averaging a blow-up away).

**Best validation loss.** Validation runs on the whole validation split at the
same steps for every optimizer (at least ``MIN_VALID_EVALS`` + 1 points,
step 0 included). The seed-mean curve (a non-finite point counts as ``+inf``)
is taken, and its minimum is the best validation loss: early stopping at one
step for all seeds, as a practitioner would pick it. ``T*`` is the first step
at which that minimum is reached.

**Divergence.** A run diverged if any point of its training-loss curve is
non-finite or exceeds ``divergence_factor`` times its initial loss (the loss at
step 0, which is the same for every optimizer since all share the init key).

**Speedups** of a learned optimizer over a baseline, both from seed-mean curves:

* validation: ``S / T*`` where ``S`` is the first step at which the
  baseline's validation curve is <= the learned optimizer's best validation
  loss;
* training: ``S / T`` where ``T`` is the learned optimizer's number of steps
  and ``S`` the first step at which the baseline's training curve is <= the
  learned optimizer's final training loss.

Where the learned optimizer is faster, the baseline needs more than ``T``
steps, so the baselines are run longer (issue 14: speedups uncensored where we
are faster). Those whose trajectory does not depend on the planned horizon
(Adam at a constant rate, and the tuning-free ones at their defaults) simply
run ``speedup_horizon`` times longer. AdamW-cosine's schedule *is* the horizon,
so "the steps it needs" is the fewest over the horizons it could be planned
for: it is run again at its tuned peak rate planned for ``1.25 T``, ``1.5 T``,
... up to ``speedup_horizon * T`` (until its curves reach the targets), and
for ``0.75 T``, ``0.5 T``, ``0.25 T`` (while they still reach one: a run that
anneals sooner can get there sooner), and ``S`` is the fewest steps any of
its runs needs (:func:`speedup_over_runs`; the resolution is the rung,
``T / 4``). A baseline that never gets there is *censored*: the speedup is
reported as the lower bound (its longest run's last step over ``T*`` or ``T``) with
``censored = true`` (shown ``>x``). No speedup
(``None``) where the learned optimizer diverged, or never improved on its
initial validation loss (``T* = 0``). Resolution is the curve spacing.

**Win / tie / loss** of the learned optimizer against a baseline on a task
compares two numbers ``a`` (learned) and ``b`` (baseline), final training
losses or best validation losses::

    tie   if |a - b| <= band(a, b),  band = tie_rtol * max(|a|, |b|) + tie_atol * loss_scale
    win   if a < b otherwise,   loss if a > b otherwise

A diverged side is ``+inf``: both diverged is a tie. ``tie_rtol`` (default 2%)
absorbs seed noise of minibatch training; ``tie_atol`` (default 1e-4 of the
task's ``loss_scale``) stops two runs that both reached ~0 loss from being
called a win for whichever is a few ulps lower.

**Saturation rule** (which tasks count for a metric). A task whose baselines
already sit at the task's loss floor cannot tell optimizers apart. It counts
for a metric only if the suite's reference baseline (``saturation.reference``,
default tuned AdamW-cosine) ends at least ``saturation.bands`` (default 10) tie
bands above the floor: ``b - floor >= bands * (tie_rtol * |b| + tie_atol *
loss_scale)``, with ``b`` the reference's final training loss (training
metric) or best validation loss (validation metric) and ``floor`` the task's
``loss_floor`` (0 unless the task knows its minimum). The rule looks at the
baselines only, so it cannot favour the learned optimizer.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def diverged_runs(train_loss: np.ndarray, factor: float) -> np.ndarray:
    """[R] bool: which runs (rows of an [R, P] curve array) diverged."""
    curves = np.asarray(train_loss, np.float64)
    initial = np.abs(curves[:, :1])
    bad = ~np.isfinite(curves)
    with np.errstate(invalid="ignore"):
        blown = np.nan_to_num(curves, nan=np.inf, posinf=np.inf) > factor * np.maximum(initial, 1e-12)
    return np.any(bad | blown, axis=1)


def final_values(curves: np.ndarray, diverged: np.ndarray | None = None) -> np.ndarray:
    """[R] last point of each run; diverged runs become +inf."""
    last = np.asarray(curves, np.float64)[:, -1].copy()
    last[~np.isfinite(last)] = np.inf
    if diverged is not None:
        last[np.asarray(diverged, bool)] = np.inf
    return last


def seed_mean(values: np.ndarray) -> float:
    """Mean over seeds, ``inf`` if any seed is ``inf`` (a divergence is never averaged away)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return float("nan")
    if not np.all(np.isfinite(v)):
        return float("inf")
    return float(np.mean(v))


def steps_to_reach(steps: Sequence[int], curve: Sequence[float], target: float) -> int | None:
    """First step of ``curve`` (sampled at ``steps``) with value <= ``target``; None if never."""
    if not math.isfinite(target):
        return None
    c = np.asarray(curve, np.float64)
    hits = np.nonzero(np.isfinite(c) & (c <= target))[0]
    return int(np.asarray(steps)[hits[0]]) if hits.size else None


def seed_mean_curve(curves: np.ndarray) -> np.ndarray:
    """[P] mean over runs of an [R, P] curve array; a non-finite point counts as +inf."""
    c = np.asarray(curves, np.float64)
    return np.mean(np.where(np.isfinite(c), c, np.inf), axis=0)


def best_along(steps: Sequence[int], curve: Sequence[float]) -> tuple[float, int | None]:
    """``(min of curve, first step reaching it)``; ``(inf, None)`` if no point is finite."""
    c = np.asarray(curve, np.float64)
    finite = np.isfinite(c)
    if not finite.any():
        return float("inf"), None
    i = int(np.argmin(np.where(finite, c, np.inf)))
    return float(c[i]), int(np.asarray(steps)[i])


def speedup(
    target: float,
    base_steps: Sequence[int],
    base_curve: Sequence[float],
    our_steps: int | None,
) -> dict[str, float | bool | int | None]:
    """``S / our_steps``, ``S`` the first step the baseline's curve is <= ``target`` (see module docstring).

    Censored at ``base_steps[-1] / our_steps`` when the baseline never gets
    there; None when ``target`` is not finite or ``our_steps`` is 0/None.
    """
    return speedup_over_runs(target, [(base_steps, base_curve)], our_steps)


def speedup_over_runs(
    target: float,
    base_runs: Sequence[tuple[Sequence[int], Sequence[float]]],
    our_steps: int | None,
) -> dict[str, float | bool | int | None]:
    """:func:`speedup` against a baseline run at several planned horizons: ``S`` is the fewest steps any needs.

    ``base_runs`` are ``(steps, seed-mean curve)`` pairs, e.g. AdamW-cosine
    planned for ``T``, ``1.25 T``, ... (a schedule that follows the horizon
    has one trajectory per horizon). Censored at the longest run's last step
    when none gets there. ``run`` is the index of the run that got there first.
    """
    if not math.isfinite(target) or not our_steps:
        return {"speedup": None, "censored": False, "baseline_steps": None, "steps": our_steps}
    hits = [(s, i) for i, (steps, curve) in enumerate(base_runs)
            if (s := steps_to_reach(steps, curve, target)) is not None]
    if not hits:
        longest = max(int(steps[-1]) for steps, _ in base_runs)
        return {"speedup": longest / float(our_steps), "censored": True, "baseline_steps": None, "steps": our_steps}
    reached, run = min(hits)
    out = {"speedup": reached / float(our_steps), "censored": False, "baseline_steps": reached, "steps": our_steps}
    if len(base_runs) > 1:
        out["run"] = run
    return out


def tie_band(b: float, rtol: float, atol: float) -> float:
    """Width of the tie band at loss level ``b`` (``atol`` already in loss units)."""
    return rtol * abs(b) + atol


def counts_for_metric(reference: float, floor: float, rtol: float, atol: float, bands: float) -> dict:
    """The saturation rule (module docstring): does the task count, and by how many bands it clears the floor.

    A diverged reference (``inf``) leaves room above the floor: the task counts.
    """
    if not math.isfinite(reference):
        return {"counts": True, "bands_above_floor": None}
    band = tie_band(reference, rtol, atol)
    above = (reference - floor) / band if band > 0 else (math.inf if reference > floor else 0.0)
    return {"counts": bool(above >= bands), "bands_above_floor": float(above)}


def compare(a: float, b: float, rtol: float, atol: float) -> str:
    """``"win"``, ``"tie"`` or ``"loss"`` of final loss ``a`` against baseline ``b`` (lower is better)."""
    a_inf, b_inf = not math.isfinite(a), not math.isfinite(b)
    if a_inf and b_inf:
        return "tie"
    if a_inf:
        return "loss"
    if b_inf:
        return "win"
    if abs(a - b) <= rtol * max(abs(a), abs(b)) + atol:
        return "tie"
    return "win" if a < b else "loss"


def count_outcomes(outcomes: Sequence[str]) -> dict[str, int]:
    return {k: sum(1 for o in outcomes if o == k) for k in ("win", "tie", "loss")}


def median(values: Sequence[float]) -> float | None:
    """Median of the finite values (censored speedups count at their bound); None if none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def geometric_mean(values: Sequence[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else None
