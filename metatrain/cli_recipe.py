"""Run a multi-stage meta-training recipe (resumes; skips finished stages).

    lopt recipe default_v2 --out runs/recipe_default_v2
    lopt recipe my_recipe.yaml --out runs/mine

Each stage trains into ``OUT/<stage>/`` exactly as ``lopt train`` would;
``OUT/optimizer.safetensors`` is the last stage's optimizer with the recipe's
provenance (stage configs, seeds, times, SHA-256 of each result) in its
metadata. Ctrl-C saves the running stage; the same command resumes.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lopt import configs

    parser.add_argument(
        "recipe", nargs="?", help=f"shipped recipe name ({', '.join(configs.names('recipes'))}) or a YAML path"
    )
    parser.add_argument("--out", default=None, help="output directory (default: runs/recipe_<name>)")
    parser.add_argument("--list", action="store_true", help="print the shipped recipe names and exit")
    parser.add_argument("--dry-run", action="store_true", help="validate every stage's config and print the plan")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lopt import configs
    from lopt.metatrain.config import ConfigError
    from lopt.metatrain.recipe import load_recipe, run_recipe

    if args.list:
        print("\n".join(configs.names("recipes")))
        return 0
    if not args.recipe:
        raise ConfigError("name a recipe (lopt recipe --list shows the shipped ones)")
    recipe = load_recipe(args.recipe)
    out = Path(args.out) if args.out else Path("runs") / f"recipe_{recipe.name}"
    if args.dry_run:
        for i, st in enumerate(recipe.stages):
            warm = "previous stage" if st.init_from_previous else (st.config.optimizer.init_from or "fresh")
            print(f"{i + 1}. {st.name}: {st.config.optimizer.arch}, {st.config.num_outer_steps} outer steps, "
                  f"seed {st.config.seed}, from {warm}")
        return 0

    from lopt.metatrain.trainer import TrainingInterrupted, train

    def train_fn(config, stage_dir):
        return train(config, stage_dir, progress=False if args.no_progress else None)

    try:
        final = run_recipe(recipe, out, train_fn, log=lambda m: print(f"lopt recipe: {m}", file=sys.stderr))
    except TrainingInterrupted as stop:
        print(f"lopt recipe: {stop}", file=sys.stderr)
        return 130
    print(f"lopt recipe: wrote {final}")
    return 0
