"""Honest benchmarks of learned optimizers: quality against Adam, speed, memory.

* :mod:`eval.suite` -- evaluation suites (YAML in ``configs/eval/``), validated.
* :mod:`eval.runs` -- vmapped training runs of one task with any optax optimizer.
* :mod:`eval.evaluate` -- the protocol: learned optimizer vs Adam(1e-3) vs tuned Adam.
* :mod:`eval.metrics` -- speedup, win/tie/loss, divergence (defined precisely there).
* :mod:`eval.report`, :mod:`eval.plots` -- ``report.json``, ``report.md``, PNGs.
* :mod:`eval.compare` -- several learned optimizers against Adam on one suite.
* :mod:`eval.optimizers` -- ``--optimizer PATH|NAME`` to a trained optimizer.
* :mod:`eval.bench`, :mod:`eval.bench_step` -- step time, meta-training
  throughput, state memory (latest numbers in ``BENCHMARKS.md``).
* :mod:`eval.cli_eval`, :mod:`eval.cli_bench` -- ``lopt eval`` / ``lopt bench``.

Submodules are imported explicitly; importing :mod:`eval` itself is cheap.
"""

from eval.errors import EvalError

__all__ = ["EvalError"]
