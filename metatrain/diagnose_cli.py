"""``lopt diagnose``: measure each meta-gradient estimator's bias, variance and cost on a config.

    lopt diagnose --config reference --out runs/diagnose_reference
    lopt diagnose --config smoke --out runs/d --estimators pes,es --sweep truncation_length=5,10,20
    lopt diagnose --recipe default_v1 --stage finetune --out runs/diagnose_default_v1_finetune

``--recipe NAME --stage S`` diagnoses a recipe stage's config (S: its name or
1-based number, as ``lopt recipe NAME --dry-run`` lists them) at the weights
that stage starts from: a stage with ``optimizer.init_from: previous`` reads
the previous stage's result under ``--recipe-out`` (``lopt recipe``'s own
default, runs/recipe_<name>).

At the config's meta-parameters (fresh, ``optimizer.init_from``, or a run's
newest checkpoint with ``--from DIR``) every estimator is compared with a
reference gradient of the same full-episode meta-objective (exact backprop
through whole episodes where it fits in memory and is predicted to compile
within ``--compile-budget-s``, else directional derivatives in a subspace, see
:mod:`lopt.metatrain.diagnose_subspace`): bias (cosine
and relative error of its mean), per-sample variance and the samples needed
to reach ``--target-cosine``, and the cost in seconds and inner steps per
estimate, hence seconds per unit of signal. ``--sweep key=v1,v2``
repeats the measurement at each value of one setting (one factor at a time).
Writes DIR/diagnose.json, DIR/diagnose.md and PNG plots.
"""

from __future__ import annotations

