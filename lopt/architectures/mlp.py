"""``mlp``: a per-parameter MLP (two hidden layers of 32) on normalized momenta.

Each parameter gets ``2 + len(decays)`` features: its gradient, its value and
its momenta at decays from 0.1 (almost the raw gradient) to 0.9999 (a very
long average), each divided by its root mean square over the tensor, so the
network sees scale-free inputs whatever the layer. The step gets time features
(fraction of the planned run done, tanh clocks) that enter the first layer as a
bias. The output is a direction ``d`` and a magnitude ``s``; the update is
``d * exp(s * exp_scale) * step_scale * exp(log_lr)``.

This is the wider, slower architecture (about 1,500 multiply-adds per
parameter): its network runs as a stacked ``(..., F) @ (F, 32)`` matmul rather
than the fused elementwise form used by ``small_fc``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt import features as ft
from lopt.base import LearnedOptimizer, OptState


@dataclasses.dataclass(frozen=True)
class MLPOpt(LearnedOptimizer):
    """Per-parameter MLP on per-tensor-normalized gradient, parameter and momenta."""

    arch: ClassVar[str] = "mlp"
    moment_keys: ClassVar[tuple[str, ...]] = ("m",)  # moving averages of g and g^2 (base: the guard)

    hidden: int = 32
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
    timescales: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    exp_scale: float = 1e-3
    step_scale: float = 1e-3

    def num_features(self) -> int:
        return 2 + len(self.decays)

    def init_meta_params(self, key: jax.Array) -> dict[str, Any]:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        h, f, k = self.hidden, self.num_features(), 1 + len(self.timescales)
        return {
            "layer1": {"w": ft.glorot(k1, f, h), "w_time": ft.glorot(k2, k, h), "b": jnp.zeros((h,), jnp.float32)},
            "layer2": {"w": ft.glorot(k3, h, h), "b": jnp.zeros((h,), jnp.float32)},
            "out": {"w": ft.glorot(k4, h, 2, scale=0.1), "b": jnp.zeros((2,), jnp.float32)},
            "log_lr": jnp.zeros((), jnp.float32),
        }

    def init_inner(self, meta_params: Any, params: Any) -> dict[str, Any]:
        """``m``: one pytree like ``params`` per decay (so state shards like the parameters)."""
        del meta_params
        return {"m": [jax.tree.map(ft.zeros_like_param, params) for _ in self.decays]}

    def commit_inner(self, meta_params, state: OptState, grads, new_inner, ok):
        """The momenta recomputed with the skip folded in: one pass each (see the base class)."""
        del meta_params, new_inner
        decays = jnp.asarray(self.decays, jnp.float32)
        return {"m": [ft.guarded_ema_tree(m, grads, decays[i], ok) for i, m in enumerate(state.inner["m"])]}

    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        del loss
        mp = meta_params
        decays = jnp.asarray(self.decays, jnp.float32)
        times = ft.time_features(state.step, state.num_steps, self.timescales)
        bias1 = mp["layer1"]["b"] + times @ mp["layer1"]["w_time"]
        lr = self.step_scale * jnp.exp(mp["log_lr"])
        k = len(self.decays)

        def leaf(g, p, *ms):
            ms = [ft.ema(m, g, decays[i]) for i, m in enumerate(ms)]
            raw = [g, p, *ms]
            x = jnp.stack([ft.tensor_normalize(f) for f in raw], axis=-1)
            h = jax.nn.relu(ft.dense_matmul(x, mp["layer1"]["w"], bias1))
            h = jax.nn.relu(ft.dense_matmul(h, mp["layer2"]["w"], mp["layer2"]["b"]))
            out = ft.dense_matmul(h, mp["out"]["w"], mp["out"]["b"])
            direction, magnitude = out[..., 0], out[..., 1]
            return direction * jnp.exp(magnitude * self.exp_scale) * lr, *ms

        updates, *ms = ft.map_unzip(leaf, 1 + k, grads, params, *state.inner["m"])
        return updates, {"m": list(ms)}
