"""Measure step time, meta-training throughput and optimizer memory against Adam.

``lopt bench [--out DIR] [--only step_time,throughput,memory,large] [--quick]``
prints a table and writes ``bench.json`` and ``bench.md`` (default directory
``runs/bench``). Step times are best-of-N in one process, reported as ratios
to ``optax.adam``: on a shared or noisy machine, trust the ratios.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/bench", help="output directory (default: runs/bench)")
    parser.add_argument("--only", default=None, help="comma-separated parts: step_time,throughput,memory,large (default: all)")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (one model, few steps)")
    parser.add_argument("--models", default=None, help="comma-separated task names (default: mlp_digits,cnn_digits,char_lm)")
    parser.add_argument(
        "--architectures",
        default=None,
        help="comma-separated architectures, or pretrained:NAME for a shipped optimizer; a suffix @xla, @cpu, "
        "@pallas or @auto picks the update's implementation (default @auto; see lopt.kernels) "
        "(default: all architectures and pretrained:default)",
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per timed scan (default 1000; quick 50)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3; quick 2)")
    parser.add_argument("--outer-steps", type=int, default=None, help="meta-training steps timed (default 20; quick 3)")
    parser.add_argument("--large-steps", type=int, default=None, help="steps per timed scan on the 10.5M-parameter model (default 10)")
    parser.add_argument("--config", default=None, help="meta-training config for throughput (default: reference)")


def main(args: argparse.Namespace) -> int:
    from lopt.eval.bench import BenchSettings, parse_parts, render_table, run_bench, write_bench
    from lopt.eval.errors import EvalError

    for flag in ("steps", "repeats", "outer_steps", "large_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    kw = dict(
        parts=parse_parts(args.only),
        models=_csv(args.models),
        architectures=_csv(args.architectures),
        num_steps=args.steps,
        repeats=args.repeats,
        outer_steps=args.outer_steps,
        large_steps=args.large_steps,
        config=args.config,
    )
    if args.quick:
        settings = BenchSettings.quick(**kw)
    else:
        settings = BenchSettings(**{k: v for k, v in kw.items() if v is not None})
    result = run_bench(settings, quick=args.quick)
    paths = write_bench(result, Path(args.out))
    print(render_table(result))
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0
