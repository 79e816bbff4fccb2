"""Several learned optimizers against the baselines on one suite, in one report.

Used after meta-training to answer "is the freshly trained optimizer better
than the shipped default, and than Adam?" on the same seeds and batches::

    from lopt.eval.compare import compare_on_suite
    report = compare_on_suite({"new": lopt.load("runs/x/final"), "default": lopt.pretrained("small_fc")},
                              "smoke", "runs/x/compare")

The baselines are run once per task and shared by all learned optimizers, so
adding one costs only its own runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from lopt.eval.evaluate import evaluate_suite
from lopt.eval.report import outcome_lines, summary_table, write_report
from lopt.eval.suite import Suite, load_suite


def compare_on_suite(
    optimizers: Mapping[str, Any],
    suite: str | Path | Suite,
    out_dir: str | Path,
    seeds: int | None = None,
    steps_scale: float = 1.0,
    progress: bool = True,
    plots: bool = True,
    verbose: bool = True,
    baselines: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate every optimizer of ``optimizers`` (name -> anything with ``as_optax(num_steps)``).

    Writes ``report.json``, ``report.md``, ``summary.png`` and per-task curves
    into ``out_dir``; prints the table unless ``verbose=False``; returns the report.
    ``baselines``: built-in baseline names (all when None, see :mod:`lopt.eval.baselines`).
    """
    suite_obj = suite if isinstance(suite, Suite) else load_suite(suite)
    report = evaluate_suite(dict(optimizers), suite_obj, seeds=seeds, steps_scale=steps_scale, progress=progress,
                            baselines=baselines)
    write_report(report, out_dir, plots=plots)
    if verbose:
        print(summary_table(report))
        print("\n".join(outcome_lines(report)))
    return report
