"""``hyper``: a per-tensor LSTM that conditions a bank of tiny per-parameter MLPs.

Why this shape (the VeLO idea, written from scratch here): what a good step
looks like depends on context that no single parameter can see -- how far
training has gone, whether the loss is still falling, whether a tensor's
gradients agree in sign. That context is cheap to compute per *tensor*, so a
small recurrent network runs once per tensor per step and emits two things:

* a step-size multiplier for the tensor (bounded: ``exp(+-max_tensor_log_mult)``);
* softmax mixing weights over a bank of ``num_mlps`` per-parameter MLPs.

The mixture is taken in *weight space*: the tensor's MLP weights are the
mixture of the bank's weights, so exactly one MLP (``num_features -> mlp_hidden
-> 2``) is evaluated per parameter whatever the bank size. It is written as
unrolled multiply-adds over feature arrays shaped like the parameter (no
``(params x features) @ (features x hidden)`` matmul), which XLA fuses into one
elementwise loop per tensor; per-tensor work is a few reductions and one
``(num_tensors, D) @ (D, 4 * lstm_hidden)`` LSTM step for all tensors at once.

The MLP's two outputs are a direction ``d`` and a log-magnitude ``r``; the
update of a parameter in tensor ``P`` is::

    step_mult * exp(tensor_log_mult) * d * exp(clip(exp_mult * r, -10, 3)) * scale(P)
    scale(P) = max(rms(P), param_rms_floor)   if scale_by_param_rms else 1

so with ``scale_by_param_rms`` (the default, "standard mode") updates are
relative to the tensor's size and the optimizer is scale-free; the floor keeps
zero-initialized tensors (biases, a muP readout) moving. In muP mode the
per-layer muP factors already encode how updates must shrink with width, and
an RMS factor (which itself shrinks like ``1/sqrt(fan_in)``) would double-count
it, so muP configs set ``scale_by_param_rms: false`` (see ``lopt/mup.py``).

Fresh meta-parameters make small, safe, descent steps: every MLP in the bank
starts as ``d = -m_hat / sqrt(v_hat)`` for the fastest momentum (Adam without
epsilon) plus small random weights, the LSTM head starts at zero (multiplier
1, uniform mixing), so the first update moves each tensor by about
``step_mult`` (1 %) of its RMS against the gradient sign. (With a zero head the
LSTM weights get no first-order meta-gradient until the head has moved: one
meta-step for gradient estimators, at once for ES-style perturbations.)

Per-parameter features (``num_param_features = 3 + 2 * len(momentum_decays)``),
each raw accumulator normalized by its own per-tensor RMS: clipped gradient,
parameter, each momentum, each bias-corrected ``m_hat / sqrt(v_hat)``, and
``sqrt(v_hat)``. Gradients are clipped to ``+-grad_clip`` before anything so a
huge gradient cannot overflow the second moment.

Per-tensor LSTM inputs (``num_tensor_features = 2 * len(momentum_decays) +
len(loss_ema_decays) + 9``): mean and log1p-variance of each
``m_hat / sqrt(v_hat)``; log RMS of the gradient and the spread of
``sqrt(v_hat)`` (``1 - mean(sqrt v)^2 / mean(v)``); log RMS of the parameter;
the fraction of training done; each loss EMA placed between that EMA's running
min and max (mapped to [-1, 1]); a one-hot of the tensor rank (0, 1, 2, 3, 4+).

Inner state (``OptState.inner``), all float32; ``M = len(momentum_decays)``,
``L = len(loss_ema_decays)``, ``H = lstm_hidden``:

* ``"m"``: a list of ``M`` pytrees like params, leaves shaped like the
  parameter -- momenta (so the state carries the parameters' sharding);
* ``"v"``: pytree like params, leaf shape ``param.shape`` -- second moment;
* ``"lstm_h"``, ``"lstm_c"``: pytree like params, leaf shape ``(H,)`` -- the
  per-tensor LSTM hidden and cell state;
* ``"loss_ema"``, ``"loss_min"``, ``"loss_max"``: shape ``(L,)`` -- loss EMAs
  and each EMA's running min and max (all set to the first loss at step 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lopt import features as ft
from lopt.base import LearnedOptimizer, MetaParams, OptimizerError, OptState, Params, tree_max_abs

_NUM_RANKS = 5  # one-hot classes for tensor rank: 0, 1, 2, 3, 4 or more
_TINY = 1e-30
_EPS_V = 1e-16


def _mean(x: jax.Array, axes: tuple[int, ...] | None = None) -> jax.Array:
    """Mean that is 0 (not NaN) over empty tensors."""
    axes = tuple(range(x.ndim)) if axes is None else axes
    n = 1
    for a in axes:
        n *= x.shape[a]
    return jnp.sum(x, axis=axes) / max(n, 1)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0``, with derivative 0 instead of infinity at ``x == 0``.

    A zero-initialized bias has ``mean(p * p) == 0``; backprop through a plain
    square root there multiplies 0 by infinity, and one NaN poisons the whole
    meta-gradient. The forward value is unchanged.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _normalized(x: jax.Array, mean_sq: jax.Array) -> jax.Array:
    """``x`` over its RMS; 0 where the RMS is 0, with a finite derivative there (see ``_safe_sqrt``)."""
    positive = mean_sq > 0
    return jnp.where(positive, x * jax.lax.rsqrt(jnp.where(positive, mean_sq, 1.0) + _TINY), 0.0)


def _rank_one_hot(ndim: int) -> jax.Array:
    return jax.nn.one_hot(min(ndim, _NUM_RANKS - 1), _NUM_RANKS, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Hyper(LearnedOptimizer):
    """VeLO-style hypernetwork optimizer (see the module docstring).

    Attributes:
      lstm_hidden: width of the per-tensor LSTM.
      num_mlps: size of the bank of per-parameter MLPs the LSTM mixes.
      mlp_hidden: hidden width of each per-parameter MLP (>= 2).
      momentum_decays: decays of the gradient momenta (first is the "Adam" one).
      rms_decay: decay of the second-moment accumulator.
      loss_ema_decays: decays of the loss EMAs fed to the LSTM.
      grad_clip: gradients are clipped to +-grad_clip before any feature.
      step_mult: base step (relative to tensor RMS when scale_by_param_rms).
      exp_mult: multiplier of the MLP's log-magnitude output.
      scale_by_param_rms: scale updates by the tensor RMS (off in muP mode).
      param_rms_floor: lower bound of the RMS scale (zero-init tensors).
      max_tensor_log_mult: bound on |log| of the per-tensor step multiplier.
    """

    arch: ClassVar[str] = "hyper"
    moment_keys: ClassVar[tuple[str, ...]] = ("m", "v")  # moving averages of g and g^2 (base: the guard)

    lstm_hidden: int = 16
    num_mlps: int = 4
    mlp_hidden: int = 4
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    loss_ema_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    grad_clip: float = 1000.0
    step_mult: float = 0.01
    exp_mult: float = 0.01
    scale_by_param_rms: bool = True
    param_rms_floor: float = 0.01
    max_tensor_log_mult: float = 4.0

    def __post_init__(self) -> None:
        # Files store tuples as JSON lists; keep the dataclass hashable (jit-static).
        for name in ("momentum_decays", "loss_ema_decays"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise OptimizerError(f"hyper: {name} must be a non-empty list of decays, got {value!r}")
            object.__setattr__(self, name, tuple(float(x) for x in value))
            if not all(0.0 <= d < 1.0 for d in getattr(self, name)):
                raise OptimizerError(f"hyper: {name} must lie in [0, 1), got {value!r}")
        for name, minimum in (("lstm_hidden", 1), ("num_mlps", 1), ("mlp_hidden", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise OptimizerError(f"hyper: {name} must be an integer >= {minimum}, got {value!r}")
        if not 0.0 <= self.rms_decay < 1.0:
            raise OptimizerError(f"hyper: rms_decay must lie in [0, 1), got {self.rms_decay!r}")
        for name in ("grad_clip", "step_mult", "param_rms_floor", "max_tensor_log_mult"):
            if not float(getattr(self, name)) > 0.0:
                raise OptimizerError(f"hyper: {name} must be > 0, got {getattr(self, name)!r}")

    # ------------------------------------------------------------ sizes
    @property
    def num_param_features(self) -> int:
        return 3 + 2 * len(self.momentum_decays)

    @property
    def num_tensor_features(self) -> int:
        return 2 * len(self.momentum_decays) + len(self.loss_ema_decays) + 4 + _NUM_RANKS

    # ------------------------------------------------------------ meta-params
    def init_meta_params(self, key: jax.Array) -> MetaParams:
        # One compiled program instead of a dozen eager ops (each its own compile).
        return _jitted_init_meta_params(self, key)

    def _init_meta_params(self, key: jax.Array) -> MetaParams:
        h, k, hm = self.lstm_hidden, self.num_mlps, self.mlp_hidden
        f, d = self.num_param_features, self.num_tensor_features
        k_wx, k_wh, k_w1, k_w2 = jax.random.split(key, 4)
        # LSTM gate order (i, f, g, o); forget bias 1 keeps state by default.
        lstm_b = np.zeros((4 * h,), np.float32)
        lstm_b[h : 2 * h] = 1.0
        # Bank: hidden units 0/1 compute relu(-a) and relu(a) of the fastest
        # m_hat/sqrt(v_hat) feature so that d = -a (Adam-like descent); the rest
        # is small noise, different per bank member so the mixture matters.
        adam = 2 + len(self.momentum_decays)
        noise1 = np.full((f, hm), 0.5 / np.sqrt(f), np.float32)
        noise1[:, :2] *= 0.1
        core1 = np.zeros((f, hm), np.float32)
        core1[adam, 0], core1[adam, 1] = -1.0, 1.0
        core2 = np.zeros((hm, 2), np.float32)
        core2[0, 0], core2[1, 0] = 1.0, -1.0
        w1 = jax.random.normal(k_w1, (k, f, hm), jnp.float32) * noise1 + core1
        w2 = float(0.1 / np.sqrt(hm)) * jax.random.normal(k_w2, (k, hm, 2), jnp.float32) + core2
        return {
            "lstm": {
                "wx": jax.random.normal(k_wx, (d, 4 * h), jnp.float32) / float(np.sqrt(d)),
                "wh": jax.random.normal(k_wh, (h, 4 * h), jnp.float32) / float(np.sqrt(h)),
                "b": jnp.asarray(lstm_b),
            },
            "head": {"w": jnp.zeros((h, 1 + k), jnp.float32), "b": jnp.zeros((1 + k,), jnp.float32)},
            "bank": {
                "w1": w1,
                "b1": jnp.zeros((k, hm), jnp.float32),
                "w2": w2,
                "b2": jnp.zeros((k, 2), jnp.float32),
            },
        }

    def moments_finite(self, grads: Params) -> jax.Array:
        """Its moments average the *clipped* gradient: any finite or infinite gradient is safe, NaN is not."""
        return ~jnp.isnan(tree_max_abs(grads))

    # ------------------------------------------------------------ state
    def init_inner(self, meta_params: MetaParams, params: Params) -> Any:
        del meta_params
        n_m, n_l, h = len(self.momentum_decays), len(self.loss_ema_decays), self.lstm_hidden
        return {
            "m": [jax.tree.map(ft.zeros_like_param, params) for _ in range(n_m)],
            "v": jax.tree.map(ft.zeros_like_param, params),
            "lstm_h": jax.tree.map(lambda _: jnp.zeros((h,), jnp.float32), params),
            "lstm_c": jax.tree.map(lambda _: jnp.zeros((h,), jnp.float32), params),
            "loss_ema": jnp.zeros((n_l,), jnp.float32),
            "loss_min": jnp.zeros((n_l,), jnp.float32),
            "loss_max": jnp.zeros((n_l,), jnp.float32),
        }

    # ------------------------------------------------------------ update
    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        inner = state.inner
        t = state.step.astype(jnp.float32)
        frac = jnp.clip(t / jnp.maximum(state.num_steps, 1).astype(jnp.float32), 0.0, 1.0)
        loss_stats, loss_feats = self._loss_features(inner, loss, state.step == 0)
        global_feats = jnp.concatenate([frac[None], loss_feats])

        treedef = jax.tree.structure(params)
        leaves_p = treedef.flatten_up_to(params)
        if not leaves_p:
            return params, {**inner, **loss_stats}
        leaves_g = treedef.flatten_up_to(grads)
        leaves_m = [list(ms) for ms in zip(*(treedef.flatten_up_to(m) for m in inner["m"]))]
        leaves_v = treedef.flatten_up_to(inner["v"])
        lstm_h = jnp.stack(treedef.flatten_up_to(inner["lstm_h"]))
        lstm_c = jnp.stack(treedef.flatten_up_to(inner["lstm_c"]))

        # 1) accumulators and per-tensor statistics
        acc = [self._accumulate(g, p, m, v, t) for g, p, m, v in zip(leaves_g, leaves_p, leaves_m, leaves_v)]
        tensor_x = jnp.stack([jnp.concatenate([a["tensor_feats"], global_feats, a["rank"]]) for a in acc])

        # 2) one LSTM step for all tensors, then the per-tensor head
        lstm_h, lstm_c = self._lstm(meta_params["lstm"], tensor_x, lstm_h, lstm_c)
        head = lstm_h @ meta_params["head"]["w"] + meta_params["head"]["b"]
        m = self.max_tensor_log_mult
        log_mult = m * jnp.tanh(head[:, 0] / m)
        mix = jax.nn.softmax(head[:, 1:], axis=-1)
        bank = meta_params["bank"]
        w1 = jnp.einsum("tk,kfh->tfh", mix, bank["w1"])
        b1 = mix @ bank["b1"]
        w2 = jnp.einsum("tk,kho->tho", mix, bank["w2"])
        b2 = mix @ bank["b2"]

        # 3) per-parameter MLP (fused elementwise) and the scaled update
        updates = []
        for i, a in enumerate(acc):
            direction, log_mag = self._param_mlp(a["param_feats"], w1[i], b1[i], w2[i], b2[i])
            scale = jnp.maximum(a["p_rms"], self.param_rms_floor) if self.scale_by_param_rms else 1.0
            mult = self.step_mult * jnp.exp(log_mult[i]) * scale
            updates.append(mult * direction * jnp.exp(jnp.clip(self.exp_mult * log_mag, -10.0, 3.0)))

        new_inner = {
            "m": [treedef.unflatten([a["m"][i] for a in acc]) for i in range(len(self.momentum_decays))],
            "v": treedef.unflatten([a["v"] for a in acc]),
            "lstm_h": treedef.unflatten(list(lstm_h)),
            "lstm_c": treedef.unflatten(list(lstm_c)),
            **loss_stats,
        }
        return treedef.unflatten(updates), new_inner

    # ------------------------------------------------------------ pieces
    def _loss_features(self, inner, loss, first):
        decays = jnp.asarray(self.loss_ema_decays, jnp.float32)
        ema = jnp.where(first, loss, decays * inner["loss_ema"] + (1.0 - decays) * loss)
        lo = jnp.where(first, ema, jnp.minimum(inner["loss_min"], ema))
        hi = jnp.where(first, ema, jnp.maximum(inner["loss_max"], ema))
        span = hi - lo
        pos = jnp.where(span > 0, 2.0 * (ema - lo) / jnp.where(span > 0, span, 1.0) - 1.0, 0.0)
        return {"loss_ema": ema, "loss_min": lo, "loss_max": hi}, pos

    def _accumulate(self, g, p, ms, v, t):
        """New momenta (a list, one array shaped like ``p`` per decay), features and tensor statistics."""
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        corr = 1.0 - decays ** (t + 1.0)
        g = jnp.clip(g, -self.grad_clip, self.grad_clip)
        ms = [decays[i] * m + (1.0 - decays[i]) * g for i, m in enumerate(ms)]
        v = self.rms_decay * v + (1.0 - self.rms_decay) * g * g
        v_hat = v / (1.0 - self.rms_decay ** (t + 1.0))
        rs_v = jax.lax.rsqrt(v_hat + _EPS_V)
        adam = [(m / corr[i]) * rs_v for i, m in enumerate(ms)]
        sqrt_v = _safe_sqrt(v_hat)

        mean_adam = jnp.stack([_mean(a) for a in adam])
        var_adam = jnp.maximum(jnp.stack([_mean(a * a) for a in adam]) - mean_adam**2, 0.0)
        mean_v = _mean(v_hat)
        spread_v = jnp.clip(1.0 - _mean(sqrt_v) ** 2 / (mean_v + _TINY), 0.0, 1.0)
        p_ms = _mean(p * p)
        tensor_feats = jnp.concatenate(
            [
                mean_adam,
                jnp.log1p(var_adam),
                jnp.stack([
                    0.05 * jnp.log(mean_v + _EPS_V),  # 0.1 * log RMS of the gradient
                    spread_v,
                    0.1 * jnp.log(_safe_sqrt(p_ms) + 1e-8),
                ]),
            ]
        )
        param_feats = [_normalized(g, _mean(g * g)), _normalized(p, p_ms)]
        param_feats += [_normalized(m, _mean(m * m)) for m in ms]
        param_feats += adam
        param_feats.append(_normalized(sqrt_v, mean_v))
        return {
            "m": ms,
            "v": v,
            "p_rms": _safe_sqrt(p_ms),
            "tensor_feats": tensor_feats,
            "rank": _rank_one_hot(p.ndim),
            "param_feats": param_feats,
        }

    def _lstm(self, w, x, h, c):
        z = x @ w["wx"] + h @ w["wh"] + w["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c

    def _param_mlp(self, feats, w1, b1, w2, b2):
        """``num_features -> mlp_hidden -> 2`` MLP as unrolled elementwise multiply-adds."""
        hidden = []
        for j in range(self.mlp_hidden):
            acc = b1[j]
            for f, x in enumerate(feats):
                acc = acc + w1[f, j] * x
            hidden.append(jax.nn.relu(acc))
        direction = b2[0] + sum(w2[j, 0] * hj for j, hj in enumerate(hidden))
        log_mag = b2[1] + sum(w2[j, 1] * hj for j, hj in enumerate(hidden))
        return direction, log_mag


_jitted_init_meta_params = jax.jit(Hyper._init_meta_params, static_argnums=0)
