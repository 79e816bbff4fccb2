"""The numbers a report is made of, each defined in one place.

All functions are plain numpy over finished curves (host side, after the
jitted runs): they are the *definitions* a reader of ``report.md`` needs.

**Final loss.** The last point of a run's curve (the loss measured at step
``num_steps``). A task's final loss for an optimizer is the mean over the
reporting seeds; a diverged run counts as ``+inf`` (so a mean over seeds with a
divergence is ``inf``: no averaging a blow-up away).

**Divergence.** A run diverged if any point of its training-loss curve is
non-finite or exceeds ``divergence_factor`` times its initial loss (the loss at
step 0, which is the same for every optimizer since all share the init key).

**Speedup** of the learned optimizer over tuned Adam on a task, with ``T`` the
steps the learned optimizer used and ``L*`` its final training loss (mean over
seeds)::

    speedup = S / T,  S = first curve step at which tuned Adam's seed-mean
                          training loss is <= L*

Tuned Adam (a constant learning rate, so its trajectory does not depend on the
planned horizon) is run for ``speedup_horizon * T`` steps so that speedups up
to ``speedup_horizon`` can be measured. If it never reaches ``L*`` in that
budget, the speedup is *censored*: reported as the lower bound
``speedup_horizon`` with ``speedup_censored = true`` (shown as ``>2.0``). If the
learned optimizer diverged, there is no speedup (``None``). Resolution is the
curve spacing ``eval_every``.

**Win / tie / loss** of the learned optimizer against a baseline on a task
compares the two final training losses ``a`` (learned) and ``b`` (baseline)::

    tie   if |a - b| <= tie_rtol * max(|a|, |b|) + tie_atol * loss_scale
    win   if a < b otherwise,   loss if a > b otherwise

A diverged side is ``+inf``: both diverged is a tie. ``tie_rtol`` (default 2%)
absorbs seed noise of minibatch training; ``tie_atol`` (default 1e-4 of the
task's ``loss_scale``) stops two runs that both reached ~0 loss from being
called a win for whichever is a few ulps lower.
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


def speedup(
    learned_final: float,
    adam_steps: Sequence[int],
    adam_mean_curve: Sequence[float],
    num_steps: int,
    horizon: float,
) -> dict[str, float | bool | int | None]:
    """Speedup of the learned optimizer over tuned Adam (see module docstring)."""
    if not math.isfinite(learned_final):
        return {"speedup": None, "speedup_censored": False, "adam_steps_to_match": None}
    reached = steps_to_reach(adam_steps, adam_mean_curve, learned_final)
    if reached is None:
        return {"speedup": float(horizon), "speedup_censored": True, "adam_steps_to_match": None}
    return {"speedup": reached / float(num_steps), "speedup_censored": False, "adam_steps_to_match": reached}


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


def win_possible(b: float, rtol: float, atol: float, floor: float = 0.0) -> bool:
    """Whether any final loss ``a >= floor`` can be a *win* against baseline loss ``b``.

    A win needs ``b - a > rtol * b + atol``; the best case ``a = floor`` (the
    task's ``loss_floor``: 0, or the exact minimum where the task knows it)
    gives ``b * (1 - rtol) - floor > atol``. A baseline that already reached
    the floor (a memorized training set, an exactly solved quadratic, least
    squares at its noise level) leaves at best a tie, except through sampling
    noise: reports count such tasks so a reader can see the ceiling on wins.
    """
    if not math.isfinite(b):
        return True
    return b * (1.0 - rtol) - floor > atol


def count_outcomes(outcomes: Sequence[str]) -> dict[str, int]:
    return {k: sum(1 for o in outcomes if o == k) for k in ("win", "tie", "loss")}


def median(values: Sequence[float]) -> float | None:
    """Median of the finite values (censored speedups count at their bound); None if none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def geometric_mean(values: Sequence[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else None