import argparse
import math


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lopt import configs
    from lopt.metatrain.diagnose_options import SWEEP_KEYS, DiagnoseOptions

    d = DiagnoseOptions()
    parser.add_argument("--config", default=None,
                        help=f"shipped config name ({', '.join(configs.names('train'))}) or a YAML path (default: built-in defaults)")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help=f"diagnose a stage of a recipe ({', '.join(configs.names('recipes'))} or a YAML path) instead of --config")
    parser.add_argument("--stage", default=None, metavar="S",
                        help="the recipe's stage: name or 1-based number (lopt recipe NAME --dry-run lists them)")
    parser.add_argument("--recipe-out", default=None, metavar="DIR",
                        help="the recipe's run, where a stage that starts from the previous one finds it "
                             "(default: runs/recipe_<name>, as lopt recipe)")
    parser.add_argument("--out", default="runs/diagnose", help="output directory (diagnose.json, diagnose.md, plots)")
    parser.add_argument("--estimators", default=",".join(d.estimators), help="comma-separated: pes,es,full_es,backprop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as in lopt train (repeatable)")
    parser.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                        help="diagnose at a run's meta-parameters (its newest checkpoint, else its optimizer.safetensors)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help=f"repeat at each value of one setting (repeatable); keys: {', '.join(SWEEP_KEYS)}")
    parser.add_argument("--sweep-estimators", default="", help="estimators the sweeps measure (default: all of --estimators)")
    parser.add_argument("--target-cosine", type=float, default=d.target_cosine,
                        help="the signal level whose cost is reported (cosine with the full-episode gradient)")
    parser.add_argument("--samples", type=int, default=d.samples, help="estimates per chain (pes, es, backprop)")
    parser.add_argument("--chains", type=int, default=d.chains, help="independent chains (pes, es, backprop)")
    parser.add_argument("--full-es-samples", type=int, default=d.full_es_samples, help="full_es estimates")
    parser.add_argument("--reference", default=d.reference, choices=("auto", "backprop", "subspace", "es"),
                        help="reference gradient: exact backprop; subspace: directional derivatives of the "
                             "full-episode objective along --subspace-dims random directions (estimators are compared "
                             "through the same projection); es: full-dimensional antithetic ES. auto: backprop where "
                             "it fits in memory and the compile budget, else subspace")
    parser.add_argument("--subspace-dims", type=int, default=d.subspace_dims,
                        help="random directions of the subspace reference (each one antithetic pair of whole "
                             "episodes per reference sample)")
    parser.add_argument("--reference-samples", type=int, default=d.reference_samples,
                        help="full-episode backprop gradients, each over all the config's tasks (more, up to 16x, "
                             "while their mean's expected cosine with the truth is below 0.99 and the budget allows)")
    parser.add_argument("--reference-es-samples", type=int, default=d.reference_es_samples,
                        help="antithetic pairs when the reference is ES")
    parser.add_argument("--max-memory-gb", type=float, default=d.max_memory_gb,
                        help="memory allowed for the backprop reference (0: half of what is available)")
    parser.add_argument("--compile-budget-s", type=float, default=d.compile_budget_s,
                        help="compile the backprop estimator's step only where predicted (from one forward "
                             "truncation's compile, in CPU seconds so that the load does not change the choice) within "
                             "this many seconds: else it is listed as not measured, with the reason (0: no cap)")
    parser.add_argument("--reference-compile-budget-s", type=float, default=d.reference_compile_budget_s,
                        help="with --reference auto, draw the exact backprop reference only where its compile is "
                             "predicted (as above) within this many CPU seconds, else the subspace reference "
                             "(0: no cap)")
    parser.add_argument("--sample-budget-s", type=float, default=d.sample_budget_s,
                        help="seconds of sampling the reference and full_es may each spend before stopping early "
                             "(never below 2 samples; 0: no cap)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of every sample drawn")
    parser.add_argument("--no-background-compile", action="store_true",
                        help="compile each estimator's programs only when it is sampled (default: on a second thread "
                             "while the reference runs, on machines with 2 or more cores; same samples either way)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from lopt.metatrain.config import ConfigError
    from lopt.metatrain.diagnose_report import write_all
    from lopt.metatrain.diagnose_options import DiagnoseOptions, parse_sweep
    from lopt.metatrain.diagnose_run import diagnose
    from lopt.metatrain.diagnose_stats import reference_is_noise

    config, name = config_from_args(args)
    estimators = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    if len(set(estimators)) != len(estimators):
        raise ConfigError(f"--estimators lists one twice: {args.estimators}")
    options = DiagnoseOptions(
        estimators=estimators,
        target_cosine=args.target_cosine,
        samples=args.samples,
        chains=args.chains,
        full_es_samples=args.full_es_samples,
        reference=args.reference,
        reference_samples=args.reference_samples,
        reference_es_samples=args.reference_es_samples,
        subspace_dims=args.subspace_dims,
        max_memory_gb=args.max_memory_gb,
        sample_budget_s=args.sample_budget_s,
        compile_budget_s=args.compile_budget_s,
        reference_compile_budget_s=args.reference_compile_budget_s,
        background_compile=not args.no_background_compile,
        seed=args.seed,
        sweeps=tuple(parse_sweep(s) for s in args.sweep),
        sweep_estimators=tuple(e.strip() for e in args.sweep_estimators.split(",") if e.strip()),
    )
    result = diagnose(config, options, from_dir=args.from_dir, progress=not args.no_progress,
                      config_name=name, out_dir=args.out)
    paths = write_all(result, args.out)
    ref = result["reference"]
    noise = reference_is_noise(ref)  # as diagnose.md: comparing with a noise reference would rank noise
    if noise:
        print(f"lopt diagnose: no ranking: the {ref['method']} reference gradient is noise (expected "
              f"cosine with the true gradient {ref['expected_cosine_to_truth']:.2f}); diagnose.md says how to get one")
    for r in [] if noise else result["ranking"]:
        secs = r["seconds_to_target"]
        shown = f"{secs:.3g} s" if secs is not None and math.isfinite(secs) else "never"
        cos = ("n/a (non-finite samples)" if r["cosine"] is None
               else f"{r['cosine']:.2f}" if r["mean_resolved"] else "unresolved (mean below its noise)")
        print(f"lopt diagnose: {r['estimator']:>8}: bias cosine {cos}, "
              f"seconds to cosine {options.target_cosine:g}: {shown}")
    print(f"lopt diagnose: wrote {', '.join(str(p) for p in paths)}")
    return 0


def config_from_args(args: argparse.Namespace):
    """The config to diagnose and its display name: ``--config``, or ``--recipe``'s ``--stage``, then ``--set``."""
    from pathlib import Path

    from lopt.metatrain.config import ConfigError, check, from_dict, load_config, set_dotted, to_dict, yaml_load

    if args.recipe is None:
        if args.stage is not None or args.recipe_out is not None:
            raise ConfigError("--stage and --recipe-out need --recipe NAME")
        return load_config(args.config, args.overrides), args.config or "defaults"
    if args.config is not None:
        raise ConfigError("give either --config or --recipe (with --stage), not both")
    from lopt.metatrain.recipe import load_recipe, stage_config

    recipe = load_recipe(args.recipe)
    names = [st.name for st in recipe.stages]
    listed = ", ".join(f"{i + 1}. {n}" for i, n in enumerate(names))
    if args.stage is None:
        if len(names) > 1:
            raise ConfigError(f"--recipe {recipe.name} has {len(names)} stages: name one with --stage ({listed})")
        index = 0
    elif args.stage in names:
        index = names.index(args.stage)
    elif args.stage.isdigit() and 1 <= int(args.stage) <= len(names):
        index = int(args.stage) - 1
    else:
        raise ConfigError(f"--stage {args.stage!r}: recipe {recipe.name} has stages {listed}")
    out = Path(args.recipe_out) if args.recipe_out else Path("runs") / f"recipe_{recipe.name}"
    config = stage_config(recipe, index, out)
    if args.overrides:
        raw = to_dict(config)
        for item in args.overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            key, text = item.split("=", 1)
            try:
                value = yaml_load(text)
            except Exception:  # yaml.YAMLError (yaml is imported by the config module)
                raise ConfigError(f"override {key}: value {text!r} is not valid YAML") from None
            set_dotted(raw, key.strip(), value, "override ")
        config = from_dict(type(config), raw)
        check(config)
    stage = recipe.stages[index]
    init = config.optimizer.init_from
    if stage.init_from_previous and args.from_dir is None and init and not Path(init).is_file():
        raise ConfigError(
            f"stage {stage.name} starts from the previous stage's result {init}, which does not exist: run "
            f"`lopt recipe {args.recipe}` through stage {names[index - 1]} (or point --recipe-out at such a run), "
            "or give weights with --from DIR or --set optimizer.init_from=FILE"
        )
    return config, f"{recipe.name} stage {index + 1} ({stage.name})"
