"""Meta-train a learned optimizer from a YAML config (resumes when DIR holds a checkpoint).

    lopt train --config smoke --out runs/smoke --set estimator.std=0.02

``--config`` takes a shipped config name (``lopt train --list-configs``) or a
path to a YAML file.

Without ``--config`` this is the main job: meta-train with the built-in defaults
(the offline digits default) into ``--out`` (default ``runs/main``), then compare
the result and the shipped default with Adam on the ``quick`` suite
(:mod:`lopt.eval.main_job`).
Ctrl-C saves a checkpoint and exits; the same command resumes (from the newest
intact checkpoint). Rerunning into a DIR that holds a run with another config
is refused, listing the keys that differ, unless ``--allow-config-change``.

The tasks are split over every visible device. ``--distributed`` joins a
multi-host run (the same command on every host, see :mod:`lopt.metatrain.distributed`):

    lopt train --config C --out DIR --distributed --coordinator HOST:PORT --num-processes 2 --process-id 0
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lopt import configs

    parser.add_argument(
        "--config",
        default=None,
        help=f"shipped config name ({', '.join(configs.names('train'))}) or a YAML path "
        "(default: the main job: built-in defaults, then a comparison with Adam)",
    )
    parser.add_argument("--list-configs", action="store_true", help="print the shipped config names and exit")
    parser.add_argument("--out", default="runs/train", help="output directory (checkpoints, metrics, optimizer)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set estimator.std=0.02 (repeatable; value parsed as YAML)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run in --out although its config differs from this one (refused otherwise; the "
        "change is recorded in the checkpoints and the optimizer's metadata)",
    )
    dist = parser.add_argument_group("multi-host (defaults: JAX_* environment variables, then auto-detection)")
    dist.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed)")
    implies = " (implies --distributed)"
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0" + implies)
    dist.add_argument("--num-processes", type=int, metavar="N", help="processes in the run" + implies)
    dist.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1" + implies)


def main(args: argparse.Namespace) -> int:
    from lopt.metatrain import distributed
    from lopt.metatrain.config import load_config
    from lopt.metatrain.trainer import OPTIMIZER_FILE, InterruptFlag, TrainingInterrupted, train

    if args.list_configs:
        from lopt import configs

        print("\n".join(configs.names("train")))
        return 0
    # Ctrl-C only sets a flag from here on, before anything is compiled: a
    # KeyboardInterrupt raised inside JAX's compiler can crash the interpreter.
    with InterruptFlag() as interrupt:
        config = load_config(args.config, args.overrides)
        if args.distributed or any(x is not None for x in (args.coordinator, args.num_processes, args.process_id)):
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        main_process = distributed.is_main_process()
        try:
            train(
                config,
                args.out,
                progress=False if args.no_progress else None,
                interrupt=interrupt,
                allow_config_change=getattr(args, "allow_config_change", False),
            )
        except TrainingInterrupted as stop:
            if main_process:
                print(f"lopt train: {stop}", file=sys.stderr)
            return 130
    if main_process:
        print(f"lopt train: wrote {args.out}/{OPTIMIZER_FILE}")
    return 0
