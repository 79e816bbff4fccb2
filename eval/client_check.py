"""The four client workloads that opened issue 14, rerun with today's, the previous and the original default.

Why: issue 14 began with client models written outside the project and
trained through plain optax, on which the then-shipped ``default`` (now
``default_v1``) lost: a small character transformer, a residual MLP with
LayerNorm that over-fitted, a 1-D CNN, and a 10,000-step GELU MLP that
plateaued. The reporting suites hold tasks of those kinds, but built from the
project's own task code and at shorter horizons. This module writes the four
models again the way a user would (``flax.linen`` modules, an ``optax`` loop,
the loss passed as ``value=``), at the issue's horizons, and measures the shipped
``default``, ``default_v7`` and ``default_v1`` beside the baselines the issue named. Nothing here is used to
choose what ships: it is a check on workloads the recipes never saw.

Per workload and optimizer: final training loss (on a fixed training subset at
the end) and best validation loss (the whole validation split, 20 times along
the run, the same steps for everyone), mean over the reporting seeds. Adam and
AdamW-cosine are tuned on seed 0 over a learning-rate grid by best validation
loss, as in ``lopt eval``.

``python -m lopt.eval.client_check [--workloads a,b] [--seeds 3] [--quick] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.eval import baselines
from lopt.eval import client_models as cm

LR_GRID = tuple(float(x) for x in np.logspace(-4, -1, 7))
# The transformer costs ~1 minute a run on 2 cores: its grid keeps the four rates that bracket where
# character transformers of this size train (the suites' tuned rates for them are 1e-3 to 3e-3).
LR_GRID_TRANSFORMER = tuple(float(x) for x in np.logspace(-3.5, -2, 4))
NUM_EVALS = 20
SHIPPED = ("default", "default_v7", "default_v1")


class Workload(NamedTuple):
    name: str
    what: str
    steps: int
    batch: int
    make: Callable[[], tuple[Any, dict[str, np.ndarray]]]  # () -> (flax module, {"x", "y", "vx", "vy"})
    lr_grid: tuple[float, ...] = LR_GRID


WORKLOADS = {
    w.name: w
    for w in (
        Workload("char_transformer", "2 pre-LN blocks, width 64, context 64, characters", 600, 16, cm.char_transformer,
                 LR_GRID_TRANSFORMER),
        Workload("resmlp_layernorm", "4 residual blocks with LayerNorm, width 128, 8x8 digits", 1500, 64, cm.resmlp),
        Workload("cnn1d", "1-D CNN over the 8 rows of 8x8 digits, 32-64 channels", 1000, 64, cm.cnn1d),
        Workload("gelu_mlp_10k", "2 hidden GELU layers of 128, 8x8 digits, 10,000 steps", 10000, 128, cm.gelu_mlp),
    )
}


def _optimizer(name, lr: jax.Array, steps: int) -> optax.GradientTransformationExtraArgs:
    """A baseline or shipped default by name, or any ``lopt.TrainedOptimizer`` (e.g. with another weight decay)."""
    import lopt

    if isinstance(name, lopt.TrainedOptimizer):
        return name.as_optax(steps)
    if name in SHIPPED:
        return lopt.pretrained(name).as_optax(steps)
    if name in ("adam_default", "adam_tuned"):
        tx = optax.adam(lr)
    elif name == "adamw_cosine":
        tx = baselines.adamw_cosine(lr, steps)  # the same baseline as `lopt eval`'s
    elif name == "prodigy":
        tx, _ = baselines.tuning_free("prodigy")
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return optax.with_extra_args_support(tx)


def training_run(workload: Workload, optimizer, steps: int):
    """jit((key, lr) -> (final training loss, validation losses at the 20 evaluation steps)).

    ``optimizer``: a name (see :func:`check`) or a ``lopt.TrainedOptimizer``; ``lr`` is used by the tuned baselines.
    """
    model, data = workload.make()
    x, y, vx, vy = (jnp.asarray(data[k]) for k in ("x", "y", "vx", "vy"))
    probe = min(len(x), 2048)  # fixed training subset for the final training loss

    def loss_fn(params, xb, yb):
        logits = model.apply({"params": params}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def run(key, lr):
        tx = _optimizer(optimizer, lr, steps)
        k_init, k_data = jax.random.split(key)
        params = model.init(k_init, x[:1])["params"]
        state = tx.init(params)

        def step(carry, t):
            params, state = carry
            idx = jax.random.randint(jax.random.fold_in(k_data, t), (workload.batch,), 0, len(x))
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, state = tx.update(grads, state, params, value=loss)
            return (optax.apply_updates(params, updates), state), None

        def chunk(carry, c):
            carry, _ = jax.lax.scan(step, carry, c * (steps // NUM_EVALS) + jnp.arange(steps // NUM_EVALS))
            return carry, loss_fn(carry[0], vx, vy)

        (params, _), valid = jax.lax.scan(chunk, (params, state), jnp.arange(NUM_EVALS))
        return loss_fn(params, x[:probe], y[:probe]), valid

    return jax.jit(run)


def check(workloads: list[str], seeds: int = 3, quick: bool = False, out: Path | None = None,
          say=print) -> dict[str, Any]:
    """Every optimizer on every workload: tuning on seed 0, then seeds 1..``seeds``.

    With ``out``, each workload's result is written to ``out/client_check_<name>.json`` as soon as it is
    done, so several processes (one per core) can share a directory and a cut-short run keeps what finished.
    """
    result: dict[str, Any] = {}
    for name in workloads:
        w = WORKLOADS[name]
        steps = max(NUM_EVALS, w.steps // 50) if quick else w.steps
        grid = w.lr_grid[::3] if quick else w.lr_grid
        res: dict[str, Any] = {"what": w.what, "steps": steps, "batch": w.batch, "seeds": list(range(1, seeds + 1)),
                               "lr_grid": list(grid), "optimizers": {}}
        t0 = time.perf_counter()
        lrs = dict.fromkeys((*SHIPPED, "adam_default", "adam_tuned", "adamw_cosine", "prodigy"), 1e-3)
        fns = {opt: training_run(w, opt, steps) for opt in lrs}  # one compile each: tuning and reporting share it
        for tuned in ("adam_tuned", "adamw_cosine"):
            fn = fns[tuned]
            scores = [float(jnp.min(jnp.nan_to_num(fn(jax.random.PRNGKey(0), lr)[1], nan=jnp.inf))) for lr in grid]
            lrs[tuned] = grid[int(np.argmin(scores))]
        for opt, lr in lrs.items():
            runs = [fns[opt](jax.random.PRNGKey(s), lr) for s in res["seeds"]]
            train = [float(r[0]) for r in runs]
            valid = [float(jnp.min(r[1])) for r in runs]
            res["optimizers"][opt] = {"lr": lr if opt in ("adam_tuned", "adamw_cosine") else None,
                                      "final_train": train, "best_valid": valid,
                                      "diverged": int(sum(not np.isfinite(v) for v in train + valid))}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        say(f"[client_check] {name}: {res['wall_s']} s")
        result[name] = res
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"client_check_{name}.json").write_text(json.dumps(res, indent=2))
    return result


def collect(out: Path) -> dict[str, Any]:
    """Every workload result in ``out``, in :data:`WORKLOADS` order."""
    found = {p.stem.removeprefix("client_check_"): p for p in out.glob("client_check_*.json")}
    return {n: json.loads(found[n].read_text()) for n in WORKLOADS if n in found}


def render(result: dict[str, Any]) -> str:
    """Two tables (best valid, final train), seed means; each workload row names its seeds and steps."""
    opts = list(next(iter(result.values()))["optimizers"])
    lines = []
    for metric, title in (("best_valid", "Best validation loss"), ("final_train", "Final training loss")):
        lines += [f"{title} (mean over the reporting seeds):", "",
                  "| workload | steps | seeds | " + " | ".join(opts) + " |", "|---|---|---|" + "---|" * len(opts)]
        for name, res in result.items():
            cells = [f"{np.mean(res['optimizers'][o][metric]):.4g}" for o in opts]
            lines.append(f"| {name} | {res['steps']} | {len(res['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    tuned = "; ".join(f"{n}: adam_tuned {r['optimizers']['adam_tuned']['lr']:.2g}, "
                      f"adamw_cosine {r['optimizers']['adamw_cosine']['lr']:.2g}" for n, r in result.items())
    return "\n".join(lines + [f"Tuned learning rates (seed 0): {tuned}."])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    p.add_argument("--seeds", type=int, default=3, help="reporting seeds (default 3; seed 0 tunes)")
    p.add_argument("--quick", action="store_true",
                   help="1/50 of the steps and every third learning rate of the grid: a smoke check")
    p.add_argument("--out", default="runs/client_check", help="output directory (default runs/client_check)")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        p.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")
    out = Path(a.out)
    check(names, a.seeds, a.quick, out, say=lambda m: print(m, file=sys.stderr, flush=True))
    result = collect(out)  # with what other processes wrote there
    (out / "client_check.md").write_text(render(result) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
