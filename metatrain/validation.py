"""Meta-validation: train held-out tasks from scratch with the current meta-parameters.

Truncated meta-losses say little about what matters (does the optimizer train
an unseen task for a whole run?), so the trainer periodically runs complete
inner trainings of the ``validation.tasks`` with the learned optimizer as an
optax transformation, and once, for reference, with Adam(1e-3). The jitted
function takes the meta-parameters as an argument, so it compiles once and
is reused at every validation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer
from lopt.mup import update_scales_for_task
from lopt.optax_export import as_optax
from lopt.metatrain.inner_loop import train_task
from lopt.tasks.base import Task


class MetaValidator:
    """Runs the held-out tasks; holds their data and compiled functions."""

    def __init__(
        self, arch: LearnedOptimizer, tasks: list[Task], num_steps: int, num_seeds: int, seed: int, mup: bool = False
    ):
        self.arch = arch
        self.mup = mup
        self.tasks = tasks
        self.num_steps = num_steps
        self.num_seeds = num_seeds
        self.key = jax.random.fold_in(jax.random.PRNGKey(seed), 7919)
        self.data = [t.load_data() for t in tasks]
        self._learned = [jax.jit(self._make(t, learned=True)) for t in tasks]
        self._adam = [jax.jit(self._make(t, learned=False)) for t in tasks]
        self._adam_cache: list[float] | None = None

    def _make(self, task: Task, learned: bool):
        every = max(1, self.num_steps // 4)

        def run(meta_params, data, key):
            if learned:  # in the muP mode the task's per-layer factors scale the updates, as in training
                scales = update_scales_for_task(task, enabled=self.mup)
                tx = as_optax(self.arch, meta_params, self.num_steps, scales)
            else:
                tx = optax.adam(1e-3)

            def one(k):
                out = train_task(task, data, tx, k, self.num_steps, eval_every=every, eval_batches=4)
                return out["valid_loss"][-1], jnp.mean(out["train_loss"][-max(1, self.num_steps // 10) :])

            valid, train = jax.vmap(one)(jax.random.split(key, self.num_seeds))
            return jnp.mean(valid), jnp.mean(train)

        return run

    def __call__(self, meta_params: Any) -> list[dict]:
        """One record per held-out task: final validation/train loss, learned vs Adam."""
        if self._adam_cache is None:
            self._adam_cache = [
                float(f(None, d, self.key)[0]) for f, d in zip(self._adam, self.data)
            ]
        records = []
        for task, fn, data, adam in zip(self.tasks, self._learned, self.data, self._adam_cache):
            valid, train = jax.device_get(fn(meta_params, data, self.key))
            records.append(
                {
                    "task": task.name,
                    "valid_loss": float(valid),
                    "train_loss": float(train),
                    "adam_valid_loss": adam,
                    "inner_steps": self.num_steps,
                }
            )
        return records
