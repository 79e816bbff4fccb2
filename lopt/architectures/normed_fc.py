"""``normed_fc``: an AdamW prior plus a small learned correction, normalized per tensor.

Why this shape (issue 14). ``small_fc`` learned its *step size* on digits MLPs
and carried it to transformers and residual nets, where it overshoots or
overfits; multiplying its updates by a fixed 0.1-0.3 fixed most of that. So
here the step size is not something the per-parameter network can set freely:

* The **direction** is Adam's, ``a = m_hat / (sqrt(v_hat) + eps)``, plus the
  output of a tiny per-parameter MLP on scale-free features (the gradient and
  three momenta divided by ``sqrt(v_hat)``). The MLP is *centered*: its output
  at all-zero features is subtracted, so a parameter whose gradients are all
  zero never moves (no drift, unlike an uncentered network).
* The **magnitude** of every tensor's update is set by normalization, as in
  Celo (arXiv 2501.12670): the direction ``d`` is divided by its own RMS over
  the tensor and multiplied by ``lr_t * rms(a) * exp(c)``. With the network at
  zero this is exactly Adam's update, ``lr_t * a``. ``c`` is a learned linear
  function of per-tensor and per-step features (time, loss change,
  ``log rms(a)``, ``log rms(p)``), squashed into ``[-4.6, +2.3]`` so a trained
  optimizer can take at most 10x and at least 1/100 of the prior's step. A
  weight of -1 on ``log rms(a)`` turns the rule into Celo's fully normalized
  update; 0 keeps Adam's own noise-adaptive magnitude.
* The **schedule** ``lr_t`` is a fixed prior that follows the planned horizon
  ``num_steps``: linear warm-up over ``warmup_fraction`` of the run, then
  cosine decay to ``final_lr_fraction``; the learned ``c`` bends it.
* **Step size from the run itself** (``step_size="distance"``): the schedule's
  peak moves from ``learning_rate`` toward a growing estimate ``D`` of the
  distance from the initialization to a solution (Prodigy's, :mod:`lopt.distance`),
  by ``distance_exponent`` in log space (1: the peak is ``D``). This is how one
  set of weights can take 1e-2-sized steps on a CNN and 5e-3-sized ones on a
  residual MLP without tuning; it costs two more accumulators.
* **Brake** (opt-in, ``brake_rate > 0``): a global factor ``exp(b) <= 1`` on
  ``lr_t``, where ``b`` integrates the cosine between this step's gradient and
  the previous step's direction. Gradients that turn against the direction
  just taken mean the step overshoots; it can only slow the prior, never
  speed it up, and costs three reductions per tensor. With
  ``brake_decay=False`` the weight decay keeps the unbraked rate, so
  braking an overshooting step does not also weaken the regularizer.
* **Decoupled weight decay** ``lr_t * exp(log_wd) * p`` with a learned rate,
  as in AdamW; ``decay_min_ndim=2`` spares biases and normalization gains, as
  transformer training usually does. With ``decay_horizon = H > 0`` a run
  planned for ``num_steps > H`` steps decays at ``(H / num_steps)**e`` of that rate:
  a decay learned on runs of at most ``H`` steps sets a forgetting timescale
  (``1 / (lr * wd)`` steps, arXiv 2405.13698) that is a fraction of those runs;
  held per step, it becomes an ever smaller fraction of a longer run and holds
  the training loss up (a plateau). At ``e = 1`` the decay's total over the run
  stays what it was on an ``H``-step run; ``e = 0.5`` goes half way in log space.
  Runs of at most ``H`` steps are unchanged. Likewise ``lr_horizon`` scales the
  gradient step (not the decay) of longer runs: the best peak rate falls as
  the planned run grows (arXiv 2409.19913).
* **Relative step** (opt-in, ``relative_step_exponent = k > 0``): each matrix's
  and kernel's step is multiplied by ``(rms(p) / relative_step_reference)**k``
  inside the learned multiplier's bound. Common initializations give a layer
  with more inputs a smaller RMS, and its output moves more per element of
  the update, so it wants smaller steps (muP's 1 / fan-in), read here from
  the tensor itself rather than from a shape convention. ``relative_step_rms``
  says whose RMS: the current one (a step that grows with the weights makes
  them grow faster) or the one at initialization, fixed for the run.

So a *fresh* ``normed_fc`` (output layer and step weights at zero) is AdamW
with warm-up + cosine at ``learning_rate`` (1e-3 by default), update for
update; meta-training starts from a rule that is already never much worse
than Adam and only has to improve it. Accumulators are per leaf and shaped
like each parameter (three momenta and one second moment: 4 floats per
parameter, Adam has 2).

Speed: the per-parameter network is written with
:func:`lopt.features.dense_elementwise`, so XLA fuses features, network and
update into a few loops per tensor (two reductions per tensor: ``rms(a)`` and
``rms(d)``). The non-finite guard reuses those reductions (see
:meth:`NormedFC.checked_update`) and the accumulators are written once, with
the skip folded in (:meth:`NormedFC.commit_inner`). On large single-device CPU
models the deployed update runs through hand-fused kernels instead
(:mod:`lopt.kernels.normed_fc_cpu`; on GPUs, on request, a Pallas kernel:
:mod:`lopt.kernels.normed_fc_pallas`), which share this class's scalar code
(:meth:`NormedFC.step_scalars`, :meth:`NormedFC.tensor_terms`, :meth:`NormedFC.leaf_scales`).
With ``tensor_stats="previous"`` the three per-tensor statistics come from the
previous step, which makes the update one pass over each tensor instead of
three (:mod:`lopt.architectures.normed_fc_scalars`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt import distance
from lopt import features as ft
from lopt.architectures.normed_fc_checks import check_hyperparameters
from lopt.architectures.normed_fc_scalars import (LOSS_DECAY, PARAM_RMS_FLOOR, TENSOR_STATS, TINY_RMS,  # noqa: F401
                                                   StepScalars, bounded, horizon_factor, initial_rms, initial_stats,
                                                   next_distance, next_stats, rms)
from lopt.base import LearnedOptimizer, OptState

@dataclasses.dataclass(frozen=True)
class NormedFC(LearnedOptimizer):
    """AdamW-cosine prior + centered per-parameter MLP, per-tensor normalized step."""

    arch: ClassVar[str] = "normed_fc"
    # Exempt from the base guard's exact check: m and v are moving averages of g and g^2 (checked through
    # the gradients' bound), moved sums updates that are checked, s is checked through its L1 norm.
    moment_keys: ClassVar[tuple[str, ...]] = ("m", "v", "moved", "s")

    hidden: int = 4
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)  # the first is Adam's beta1
    second_moment_decay: float = 0.999
    eps: float = 1e-8  # Adam's epsilon (outside the square root)
    learning_rate: float = 3e-3  # peak of the prior schedule
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.0
    weight_decay: float = 1e-4  # initial decoupled weight decay (learned in log space)
    decay_min_ndim: int = 0  # weight decay acts on leaves of at least this rank (2: matrices and kernels only)
    timescales: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    step_size: str = "fixed"  # "fixed": peak learning_rate; "distance": from Prodigy's D estimate (below)
    distance_exponent: float = 1.0  # "distance": peak learning_rate * (D / learning_rate)**exponent
    initial_distance: float = 1e-6  # D estimate's starting value (Prodigy's d_0)
    distance_decay: float = 0.9995  # decay of the D estimate's sums (Prodigy: sqrt of the second-moment decay)
    # Brake (0: off): the step is multiplied by exp(b), with b integrating brake_rate * cos(g_t, a_{t-1}) and
    # clipped to [log brake_floor, 0]. Gradients that turn against the previous direction mean the step overshoots.
    brake_rate: float = 0.0
    brake_floor: float = 0.1
    # Whether the brake also slows the decoupled weight decay (True) or the decay keeps the unbraked rate (False):
    # braking the regularizer along with the step cost the tasks that weight decay wins (model card).
    brake_decay: bool = True
    # Runs planned longer than this many steps scale the weight decay by (decay_horizon / num_steps)**exponent
    # (0: never; exponent 1 keeps the decay's total over the run, 0 keeps its per-step rate).
    decay_horizon: int = 0
    decay_horizon_exponent: float = 1.0
    # Runs planned longer than this many steps scale the gradient step (not the decay) by
    # (lr_horizon / num_steps)**lr_horizon_exponent (0: never).
    lr_horizon: int = 0
    lr_horizon_exponent: float = 0.5
    # Matrices and kernels (rank >= 2) scale their step by (rms(p) / relative_step_reference)**relative_step_exponent,
    # inside the learned multiplier's bound (0: off): a step relative to the tensor's scale, as Adafactor's.
    relative_step_exponent: float = 0.0
    relative_step_reference: float = 0.125
    # Whose RMS the relative step reads: the tensor's "current" one, or its "initial" one, fixed for the run (a
    # tensor initialized at zero has none and keeps the unscaled step).
    relative_step_rms: str = "current"
    # Whose per-tensor statistics (rms(a), rms(p), rms(d)) the update uses: this step's ("current": three
    # dependent passes over every tensor) or the previous applied step's ("previous": one pass). See
    # lopt.architectures.normed_fc_scalars.
    tensor_stats: str = "current"

    def __post_init__(self) -> None:
        check_hyperparameters(self)

    @property
    def adapts_distance(self) -> bool:
        return self.step_size == "distance"

    @property
    def brakes(self) -> bool:
        return self.brake_rate > 0.0

    @property
    def reads_initial_rms(self) -> bool:
        """Whether the state keeps each tensor's initial RMS (a relative step read from it)."""
        return self.relative_step_exponent > 0.0 and self.relative_step_rms == "initial"

    @property
    def lagged(self) -> bool:
        """Whether the update uses the previous step's tensor statistics (``tensor_stats="previous"``)."""
        return self.tensor_stats == "previous"

    # ---------------------------------------------------------------- sizes
    @property
    def num_features(self) -> int:
        return 1 + len(self.momentum_decays)  # gradient and momenta, each over sqrt(v_hat)

    @property
    def num_step_features(self) -> int:
        return 1 + len(self.timescales) + 1  # fraction done, clocks, loss change

    @property
    def num_tensor_features(self) -> int:
        return self.num_step_features + 2  # ... and log rms(a), log rms(p)

    # ---------------------------------------------------------------- meta-params
    def init_meta_params(self, key: jax.Array) -> dict[str, Any]:
        k1, k2, k3 = jax.random.split(key, 3)
        h = self.hidden
        return {
            "decays": {
                "momentum_logits": jnp.asarray([ft.logit(d) for d in self.momentum_decays], jnp.float32),
                "second_moment_logit": jnp.asarray(ft.logit(self.second_moment_decay), jnp.float32),
            },
            "layer1": {
                "w": ft.glorot(k1, self.num_features, h),
                "w_tensor": ft.glorot(k2, self.num_tensor_features, h),
                "b": jnp.zeros((h,), jnp.float32),
            },
            "layer2": {"w": ft.glorot(k3, h, h), "b": jnp.zeros((h,), jnp.float32)},
            # Zero output layer: a fresh optimizer is exactly the AdamW prior.
            "out": jnp.zeros((h,), jnp.float32),
            "step": {"w": jnp.zeros((self.num_tensor_features,), jnp.float32), "b": jnp.zeros((), jnp.float32)},
            "log_wd": jnp.asarray(math.log(self.weight_decay), jnp.float32),
        }

    def init_inner(self, meta_params: Any, params: Any) -> dict[str, Any]:
        del meta_params
        zeros = ft.zeros_like_param  # shaped and sharded like the parameter (issue 18)
        inner = {
            "m": tuple(jax.tree.map(zeros, params) for _ in self.momentum_decays),
            "v": jax.tree.map(zeros, params),
            "loss_mean": jnp.zeros((), jnp.float32),
        }
        if self.adapts_distance:
            inner.update(distance.init(params, self.initial_distance))
        if self.brakes:
            inner["brake"] = jnp.zeros((), jnp.float32)
        if self.lagged:
            inner["stats"] = jax.tree.map(initial_stats, params)
        if self.reads_initial_rms:
            inner["rms0"] = jax.tree.map(initial_rms, params)
        return inner

    # ---------------------------------------------------------------- schedule
    def prior_lr(self, step: jax.Array, num_steps: jax.Array) -> jax.Array:
        """Learning rate of the ``step + 1``-th update under the prior (warm-up, then cosine)."""
        n = jnp.maximum(num_steps.astype(jnp.float32), 1.0)
        t = step.astype(jnp.float32)
        warm = jnp.maximum(jnp.round(self.warmup_fraction * n), 1.0)
        warmup = jnp.minimum(1.0, (t + 1.0) / warm)
        frac = jnp.clip((t + 1.0 - warm) / (jnp.maximum(n - warm, 0.0) + 1.0), 0.0, 1.0)
        f = self.final_lr_fraction
        cosine = f + (1.0 - f) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return self.learning_rate * warmup * cosine

    def step_lr(self, state: OptState) -> jax.Array:
        """This step's learning rate: the prior's; with an adapted step size its peak moves toward D.

        ``learning_rate * (D / learning_rate)**exponent``: exponent 1 is D itself
        (Prodigy's step, ``learning_rate`` unused), 0 the fixed prior, and in
        between a geometric mean that shrinks a noisy estimate toward the prior.
        """
        lr = self.prior_lr(state.step, state.num_steps)
        if self.brakes:
            lr = lr * jnp.exp(state.inner["brake"])
        if not self.adapts_distance:
            return lr
        d = state.inner["d"]
        if self.distance_exponent == 1.0:
            return lr / self.learning_rate * d
        return lr * (d / self.learning_rate) ** self.distance_exponent

    def run_weight_decay(self, log_wd: jax.Array, num_steps: jax.Array) -> jax.Array:
        """The decoupled decay rate of a run planned for ``num_steps``: ``exp(log_wd)``, times
        ``(decay_horizon / num_steps)**decay_horizon_exponent`` when the run is longer than
        ``decay_horizon`` (exactly 1 otherwise)."""
        wd = jnp.exp(log_wd)
        if not self.decay_horizon:
            return wd
        return wd * horizon_factor(num_steps, self.decay_horizon, self.decay_horizon_exponent)

    def _distance_weight(self, d: jax.Array, lr: jax.Array) -> jax.Array:
        """The D estimate's weight for a step taken at learning rate ``lr`` (this step's :meth:`step_lr`)."""
        return distance.step_weight(d, lr, self.initial_distance)

    # ---------------------------------------------------------------- update
    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        ones = jax.tree.map(lambda _: jnp.ones((), jnp.float32), grads)
        updates, inner, _ = self._update(meta_params, state._replace(scales=ones), grads, params, loss)
        return updates, inner

    def checked_update(self, meta_params, state: OptState, grads, params, loss):
        """Scaled updates, new accumulators and "every update finite", without re-reading the updates.

        A leaf's update is ``-(scale * d) - lr_t * wd * p``: it is finite when
        the scalars ``scale``, ``rms(d)`` and ``rms(p)`` are (a non-finite
        element of ``d`` or ``p`` makes its RMS non-finite). Those reductions
        are computed anyway, so the check costs no pass over the parameters.
        It is conservative: a finite element above ~1e19, whose square
        overflows, also skips the step.
        """
        return self._update(meta_params, state, grads, params, loss)

    def commit_inner(self, meta_params, state: OptState, grads, new_inner, ok):
        """The moving averages recomputed with the skip folded in: one pass per accumulator (base class)."""
        beta_m = jax.nn.sigmoid(meta_params["decays"]["momentum_logits"])
        beta_v = jax.nn.sigmoid(meta_params["decays"]["second_moment_logit"])
        inner = state.inner
        ms = tuple(ft.guarded_ema_tree(m, grads, beta_m[i], ok) for i, m in enumerate(inner["m"]))
        v = ft.guarded_ema_tree(inner["v"], jax.tree.map(jnp.square, grads), beta_v, ok)
        kept = {"m": ms, "v": v, "loss_mean": jnp.where(ok, new_inner["loss_mean"], inner["loss_mean"])}
        if self.adapts_distance:
            weight = self._distance_weight(inner["d"], self.step_lr(state))
            kept.update(
                moved=jax.tree.map(lambda m, new: jnp.where(ok, new, m), inner["moved"], new_inner["moved"]),
                s=jax.tree.map(lambda s, g: distance.guarded_accumulate(s, g, self.distance_decay, weight, ok),
                               inner["s"], grads),
                d=jnp.where(ok, new_inner["d"], inner["d"]),
                num=jnp.where(ok, new_inner["num"], inner["num"]),
            )
        if self.brakes:
            kept["brake"] = jnp.where(ok, new_inner["brake"], inner["brake"])
        if self.lagged:
            kept["stats"] = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_inner["stats"], inner["stats"])
        if self.reads_initial_rms:
            kept["rms0"] = inner["rms0"]
        return kept

    # ---------------------------------------------------------------- the rule's scalars
    # Written once for every implementation of the update: the XLA one below and
    # the fused kernels (lopt.kernels.normed_fc_fused and its CPU and Pallas
    # kernels), which differ only in how they pass over the tensors.
    def step_scalars(self, meta_params, state: OptState, loss: jax.Array) -> StepScalars:
        """This step's scalars shared by every tensor: decays, bias corrections, loss feature, rates."""
        mp = meta_params
        beta_m = jax.nn.sigmoid(mp["decays"]["momentum_logits"])
        beta_v = jax.nn.sigmoid(mp["decays"]["second_moment_logit"])
        corr_m = ft.bias_correction(beta_m, state.step)
        corr_v = ft.bias_correction(beta_v, state.step)

        # Loss feature: relative change of the loss against its running mean (0 without a loss).
        loss_mean = jnp.where(state.step == 0, loss, state.inner["loss_mean"])
        rel = (loss - loss_mean) / (jnp.abs(loss_mean) + 1e-8)
        loss_feat = jnp.tanh(jnp.where(loss_mean == 0.0, 0.0, rel))
        step_feats = jnp.concatenate([ft.time_features(state.step, state.num_steps, self.timescales), loss_feat[None]])
        lr_t = self.step_lr(state)
        wd = self.run_weight_decay(mp["log_wd"], state.num_steps)
        lr_decay = lr_t if not self.brakes or self.brake_decay else lr_t * jnp.exp(-state.inner["brake"])
        weight = self._distance_weight(state.inner["d"], lr_t) if self.adapts_distance else None
        n_step = self.num_step_features
        bias_step = mp["layer1"]["b"] + step_feats @ mp["layer1"]["w_tensor"][:n_step]
        log_step_time = mp["step"]["b"] + step_feats @ mp["step"]["w"][:n_step]
        if self.lr_horizon:  # the gradient step only: the decay and D's weights keep lr_t
            lr_t = lr_t * horizon_factor(state.num_steps, self.lr_horizon, self.lr_horizon_exponent)
        return StepScalars(beta_m, beta_v, corr_m, corr_v, loss_mean, lr_t, wd, lr_decay, weight, bias_step,
                           log_step_time)

    def tensor_terms(self, meta_params, sc: StepScalars, rms_a: jax.Array, rms_p: jax.Array, ndim: int,
                     rms0: jax.Array | None = None):
        """One rank-``ndim`` tensor's ``(bias1, log step multiplier, centering constant)`` from ``rms(a)``,
        ``rms(p)`` and, where the relative step reads it, the tensor's initial RMS ``rms0``.

        The centering constant is the network's output with every per-parameter
        feature at zero (a scalar), subtracted so a parameter that gets no
        gradient never moves.
        """
        mp = meta_params
        n_step = self.num_step_features
        tensor = jnp.stack([jnp.log(rms_a), jnp.log(jnp.maximum(rms_p, PARAM_RMS_FLOOR))])
        bias1 = sc.bias_step + tensor @ mp["layer1"]["w_tensor"][n_step:]
        log_mult = sc.log_step_time + tensor @ mp["step"]["w"][n_step:]
        if self.relative_step_exponent and ndim >= 2:
            if self.reads_initial_rms:  # 0 for a tensor initialized at zero: it keeps the unscaled step
                relative = jnp.where(rms0 > 0, jnp.log(jnp.maximum(rms0, PARAM_RMS_FLOOR)), math.log(
                    self.relative_step_reference))
            else:
                relative = tensor[1]
            log_mult = log_mult + self.relative_step_exponent * (relative - math.log(self.relative_step_reference))
        log_mult = bounded(log_mult)
        h1_0 = jax.nn.relu(bias1)
        h2_0 = jax.nn.relu(h1_0 @ mp["layer2"]["w"] + mp["layer2"]["b"])
        return bias1, log_mult, h2_0 @ mp["out"]

    def leaf_scales(self, sc: StepScalars, s: jax.Array, log_mult, rms_a, rms_d, rms_p, ndim: int):
        """``(scale, decay, finite)`` of one non-empty tensor: its update is ``-(scale * d) - decay * p``,
        finite exactly when these scalars are (a non-finite element of ``d`` or ``p`` makes its RMS
        non-finite; see :meth:`NormedFC.checked_update`)."""
        scale = s * sc.lr_t * jnp.exp(log_mult) * rms_a / rms_d
        decay = s * sc.lr_decay * sc.wd if ndim >= self.decay_min_ndim else jnp.zeros((), jnp.float32)
        return scale, decay, jnp.isfinite(jnp.stack([scale, rms_d, rms_p, decay])).all()

    def _update(self, meta_params, state: OptState, grads, params, loss):
        mp = meta_params
        k = len(self.momentum_decays)
        sc = self.step_scalars(mp, state, loss)
        beta_m, beta_v, corr_m, corr_v = sc.beta_m, sc.beta_v, sc.corr_m, sc.corr_v
        adapts = self.adapts_distance
        w1 = mp["layer1"]["w"]

        lagged = self.lagged

        def leaf(g, p, s, moved, acc, stats, rms0, v, *ms):
            if self.brakes:  # the previous step's direction (bias corrections are global: cosines ignore them)
                a_prev = ms[0] / (jnp.sqrt(v) + self.eps)
                brake_terms = (jnp.sum(g * a_prev), jnp.sum(jnp.square(g)), jnp.sum(jnp.square(a_prev)))
            else:
                brake_terms = (jnp.zeros((), jnp.float32),) * 3
            ms = [ft.ema(m, g, beta_m[i]) for i, m in enumerate(ms)]
            v = ft.ema(v, jnp.square(g), beta_v)
            v_hat = v * corr_v
            a = ms[0] * corr_m[0] / (jnp.sqrt(v_hat) + self.eps)  # Adam's direction
            rms_a = rms(a)
            rs = jax.lax.rsqrt(v_hat + ft.TINY)
            feats = [g * rs, *(ms[i] * corr_m[i] * rs for i in range(k))]
            rms_p = rms(p)
            used_a, used_p = (stats[0], stats[1]) if lagged else (rms_a, rms_p)
            bias1, log_mult, centre = self.tensor_terms(mp, sc, used_a, used_p, jnp.ndim(p),
                                                        rms0 if self.reads_initial_rms else None)
            h1 = [jax.nn.relu(x) for x in ft.dense_elementwise(feats, w1, bias1)]
            h2 = [jax.nn.relu(x) for x in ft.dense_elementwise(h1, mp["layer2"]["w"], mp["layer2"]["b"])]
            net = sum(mp["out"][j] * x for j, x in enumerate(h2))
            d = a + (net - centre)
            rms_d = rms(d)
            # Lagged, the guard uses only what is known before the pass (normed_fc_scalars).
            used_d = stats[2] if lagged else rms_d
            scale, decay, finite = self.leaf_scales(sc, s, log_mult, used_a, used_d, used_p, jnp.ndim(p))
            if lagged:
                stats = next_stats(rms_a, rms_p, rms_d, stats)
            update = -(scale * d) - decay * p
            finite = finite if jnp.size(g) else True  # an empty leaf has NaN RMSs and no update: no skip
            if adapts:
                acc, dot, l1 = distance.leaf_terms(g, moved, acc, self.distance_decay, sc.weight)
                moved = moved + update
            else:
                dot = l1 = jnp.zeros((), jnp.float32)
            return (update, finite, dot, l1, *brake_terms, moved, acc, stats, v, *ms)

        inner = state.inner
        moved, accs = (inner["moved"], inner["s"]) if adapts else (grads, grads)  # placeholders when not adapting
        stats = inner["stats"] if lagged else grads  # a placeholder when not lagged
        rms0 = inner["rms0"] if self.reads_initial_rms else grads  # likewise
        out = ft.map_unzip(leaf, 11 + k, grads, params, state.scales, moved, accs, stats, rms0, inner["v"],
                           *inner["m"])
        updates, finite, dots, l1s, ga, gg, aa, moved, accs, stats, v, ms = *out[:11], tuple(out[11:])
        new_inner = {"m": ms, "v": v, "loss_mean": ft.ema(sc.loss_mean, loss, LOSS_DECAY)}
        if lagged:
            new_inner["stats"] = stats
        if self.reads_initial_rms:
            new_inner["rms0"] = inner["rms0"]
        oks = jax.tree.leaves(finite)
        if self.brakes:
            ga, gg, aa = (sum(jax.tree.leaves(t), jnp.zeros((), jnp.float32)) for t in (ga, gg, aa))
            cos = jnp.where((gg > 0) & (aa > 0), ga * jax.lax.rsqrt(jnp.maximum(gg, ft.TINY))
                            * jax.lax.rsqrt(jnp.maximum(aa, ft.TINY)), 0.0)
            brake = jnp.clip(inner["brake"] + self.brake_rate * cos, math.log(self.brake_floor), 0.0)
            new_inner["brake"] = brake
            oks.append(jnp.isfinite(brake))
        if adapts:
            dot, l1 = (sum(jax.tree.leaves(t), jnp.zeros((), jnp.float32)) for t in (dots, l1s))
            d, num, d_finite = next_distance(lagged, inner, dot, l1, self.distance_decay, sc.weight)
            oks.append(d_finite)
            new_inner.update(moved=moved, s=accs, d=d, num=num)
        ok = jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)
        return updates, new_inner, ok
