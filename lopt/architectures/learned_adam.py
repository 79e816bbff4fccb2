"""``learned_adam``: Adam whose hyperparameters are the meta-parameters.

The simple, strong baseline every learned optimizer must beat. Meta-parameters
(all unconstrained reals, so ES noise and gradients can move them freely):

* ``log_lr`` -- log learning rate (init ``log(1e-3)``),
* ``beta1_logit``, ``beta2_logit`` -- the decays through a sigmoid (init 0.9, 0.999),
* ``log_eps`` -- log epsilon (init ``log(1e-8)``),
* ``warmup_logit`` -- linear warm-up over ``sigmoid(warmup_logit)`` of the planned
  run (init -10: 4.5e-5 of the run, i.e. no warm-up for runs up to 22,000 steps),
* ``decay`` -- the learning rate is multiplied by ``exp(k1 * f + k2 * f**2)``
  where ``f`` is the fraction of the planned run done (init ``k = 0``: constant).

So a fresh ``learned_adam`` is ``optax.adam(1e-3)`` (bias-corrected, epsilon
outside the square root), step for step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt import features as ft
from lopt.base import LearnedOptimizer, OptState


@dataclasses.dataclass(frozen=True)
class LearnedAdam(LearnedOptimizer):
    """Adam with meta-learned learning rate, betas, epsilon and schedule."""

    arch: ClassVar[str] = "learned_adam"
    moment_keys: ClassVar[tuple[str, ...]] = ("m", "v")  # moving averages of g and g^2 (base: the guard)

    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_logit: float = -10.0

    def init_meta_params(self, key: jax.Array) -> dict[str, Any]:
        del key  # deterministic: the initial point is plain Adam
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        return {
            "log_lr": f32(math.log(self.learning_rate)),
            "beta1_logit": f32(ft.logit(self.beta1)),
            "beta2_logit": f32(ft.logit(self.beta2)),
            "log_eps": f32(math.log(self.eps)),
            "warmup_logit": f32(self.warmup_logit),
            "decay": jnp.zeros((2,), jnp.float32),
        }

    def init_inner(self, meta_params: Any, params: Any) -> dict[str, Any]:
        del meta_params
        zeros = ft.zeros_like_param  # shaped and sharded like the parameter
        return {"m": jax.tree.map(zeros, params), "v": jax.tree.map(zeros, params)}

    def learning_rate_at(self, meta_params: Any, step: jax.Array, num_steps: jax.Array) -> jax.Array:
        """The scheduled learning rate of the ``step + 1``-th update."""
        n = jnp.maximum(num_steps.astype(jnp.float32), 1.0)
        t = step.astype(jnp.float32)
        warmup = jnp.minimum(1.0, ((t + 1.0) / n) / jax.nn.sigmoid(meta_params["warmup_logit"]))
        f = t / n
        k1, k2 = meta_params["decay"][0], meta_params["decay"][1]
        return jnp.exp(meta_params["log_lr"] + k1 * f + k2 * f * f) * warmup

    def commit_inner(self, meta_params, state: OptState, grads, new_inner, ok):
        """Both moments recomputed with the skip folded in: one pass each (see the base class)."""
        del new_inner
        b1 = jax.nn.sigmoid(meta_params["beta1_logit"])
        b2 = jax.nn.sigmoid(meta_params["beta2_logit"])
        return {
            "m": ft.guarded_ema_tree(state.inner["m"], grads, b1, ok),
            "v": ft.guarded_ema_tree(state.inner["v"], jax.tree.map(jnp.square, grads), b2, ok),
        }

    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        del params, loss
        b1 = jax.nn.sigmoid(meta_params["beta1_logit"])
        b2 = jax.nn.sigmoid(meta_params["beta2_logit"])
        eps = jnp.exp(meta_params["log_eps"])
        c1 = ft.bias_correction(b1, state.step)
        c2 = ft.bias_correction(b2, state.step)
        lr = self.learning_rate_at(meta_params, state.step, state.num_steps)

        def leaf(g, m, v):
            m = ft.ema(m, g, b1)
            v = ft.ema(v, jnp.square(g), b2)
            return -lr * (m * c1) / (jnp.sqrt(v * c2) + eps), m, v

        updates, m, v = ft.map_unzip(leaf, 3, grads, state.inner["m"], state.inner["v"])
        return updates, {"m": m, "v": v}
