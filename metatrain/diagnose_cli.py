"""``lopt diagnose``: measure each meta-gradient estimator's bias, variance and cost on a config.

    lopt diagnose --config reference --out runs/diagnose_reference
    lopt diagnose --config smoke --out runs/d --estimators pes,es --sweep truncation_length=5,10,20

At the config's meta-parameters (fresh, ``optimizer.init_from``, or a run's
newest checkpoint with ``--from DIR``) every estimator is compared with a
reference gradient of the same full-episode meta-objective (exact backprop
through whole episodes where it fits in memory, else many-sample antithetic
ES): bias (cosine and relative error of its mean), per-sample variance and the
samples needed to reach ``--target-cosine``, and the cost in seconds and inner
steps per estimate, hence seconds per unit of signal. ``--sweep key=v1,v2``
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
    parser.add_argument("--reference", default=d.reference, choices=("auto", "backprop", "es"),
                        help="reference gradient: exact backprop (auto: where it fits in memory) or antithetic ES")
    parser.add_argument("--reference-samples", type=int, default=d.reference_samples,
                        help="full-episode backprop gradients, each over all the config's tasks")
    parser.add_argument("--reference-es-samples", type=int, default=d.reference_es_samples,
                        help="antithetic pairs when the reference is ES")
    parser.add_argument("--max-memory-gb", type=float, default=d.max_memory_gb,
                        help="memory allowed for the backprop reference (0: half of what is available)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of every sample drawn")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from lopt.metatrain.config import ConfigError, load_config
    from lopt.metatrain.diagnose_report import write_all
    from lopt.metatrain.diagnose_options import DiagnoseOptions, parse_sweep
    from lopt.metatrain.diagnose_run import diagnose

    config = load_config(args.config, args.overrides)
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
        max_memory_gb=args.max_memory_gb,
        seed=args.seed,
        sweeps=tuple(parse_sweep(s) for s in args.sweep),
        sweep_estimators=tuple(e.strip() for e in args.sweep_estimators.split(",") if e.strip()),
    )
    result = diagnose(config, options, from_dir=args.from_dir, progress=not args.no_progress,
                      config_name=args.config or "defaults")
    paths = write_all(result, args.out)
    for r in result["ranking"]:
        secs = r["seconds_to_target"]
        shown = f"{secs:.3g} s" if secs is not None and math.isfinite(secs) else "never"
        print(f"lopt diagnose: {r['estimator']:>8}: bias cosine {r['cosine']:.2f}, "
              f"seconds to cosine {options.target_cosine:g}: {shown}")
    print(f"lopt diagnose: wrote {', '.join(str(p) for p in paths)}")
    return 0
