"""``small_fc``, the default: a tiny per-parameter MLP on Adafactor-style features.

The state holds three momenta and one RMS second moment per parameter (four
float32 numbers, twice Adam's two), each shaped like its parameter, plus,
for tensors of rank >= 2, Adafactor's row and column second moments (a few
numbers per row and column; the last two dimensions are the matrix). From
them each parameter gets nine features:

* the gradient and the three momenta divided by sqrt of the full second moment,
* the same four divided by sqrt of the factored (row x column) second moment,
* the parameter value,

and the step gets scalar features (fraction of the planned run done, tanh
clocks, relative change of the loss) that enter the first layer as a bias.
Two hidden layers of ``hidden`` ReLU units give a direction ``d`` and a
magnitude ``s``; the update is ``d * exp(s * exp_scale) * step_scale *
exp(log_lr)``. With small ``exp_scale`` and ``step_scale`` (1e-3) a fresh
optimizer takes small steps.

With ``learned_schedule`` (off by default, on in the shipped ``default``
weights; BENCHMARKS.md has what it gave) the learning rate is also multiplied by
``exp(w . s)`` where ``s`` are step features: the fraction of the planned
run done, ``log(1 - fraction + 0.01)`` (so ``w`` on it gives a
polynomial decay ``(1 - fraction)**w`` to the end of the planned horizon),
the tanh clocks (warm-up) and the loss feature. The direction network alone
cannot do this: its output is *added* to the skip term, so it can bend the
update but not scale the whole step down towards the end of a run, which is
where a constant-learning-rate baseline leaves loss on the table. ``w``
starts at zero (a fresh optimizer is unchanged) except its decay entry,
which starts at ``schedule_decay_init``: an annealing *prior*, like the skip
init below is an Adafactor prior. Why a prior: PES perturbations of ``w``
(std 0.01) change the last steps' learning rate by a few percent, too little
for meta-training to discover annealing from zero in our budget (measured:
the decay weight moved by < 0.01 in 2,500 outer steps), while starting from
an anneal lets it keep, strengthen or undo it.

With ``centered`` (off by default, on in the shipped ``default`` weights)
the update is the network's output minus its output for the same parameter
value and step with every gradient and momentum feature at zero, so a
parameter with no gradient information does not move. Without it a trained
network drifts: the recipe's stage-3 weights moved a parameter with zero
gradient by ~3e-4 per step (a pull that depends on the parameter value, like
a weight decay), and that pull, not the learning rate, set their loss floor
on the digits MLP: centering the same weights took its 2,000-step training
loss from 2.9e-4 to 3.3e-6 (tuned Adam: 8e-6).
It costs a second, one-feature pass of the network per step.

Why the skip connection: the direction also gets a learned linear function of
the features (``skip``), initialised to ``-1`` on the factored-preconditioned
0.9-momentum and the last layer starts near zero, so a *fresh* ``small_fc`` is
close to Adafactor with momentum at learning rate 1e-3: meta-training starts
from an optimizer that already trains, instead of from a random walk.

Speed: the per-parameter network is written with :func:`dense_elementwise`
(scalar weights times whole arrays), leaf by leaf, so XLA fuses features,
network and update into one loop per parameter tensor that reads each
accumulator once; the state stays shaped (and sharded) like the parameters.
See :mod:`lopt.features` and BENCHMARKS.md for what it costs against Adam.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt import features as ft
from lopt.base import LearnedOptimizer, OptimizerError, OptState, tree_all_finite

NUM_FEATURES = 9  # see module docstring; index 5 is m[0] * rsqrt(v_factored)
LOSS_DECAY = 0.95  # running mean of the loss used by the loss feature
SCHEDULE_FLOOR = 0.01  # the decay feature is log(1 - fraction + SCHEDULE_FLOOR)


@dataclasses.dataclass(frozen=True)
class SmallFC(LearnedOptimizer):
    """Tiny per-parameter MLP on Adafactor features (the default architecture)."""

    arch: ClassVar[str] = "small_fc"
    # Moving averages of g and g^2 (row/col: of its row and column means); see base: the guard.
    moment_keys: ClassVar[tuple[str, ...]] = ("m", "v", "row", "col")
    extension_options: ClassVar[tuple[str, ...]] = ("learned_schedule", "schedule_decay_init", "centered")

    hidden: int = 4
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    second_moment_decay: float = 0.999
    factored_decay: float = 0.999
    timescales: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    exp_scale: float = 1e-3
    step_scale: float = 1e-3
    eps: float = 1e-16  # added to second moments inside rsqrt
    learned_schedule: bool = False  # scale the learning rate by exp(w . step features), see above
    schedule_decay_init: float = 0.0  # initial w on the decay feature: lr x (1 - fraction + 0.01)**this
    centered: bool = False  # subtract the update made with zero gradient features (see above)

    def __post_init__(self) -> None:
        if self.schedule_decay_init and not self.learned_schedule:
            raise OptimizerError("small_fc: schedule_decay_init initializes the learned schedule; it needs learned_schedule: true")

    # ---------------------------------------------------------------- meta-params
    def num_scalar_features(self) -> int:
        return 1 + len(self.timescales) + 1  # fraction done, clocks, loss change

    def num_schedule_features(self) -> int:
        return self.num_scalar_features() + 1  # the scalar features and log(1 - fraction + 0.01)

    def init_meta_params(self, key: jax.Array) -> dict[str, Any]:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        h = self.hidden
        skip = jnp.zeros((NUM_FEATURES,), jnp.float32).at[5].set(-1.0)
        w_schedule = jnp.zeros((self.num_schedule_features(),), jnp.float32).at[-1].set(self.schedule_decay_init)
        schedule = {"schedule": w_schedule} if self.learned_schedule else {}
        return {
            **schedule,
            "decays": {
                "momentum_logits": jnp.asarray([ft.logit(d) for d in self.momentum_decays], jnp.float32),
                "second_moment_logit": jnp.asarray(ft.logit(self.second_moment_decay), jnp.float32),
                "factored_logit": jnp.asarray(ft.logit(self.factored_decay), jnp.float32),
            },
            "layer1": {
                "w": ft.glorot(k1, NUM_FEATURES, h),
                "w_scalar": ft.glorot(k2, self.num_scalar_features(), h),
                "b": jnp.zeros((h,), jnp.float32),
            },
            "layer2": {"w": ft.glorot(k3, h, h), "b": jnp.zeros((h,), jnp.float32)},
            "out": {"w": ft.glorot(k4, h, 2, scale=0.01), "b": jnp.zeros((2,), jnp.float32)},
            "skip": skip,
            "log_lr": jnp.zeros((), jnp.float32),
        }

    # ---------------------------------------------------------------- state
    def init_inner(self, meta_params: Any, params: Any) -> dict[str, Any]:
        """Accumulators shaped like the parameters, leaf by leaf.

        ``m`` is a list of ``len(momentum_decays)`` pytrees like ``params``,
        ``v`` one pytree like ``params``; ``row`` and ``col`` are pytrees with the
        structure of ``params`` holding, per leaf of rank >= 2, Adafactor's row
        and column moments (the last two dimensions are the matrix) and an
        empty array for other leaves. Every accumulator has exactly the
        structure of ``params``, so harnesses that wrap state leaves (flax
        ``nnx.Optimizer``) see one kind of node everywhere. Why per leaf: each
        accumulator then carries its parameter's sharding (an FSDP-sharded
        model keeps a sharded state and its step needs no gather), and memory
        follows the shard, not the model; the update of one leaf is still one
        fused loop (see ``_leaf_update``).
        """
        del meta_params
        zeros = ft.zeros_like_param

        def reduced(axis: int):
            def make(p: Any) -> jax.Array:
                return ft.zeros_like_param(p, axis=axis) if jnp.ndim(p) >= 2 else jnp.zeros((0,), jnp.float32)

            return make

        return {
            "m": [jax.tree.map(zeros, params) for _ in self.momentum_decays],
            "v": jax.tree.map(zeros, params),
            "row": jax.tree.map(reduced(-1), params),
            "col": jax.tree.map(reduced(-2), params),
            "loss_mean": jnp.zeros((), jnp.float32),
        }

    # ---------------------------------------------------------------- update
    def compute_update(self, meta_params, state: OptState, grads, params, loss):
        ones = jax.tree.map(lambda _: 1.0, grads)
        updates, inner, _ = self._update(meta_params, state._replace(scales=ones), grads, params, loss)
        return updates, inner

    def checked_update(self, meta_params, state: OptState, grads, params, loss):
        return self._update(meta_params, state, grads, params, loss)

    def commit_inner(self, meta_params, state: OptState, grads, new_inner, ok):
        """Momenta and second moment recomputed with the skip folded in (see the base class).

        The row and column moments are small vectors: choosing between new and
        old costs nothing there, while recomputing them would re-read the gradient.
        """
        decays = meta_params["decays"]
        beta_m = jax.nn.sigmoid(decays["momentum_logits"])
        beta_v = jax.nn.sigmoid(decays["second_moment_logit"])
        inner = state.inner
        ms = [ft.guarded_ema_tree(m, grads, beta_m[i], ok) for i, m in enumerate(inner["m"])]
        v = ft.guarded_ema_tree(inner["v"], jax.tree.map(lambda g: jnp.square(g) + ft.TINY, grads), beta_v, ok)
        keep = lambda key: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner[key], inner[key])  # noqa: E731
        return {"m": ms, "v": v, "row": keep("row"), "col": keep("col"), "loss_mean": keep("loss_mean")}

    def _update(self, meta_params, state: OptState, grads, params, loss):
        """Scaled updates, new accumulators and "every update finite", leaf by leaf."""
        mp = meta_params
        k = len(self.momentum_decays)
        beta_m = jax.nn.sigmoid(mp["decays"]["momentum_logits"])
        beta_v = jax.nn.sigmoid(mp["decays"]["second_moment_logit"])
        beta_f = jax.nn.sigmoid(mp["decays"]["factored_logit"])
        corr_m = ft.bias_correction(beta_m, state.step)
        corr_v = ft.bias_correction(beta_v, state.step)
        corr_f = ft.bias_correction(beta_f, state.step)

        # Loss feature: relative change of the loss against its running mean.
        # Exactly zero when no loss is supplied (loss == 0 on every step).
        loss_mean = jnp.where(state.step == 0, loss, state.inner["loss_mean"])
        rel = (loss - loss_mean) / (jnp.abs(loss_mean) + 1e-8)
        loss_feat = jnp.tanh(jnp.where(loss_mean == 0.0, 0.0, rel))
        new_loss_mean = ft.ema(loss_mean, loss, LOSS_DECAY)
        scalars = jnp.concatenate(
            [ft.time_features(state.step, state.num_steps, self.timescales), loss_feat[None]]
        )
        bias1 = mp["layer1"]["b"] + scalars @ mp["layer1"]["w_scalar"]
        log_lr = mp["log_lr"]
        if self.learned_schedule:
            frac = jnp.clip(scalars[0], 0.0, 1.0)  # past the planned horizon: stay at the end value
            sched = jnp.concatenate([scalars, jnp.log(1.0 - frac + SCHEDULE_FLOOR)[None]])
            log_lr = log_lr + sched @ mp["schedule"]
        lr = self.step_scale * jnp.exp(log_lr)
        coef = dict(beta_m=beta_m, beta_v=beta_v, beta_f=beta_f, corr_m=corr_m, corr_v=corr_v, corr_f=corr_f,
                    bias1=bias1, lr=lr)

        g_leaves, treedef = jax.tree.flatten(grads)
        p_leaves = treedef.flatten_up_to(params)
        s_leaves = treedef.flatten_up_to(state.scales)
        m_leaves = [treedef.flatten_up_to(m) for m in state.inner["m"]]
        v_leaves = treedef.flatten_up_to(state.inner["v"])
        r_leaves = treedef.flatten_up_to(state.inner["row"])
        c_leaves = treedef.flatten_up_to(state.inner["col"])
        results = [
            self._leaf_update(mp, coef, g, p, s, [m[i] for m in m_leaves], v, (r, cl))
            for i, (g, p, s, v, r, cl) in enumerate(zip(g_leaves, p_leaves, s_leaves, v_leaves, r_leaves, c_leaves))
        ]
        unflat = lambda j: treedef.unflatten([r[j] for r in results])  # noqa: E731
        inner = {
            "m": [treedef.unflatten([r[1][i] for r in results]) for i in range(k)],
            "v": unflat(2),
            "row": treedef.unflatten([r[3][0] for r in results]),
            "col": treedef.unflatten([r[3][1] for r in results]),
            "loss_mean": new_loss_mean,
        }
        ok = jnp.all(jnp.stack([r[4] for r in results])) if results else jnp.asarray(True)
        return unflat(0), inner, ok

    def _leaf_update(self, mp, c, g, p, scale, ms, v, fac):
        """One leaf: accumulators, nine features, network and update in one fused loop.

        Everything is elementwise on arrays shaped like the parameter (the
        factored moment broadcasts a row and a column vector), so XLA emits one
        loop that reads each accumulator once and writes it once.
        """
        g2 = jnp.square(g) + ft.TINY
        ms = [ft.ema(m, g, c["beta_m"][i]) for i, m in enumerate(ms)]
        v = ft.ema(v, g2, c["beta_v"])
        if g.ndim >= 2:
            row, col, v_f = ft.factored_second_moment(fac[0], fac[1], g2, c["beta_f"])
            fac = (row, col)
            v_f = v_f * c["corr_f"]
        else:
            v_f = v * c["corr_v"]
        rs_v = jax.lax.rsqrt(v * c["corr_v"] + self.eps)
        rs_f = jax.lax.rsqrt(v_f + self.eps)
        mh = [m * c["corr_m"][i] for i, m in enumerate(ms)]
        feats = [g * rs_v, *(x * rs_v for x in mh), g * rs_f, *(x * rs_f for x in mh), p]
        lr = c["lr"]

        def step(d: jax.Array, mag: jax.Array) -> jax.Array:
            # Written as a division so the result is one "expensive" fused op: XLA
            # then materializes it once instead of re-fusing the whole network into
            # each consumer (the finiteness check, the masked parameter update).
            return d * scale / (jnp.exp(-mag * self.exp_scale) / lr)

        update = step(*_network(mp, feats, c["bias1"], first=0))
        if self.centered:  # minus the update the same network makes with no gradient information
            update = update - step(*_network(mp, [p], c["bias1"], first=NUM_FEATURES - 1))
        return update, ms, v, fac, tree_all_finite(update)


def _network(mp: dict, feats: list, bias1: jax.Array, first: int) -> tuple[jax.Array, jax.Array]:
    """Direction and magnitude of the per-parameter network (with its skip term).

    ``feats`` are the features ``first, first + 1, ...`` of the full list; the
    others count as zero. ``first = NUM_FEATURES - 1`` (only the parameter
    value) is the network's response to *no* gradient information, which the
    ``centered`` option subtracts; passing just that row keeps the second
    pass cheap (no multiplications by zero features).
    """
    w1 = mp["layer1"]["w"][first:]
    h1 = [jax.nn.relu(x) for x in ft.dense_elementwise(feats, w1, bias1)]
    h2 = [jax.nn.relu(x) for x in ft.dense_elementwise(h1, mp["layer2"]["w"], mp["layer2"]["b"])]
    direction, magnitude = ft.dense_elementwise(h2, mp["out"]["w"], mp["out"]["b"])
    direction = direction + sum(mp["skip"][first + f] * x for f, x in enumerate(feats))
    return direction, magnitude
