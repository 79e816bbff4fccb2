"""How fast the engine meta-trains, and how close it gets to plain training.

:func:`measure_throughput` times outer steps of the real jitted training step
(both antithetic branches counted as inner steps) and, in the same process,
plain ``optax.adam`` training of the same vmapped tasks (same task groups,
same number of task instances, same scan length per call). Their ratio, the
*engine efficiency*, is robust to a shared or throttled CPU because both
numbers are taken under the same conditions; absolute steps/s are not.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import optax

from lopt.inner_step import inner_step, optax_update
from lopt.metatrain.config import TrainConfig
from lopt.metatrain.trainer import Engine


def _adam_runner(engine: Engine):
    """A jitted ``(carry, key) -> carry`` training every task instance K steps with Adam."""
    u = engine.unroller
    tx = optax.adam(1e-3)
    update = optax_update(tx)
    width = [g.num_tasks * u.num_branches for g in u.groups]

    def init(key):
        carry = []
        for gi, (g, n) in enumerate(zip(u.groups, width)):
            keys = jax.random.split(jax.random.fold_in(key, gi), n)
            params = jax.vmap(lambda k: g.task.init(k, g.task.default_hparams()))(keys)
            carry.append((params, jax.vmap(tx.init)(params)))
        return tuple(carry)

    def run(carry, key, data):
        def body(carry, t):
            out = []
            for gi, (g, n) in enumerate(zip(u.groups, width)):
                task, hp = g.task, g.task.default_hparams()
                keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, t), gi), n)

                def one(params, opt_state, k, task=task, hp=hp, d=data[gi]):
                    return inner_step(task, d, update, params, opt_state, k, hp)

                params, opt_state, _ = jax.vmap(one)(*carry[gi], keys)
                out.append((params, opt_state))
            return tuple(out), None

        carry, _ = jax.lax.scan(body, carry, jax.numpy.arange(u.truncation_length))
        return carry

    return jax.jit(init), jax.jit(run, donate_argnums=0)


def _time(fn, num_calls: int) -> float:
    t0 = time.perf_counter()
    fn(num_calls)
    return time.perf_counter() - t0


def measure_throughput(config: TrainConfig, num_outer_steps: int = 50, repeats: int = 2) -> dict[str, Any]:
    """Inner steps/s while meta-training vs plain Adam on the same vmapped tasks.

    Each side is compiled and warmed up first, then timed ``repeats`` times over
    ``num_outer_steps`` calls; the best repeat is reported (least disturbed by
    other processes).
    """
    engine = Engine(config)
    per_call = engine.inner_steps_per_outer
    holder = {"state": engine.init_state(), "step": 0}

    def meta(n):
        state, step = holder["state"], holder["step"]
        for _ in range(n):
            state, metrics = engine.step_fn(state, engine.step_key(step), engine.data)
            step += 1
        jax.block_until_ready(state)
        holder["state"], holder["step"] = state, step

    init, run = _adam_runner(engine)
    adam_holder = {"carry": init(jax.random.PRNGKey(config.seed)), "i": 0}

    def adam(n):
        carry = adam_holder["carry"]
        for _ in range(n):
            carry = run(carry, jax.random.PRNGKey(adam_holder["i"]), engine.data)
            adam_holder["i"] += 1
        jax.block_until_ready(carry)
        adam_holder["carry"] = carry

    t0 = time.perf_counter()
    meta(1)
    compile_s = time.perf_counter() - t0
    adam(1)
    meta_s = min(_time(meta, num_outer_steps) for _ in range(repeats))
    adam_s = min(_time(adam, num_outer_steps) for _ in range(repeats))
    meta_sps = num_outer_steps * per_call / meta_s
    adam_sps = num_outer_steps * per_call / adam_s
    return {
        "meta_inner_steps_per_s": meta_sps,
        "adam_inner_steps_per_s": adam_sps,
        "efficiency": meta_sps / adam_sps,
        "outer_steps_per_s": num_outer_steps / meta_s,
        "inner_steps_per_outer_step": per_call,
        "first_step_s": compile_s,
        "num_outer_steps": num_outer_steps,
    }


def main() -> None:  # pragma: no cover - manual benchmark entry point
    import argparse
    import json

    from lopt.metatrain.config import load_config

    p = argparse.ArgumentParser(description="meta-training throughput vs plain Adam")
    p.add_argument("--config", default="reference")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    print(json.dumps(measure_throughput(load_config(a.config, a.overrides), a.steps), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
