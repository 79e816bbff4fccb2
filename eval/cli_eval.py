"""Compare a learned optimizer with Adam (default and tuned) on a suite of tasks.

``lopt eval --optimizer PATH|NAME --suite NAME|PATH [--baselines LIST] [--out DIR]``
trains every task of the suite with the learned optimizer and the baselines
(Adam(1e-3), tuned Adam, tuned AdamW with warm-up and cosine decay, prodigy,
schedule-free AdamW, D-Adaptation AdamW: see :mod:`lopt.eval.baselines`) plus
any extra optax baselines of the suite, then writes ``report.json``, ``report.md`` and PNG plots to ``--out``
(default ``runs/eval/<suite>``) and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lopt import configs

    parser.add_argument("--optimizer", help="saved optimizer file, or a pretrained name (required)")
    parser.add_argument(
        "--suite",
        default="smoke",
        help=f"shipped suite name ({', '.join(configs.names('eval'))}) or a YAML path (default: smoke)",
    )
    from lopt.eval.baselines import BUILTIN

    parser.add_argument(
        "--baselines",
        default="all",
        help=f"comma-separated baselines to run: {', '.join(BUILTIN)}; or 'all' (default) or 'none'",
    )
    parser.add_argument("--list-suites", action="store_true", help="print the shipped suite names and exit")
    parser.add_argument("--out", default=None, help="output directory (default: runs/eval/<suite>)")
    parser.add_argument("--seeds", type=int, default=None, help="number of reporting seeds (default: the suite's)")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every task's steps by this (e.g. 0.1 for a quick look)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from lopt.eval.errors import EvalError
    from lopt.eval.evaluate import evaluate_suite
    from lopt.eval.optimizers import resolve_optimizer
    from lopt.eval.report import outcome_lines, summary_table, write_report
    from lopt.eval.suite import load_suite

    if args.list_suites:
        from lopt import configs

        print("\n".join(configs.names("eval")))
        return 0
    if not args.optimizer:
        raise EvalError("--optimizer is required (a saved optimizer file or a pretrained name)")
    from lopt.eval.baselines import parse_baselines

    baselines = parse_baselines(args.baselines)  # validate cheap inputs before loading anything heavy
    suite = load_suite(args.suite)
    name, opt, source = resolve_optimizer(args.optimizer)
    out = Path(args.out) if args.out else Path("runs") / "eval" / suite.name
    report = evaluate_suite({name: opt}, suite, seeds=args.seeds, steps_scale=args.steps_scale,
                            progress=not args.quiet, sources={name: source}, baselines=baselines)
    paths = write_report(report, out, plots=not args.no_plots)
    print(summary_table(report))
    print("\n".join(outcome_lines(report)))
    print(f"\nwrote {paths['json']}, {paths['md']}" + ("" if args.no_plots else f" and plots in {out}"))
    return 0
