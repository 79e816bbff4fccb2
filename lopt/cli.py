"""The ``lopt`` command line: parses arguments and hands off to the packages.

Each subcommand lives in the package that does the work and exposes two
functions, ``add_arguments(parser)`` and ``main(args) -> int``. They are
imported lazily so that ``lopt`` itself depends only on jax and optax, and a
user who only deploys an optimizer never imports the meta-training code.

Errors that come from bad input (unknown names, malformed configs, broken
files) are printed as one line, ``lopt: error: ...``, with exit status 2.
Set ``LOPT_DEBUG=1`` to see the full traceback instead. Ctrl-C exits with
status 130 (``lopt train`` first saves a checkpoint; see its ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("lopt.tasks.cli", "list registered tasks and task families"),
    "train": ("lopt.metatrain.cli", "meta-train a learned optimizer from a YAML config"),
    "recipe": ("lopt.metatrain.cli_recipe", "run a multi-stage meta-training recipe (configs/recipes/)"),
    "eval": ("lopt.eval.cli_eval", "compare a learned optimizer with Adam on a suite of tasks"),
    "bench": ("lopt.eval.cli_bench", "measure step time, meta-training throughput and memory"),
    "diagnose": ("lopt.metatrain.diagnose_cli", "measure each meta-gradient estimator's bias, variance and cost"),
}


# import names of the ``train`` extra (pyproject.toml): without them the meta-training and evaluation commands
# cannot run, which is a missing install step, not a bug
TRAIN_EXTRA_MODULES = frozenset({"flax", "yaml", "tqdm", "tensorflow_datasets", "importlib_resources", "sklearn",
                                 "matplotlib"})


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="lopt", description="Meta-train and use learned optimizers.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(sp)
        modules[name] = module
    return parser, modules


def _is_main_job(args: argparse.Namespace) -> bool:
    """``lopt train`` without ``--config`` (and not joining a multi-host run) is the main job:
    meta-train on the offline default, then compare with Adam (see :mod:`lopt.eval.main_job`)."""
    if args.command != "train" or args.config is not None or args.list_configs:
        return False
    flags = (args.coordinator, args.num_processes, args.process_id)
    return not args.distributed and all(x is None for x in flags)


def main(argv: list[str] | None = None) -> int:
    try:  # a Ctrl-C while the subcommands are imported is an interruption too, not a traceback
        parser, modules = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("lopt: interrupted", file=sys.stderr)
        return 130
    if args.command is None:
        parser.print_help()
        return 0
    handler = modules[args.command]
    if _is_main_job(args):
        handler = importlib.import_module("lopt.eval.main_job")
    try:
        return int(handler.main(args) or 0)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES or os.environ.get("LOPT_DEBUG"):
            raise
        print(f"lopt: error: `lopt {args.command}` needs the meta-training extras (module {err.name!r} is not "
              "installed): pip install 'lopt[train]'", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:  # bad input, not a bug
        if os.environ.get("LOPT_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lopt: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lopt: interrupted", file=sys.stderr)
        if argv is None:  # the real command (tests pass argv and get the status back)
            _exit_now(130)
        return 130


def _exit_now(status: int) -> None:
    """Exit without interpreter teardown after a Ctrl-C.

    A KeyboardInterrupt can land while JAX's C++ runtime is mid-call (a
    compile, a transfer); tearing the interpreter down afterwards then crashed
    with a segfault (exit -11). Nothing of ours needs teardown: files are
    written atomically and closed, so flush the streams and leave.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
