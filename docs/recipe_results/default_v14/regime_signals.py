"""Which early statistic of a v13 run tells a task that wants a smaller step from one that wants a larger one?

For the 23 short tasks of the v14 rounds (`default_decision_v8`'s 18 and the small-data probe's 5), the
preference is log(best valid with the peak halved / v13's) from the round's reports: negative means the task
wants the smaller step. The statistics are read from one v13 run (seed 1) at the end of its warm-up (the first
10% of the run), which is when a rule would have to decide. Prints Spearman correlations and writes
regime_signals.json.

    python docs/recipe_results/default_v14/regime_signals.py   # about 2 minutes on one core
"""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.eval.evaluate import build_task
from lopt.eval.suite import load_suite

HERE = Path(__file__).parent


def best_valid(report, label):
    task = next(t for t in report["tasks"] if t["label"] == label)
    opts = task["optimizers"]
    return (opts["default"] if "default" in opts else next(iter(opts.values())))["best_valid_loss"]


def preferences():
    pairs = [("decision4_lr025.json", "decision4_v13.json"), ("probe_lr025.json", "probe_ref.json")]
    out = {}
    for small, base in pairs:
        a, b = json.loads((HERE / small).read_text()), json.loads((HERE / base).read_text())
        for t in b["tasks"]:
            out[t["label"]] = math.log(best_valid(a, t["label"]) / best_valid(b, t["label"]))
    return out


def early_stats(spec, opt):
    task = build_task(spec)
    data = task.load_data()
    tx = opt.as_optax(spec.steps)
    key = jax.random.PRNGKey(1)
    params = task.init(key)
    p0 = jnp.sqrt(jnp.mean(jnp.concatenate([jnp.ravel(x) ** 2 for x in jax.tree.leaves(params)])))
    state = tx.init(params)

    @jax.jit
    def step(params, state, key):
        batch = task.sample_batch(data, key, "train")
        loss, g = jax.value_and_grad(task.loss)(params, batch)
        u, state = tx.update(g, state, params, value=loss)
        gn = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
        return optax.apply_updates(params, u), state, loss, gn

    warm = max(int(round(0.1 * spec.steps)), 1)
    losses, gnorms = [], []
    for _ in range(warm):
        key, k = jax.random.split(key)
        params, state, loss, gn = step(params, state, k)
        losses.append(float(loss))
        gnorms.append(float(gn))
    d = float(state.inner["d"])
    rms_a = np.mean([float(s[0]) for s in jax.tree.leaves(state.inner["stats"])])
    head, tail = np.mean(losses[: max(warm // 5, 1)]), np.mean(losses[-max(warm // 5, 1):])
    return {
        "log_D": math.log(d),
        "log_D_over_rms_p0": math.log(d / float(p0)),
        "log_loss_drop": math.log(tail / head),
        "loss_jitter": float(np.std(np.diff(losses[-max(warm // 2, 2):])) / (abs(tail) + 1e-12)),
        "log_grad_norm_ratio": math.log(np.mean(gnorms[-max(warm // 5, 1):]) / np.mean(gnorms[: max(warm // 5, 1)])),
        "mean_rms_a": float(rms_a),
        "log_num_params": math.log(task.num_params()),
        "log_steps": math.log(spec.steps),
    }


def spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main():
    prefs = preferences()
    opt = lopt.pretrained("default_v13")
    specs = list(load_suite("default_decision_v8").tasks) + list(load_suite(str(HERE / "small_data_probe.yaml")).tasks)
    rows = {}
    for spec in specs:
        label = spec.label or spec.task
        rows[label] = {"preference": prefs[label], **early_stats(spec, opt)}
        print(label, {k: round(v, 3) for k, v in rows[label].items()}, flush=True)
    y = np.array([r["preference"] for r in rows.values()])
    corr = {k: spearman(np.array([r[k] for r in rows.values()]), y) for k in next(iter(rows.values())) if k != "preference"}
    print("Spearman correlation with the preference (negative preference: wants the smaller step):")
    for k, v in sorted(corr.items(), key=lambda kv: -abs(kv[1])):
        print(f"  {k:24s} {v:+.2f}")
    (HERE / "regime_signals.json").write_text(json.dumps({"tasks": rows, "spearman": corr}, indent=1))


if __name__ == "__main__":
    main()
