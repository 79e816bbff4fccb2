"""The main job: meta-train a fresh optimizer, then hold it up against Adam.

``lopt train`` with no ``--config`` runs this. It meta-trains ``small_fc`` on
the offline default (the built-in defaults of :mod:`lopt.metatrain.config`: digits
MLPs, no download) into ``--out`` (default ``runs/main``), then evaluates the
fresh optimizer and the shipped ``default`` against Adam(1e-3) and per-task
tuned Adam on the ``quick`` suite, prints the table, and writes ``report.md``,
``report.json`` and ``summary.png`` to ``<out>/compare``. Everything is
resumable: run it again after an interruption and meta-training continues from
its last checkpoint.

It lives in ``eval/`` because it uses both meta-training and evaluation, and
data only flows that way (``metatrain`` never imports ``eval``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MAIN_OUT = "runs/main"
MAIN_SUITE = "quick"
# The main job stays minutes long: only the two Adam baselines (the others, with a second
# tuning grid and three more optimizers per task, are for `lopt eval`).
MAIN_BASELINES = ("adam_default", "adam_tuned")


def run_main_job(out_dir: str | Path = MAIN_OUT, overrides: tuple[str, ...] = (), progress: bool = True,
                 suite: str = MAIN_SUITE, allow_config_change: bool = False) -> dict:
    """Meta-train with the defaults into ``out_dir``, then compare on ``suite``; returns the report."""
    import lopt
    from lopt.eval.compare import compare_on_suite
    from lopt.metatrain.config import load_config
    from lopt.metatrain.trainer import train

    out = Path(out_dir)
    config = load_config(None, overrides)
    start = time.perf_counter()
    print(f"lopt: meta-training {config.optimizer.arch} on {', '.join(t.name for t in config.tasks)} "
          f"for {config.num_outer_steps} outer steps -> {out}", flush=True)
    fresh = train(config, out, progress=progress, allow_config_change=allow_config_change)
    print(f"lopt: meta-training done in {time.perf_counter() - start:.0f} s", flush=True)

    optimizers = {"fresh": fresh}
    if "default" in lopt.pretrained():
        optimizers["shipped_default"] = lopt.pretrained("default")
    else:  # a checkout without shipped weights still runs the comparison
        print("lopt: no shipped 'default' optimizer found; comparing the fresh one only", file=sys.stderr)
    report = compare_on_suite(optimizers, suite, out / "compare", progress=progress, baselines=MAIN_BASELINES)
    print(f"lopt: report and plots in {out / 'compare'} (total {time.perf_counter() - start:.0f} s)")
    return report


def main(args: argparse.Namespace) -> int:
    """Entry point used by ``lopt train`` when no ``--config`` is given."""
    from lopt.metatrain.trainer import TrainingInterrupted

    out = args.out if args.out != "runs/train" else MAIN_OUT
    try:
        run_main_job(out, tuple(args.overrides), progress=not args.no_progress,
                     allow_config_change=getattr(args, "allow_config_change", False))
    except TrainingInterrupted as stop:
        print(f"lopt train: {stop}", file=sys.stderr)
        return 130
    return 0
