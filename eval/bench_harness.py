"""Does the learned rule compose with orthogonalized (Muon) updates on hidden weights?

Celo2 reports that its learned rule works when hidden weight matrices are
instead updated by an orthogonalizing optimizer. This measures the same
question for ours on a small pre-LN transformer LM (``transformer_lm_small``,
2 blocks, d_model 64, 118,656 parameters), ``steps`` steps per run, each run
one scanned ``jit``, several seeds:

* ``adam``: ``optax.adam(1e-3)`` everywhere (reference point, not tuned);
* ``learned``: the shipped ``default`` everywhere;
* ``muon+learned``: ``optax.contrib.muon`` on the hidden matrices of the
  blocks (attention and MLP weights), the learned rule on embeddings, head,
  biases and norms (``optax.partition``);
* ``muon+adam``: the same split with Adam instead of the learned rule.

Reported: final training loss (mean of the last 10% of steps) and the loss on
the whole validation split. Run ``python -m lopt.eval.bench_harness``; the
numbers are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

MUON_LR = 0.02


def hidden_labels(params):
    """"hidden" for rank-2 weights inside transformer blocks, "other" for the rest."""
    def label(path, x):
        in_block = any(getattr(k, "key", "").startswith("block_") for k in path)
        return "hidden" if in_block and x.ndim == 2 else "other"

    return jax.tree_util.tree_map_with_path(label, params)


def optimizers(steps: int) -> dict[str, optax.GradientTransformation]:
    import lopt

    learned = lambda: lopt.pretrained("default").as_optax(steps)  # noqa: E731
    muon = lambda: optax.contrib.muon(MUON_LR)  # noqa: E731
    return {
        "adam": optax.adam(1e-3),
        "learned": learned(),
        "muon+learned": optax.partition({"hidden": muon(), "other": learned()}, hidden_labels),
        "muon+adam": optax.partition({"hidden": muon(), "other": optax.adam(1e-3)}, hidden_labels),
    }


def training_fn(task, data, tx, steps: int):
    """jit(key -> (training losses, validation loss)): one compile per optimizer, seeds are traced keys."""
    from lopt.inner_step import inner_step, optax_update

    hp = task.default_hparams()
    update = optax_update(tx)

    @jax.jit
    def run(key):
        k_init, k_batch = jax.random.split(key)
        params = task.init(k_init, hp)

        def step(carry, t):
            p, s, loss = inner_step(task, data, update, *carry, jax.random.fold_in(k_batch, t), hp)
            return (p, s), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
        return losses, task.valid_loss_full(params, data, hp)[0]

    return run


def compare(task_name: str = "transformer_lm_small", steps: int = 300, seeds: int = 2) -> dict:
    from lopt.tasks.registry import get_task

    task = get_task(task_name)
    data = task.load_data()
    out = {"task": task_name, "num_params": task.num_params(), "steps": steps, "seeds": seeds, "results": {}}
    for name, tx in optimizers(steps).items():
        t0 = time.perf_counter()
        run = training_fn(task, data, tx, steps)
        tail = max(1, steps // 10)
        runs = [run(jax.random.PRNGKey(s)) for s in range(seeds)]
        train = np.asarray([float(jnp.mean(losses[-tail:])) for losses, _ in runs])
        valid = np.asarray([float(v) for _, v in runs])
        out["results"][name] = {"train_loss": float(train.mean()), "valid_loss": float(valid.mean()),
                                "valid_loss_per_seed": valid.tolist(), "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="transformer_lm_small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    result = compare(args.task, args.steps, args.seeds)
    print(json.dumps(result, indent=1))
    print("\n| optimizer | train loss (last 10%) | valid loss | valid per seed |\n|---|---|---|---|")
    for name, r in result["results"].items():
        seeds = ", ".join(f"{v:.3f}" for v in r["valid_loss_per_seed"])
        print(f"| {name} | {r['train_loss']:.3f} | {r['valid_loss']:.3f} | {seeds} |")


if __name__ == "__main__":
    main()
