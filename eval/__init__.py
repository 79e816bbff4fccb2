"""Honest benchmarks of learned optimizers: quality against Adam, speed, memory.

* :mod:`lopt.eval.suite` -- evaluation suites (YAML in ``configs/eval/``), validated.
* :mod:`lopt.eval.runs` -- batched training runs of one task with any optax optimizer.
* :mod:`lopt.eval.baselines` -- Adam(1e-3), tuned Adam, tuned AdamW-cosine, prodigy,
  schedule-free AdamW, D-Adaptation AdamW (``--baselines``).
* :mod:`lopt.eval.tuning`, :mod:`lopt.eval.tuned_runs` -- learning rates tuned by best validation loss.
* :mod:`lopt.eval.evaluate` -- the protocol: learned optimizers against every baseline.
* :mod:`lopt.eval.metrics` -- best validation loss, speedups, win/tie/loss, the saturation
  rule, divergence (defined precisely there).
* :mod:`lopt.eval.report`, :mod:`lopt.eval.plots` -- ``report.json``, ``report.md``, PNGs.
* :mod:`lopt.eval.compare` -- several learned optimizers against the baselines on one suite.
* :mod:`lopt.eval.optimizers` -- ``--optimizer PATH|NAME`` to a trained optimizer.
* :mod:`lopt.eval.bench`, :mod:`lopt.eval.bench_step` -- step time, meta-training
  throughput, state memory (latest numbers in ``BENCHMARKS.md``).
* :mod:`lopt.eval.cli_eval`, :mod:`lopt.eval.cli_bench` -- ``lopt eval`` / ``lopt bench``.

Submodules are imported explicitly; importing :mod:`eval` itself is cheap.
"""

from lopt.eval.errors import EvalError

__all__ = ["EvalError"]
