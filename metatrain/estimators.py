"""Meta-gradient estimators behind one pure interface (evosax-style).

Every estimator is a frozen dataclass holding an :class:`~lopt.metatrain.unroll.Unroller`
and exposing two pure functions::

    est_state = estimator.init(meta_params, key)
    meta_grad, est_state, metrics = estimator.step(meta_params, est_state, key, data)

``data`` is the tuple of per-group task data (device arrays passed to jit,
never closed over). ``meta_grad`` is a pytree like ``meta_params`` (a descent
direction for the meta-loss: pass it to an optax meta-optimizer as a
gradient).

* :class:`TruncatedES` -- antithetic ES on each truncation; both branches carry
  their own inner state forward (biased across truncations: it ignores how
  meta-parameters changed the state the truncation started from).
* :class:`PES` -- persistent ES: each task accumulates the perturbations its
  current episode has seen and weights loss differences by that sum; the sum
  restarts at episode boundaries, also those inside a truncation (unbiased).
* :class:`FullES` -- antithetic ES over whole episodes from a fresh init;
  ``sign=True`` keeps only the sign of each loss difference; with
  ``episodes="sampled"`` each task's episode has its own length.
* :class:`Backprop` -- truncated backprop through the unroll (one branch).

Reductions over tasks are explicit means over the leading task axis, so the
same code averages correctly when that axis is sharded over devices.
A task whose loss went non-finite in a truncation is either kept with its loss
clipped (``nonfinite="clip"``) or dropped from the estimate
(``nonfinite="mask"``); both are counted in the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from lopt.metatrain.unroll import GroupState, MetaTrainError, Trace, Unroller

NONFINITE_MODES = ("clip", "mask")
FULL_ES_EPISODES = ("longest", "sampled")  # FullES.episodes


@flax.struct.dataclass
class EstState:
    """Estimator state: inner states per group, PES accumulators (or None)."""

    groups: tuple[GroupState, ...]
    accum: Any = None  # per group: pytree like meta_params with a leading task axis


def _perturb(meta_params: Any, key: jax.Array, n: int, std: float) -> Any:
    """``n`` Gaussian perturbations of std ``std`` (leading axis n)."""
    leaves, treedef = jax.tree.flatten(meta_params)
    keys = jax.random.split(key, len(leaves))
    eps = [std * jax.random.normal(k, (n,) + jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, eps)


def _antithetic(meta_params: Any, eps: Any) -> Any:
    """Per-task meta-parameters of the pair: leading axes (N, 2) = (theta+eps, theta-eps)."""
    return jax.tree.map(lambda m, e: m[None, None] + jnp.stack([e, -e], axis=1), meta_params, eps)


def _weighted_sum(coef: jax.Array, tree: Any) -> Any:
    """sum_n coef[n] * tree[n] over the leading task axis."""
    return jax.tree.map(lambda x: jnp.tensordot(coef, x, axes=(0, 0)), tree)


def _truncation_losses(unroller: Unroller, tr: Trace) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per task & branch: meta-loss of the part before/after an episode reset, and usable mask."""
    w = unroller.step_weights()[:, None, None]
    pre = tr.pre[:, :, None]
    l_pre = jnp.sum(w * tr.loss * pre, axis=0)  # (N, B)
    l_post = jnp.sum(w * tr.loss * ~pre, axis=0)
    all_finite = jnp.all(tr.finite, axis=(0, 2))  # (N,)
    return l_pre, l_post, all_finite


def _metrics(unroller: Unroller, traces: tuple[Trace, ...], masks: list[jax.Array], total: list[jax.Array]):
    n = float(unroller.num_tasks)
    finite = jnp.concatenate([t.finite.reshape(-1) for t in traces])
    return {
        "meta_loss": sum(jnp.sum(x) for x in total) / (n * unroller.num_branches),
        "nonfinite_frac": jnp.mean((~finite).astype(jnp.float32)),
        "masked_tasks": sum(jnp.sum(~m) for m in masks).astype(jnp.float32),
        "episodes_done": sum(jnp.sum(t.resets) for t in traces).astype(jnp.float32),
    }


@dataclasses.dataclass(frozen=True)
class _ESBase:
    unroller: Unroller
    std: float = 0.01
    nonfinite: str = "clip"

    def __post_init__(self) -> None:
        if self.unroller.num_branches != 2:
            raise MetaTrainError(f"{type(self).__name__} needs antithetic pairs (num_branches=2)")
        if self.nonfinite not in NONFINITE_MODES:
            raise MetaTrainError(f"nonfinite {self.nonfinite!r}; valid: {', '.join(NONFINITE_MODES)}")
        if self.std <= 0:
            raise MetaTrainError("estimator std must be > 0")

    def _eps(self, meta_params, key):
        return tuple(
            _perturb(meta_params, jax.random.fold_in(key, gi), g.num_tasks, self.std)
            for gi, g in enumerate(self.unroller.groups)
        )

    def _mask(self, finite: jax.Array) -> jax.Array:
        return finite if self.nonfinite == "mask" else jnp.ones_like(finite)

    def _combine(self, meta_params, per_group_grads, masks):
        """Average per-task estimates over all usable tasks of all groups."""
        count = jnp.maximum(sum(jnp.sum(m.astype(jnp.float32)) for m in masks), 1.0)
        grad = jax.tree.map(jnp.zeros_like, meta_params)
        for g in per_group_grads:
            grad = jax.tree.map(jnp.add, grad, g)
        return jax.tree.map(lambda x: x / count, grad)


@dataclasses.dataclass(frozen=True)
class TruncatedES(_ESBase):
    """Antithetic ES per truncation; both branches keep their own inner state."""

    def init(self, meta_params: Any, key: jax.Array) -> EstState:
        return EstState(groups=self.unroller.init_state(meta_params, key))

    def step(self, meta_params, est_state: EstState, key, data):
        k_eps, k_unroll = jax.random.split(key)
        eps = self._eps(meta_params, k_eps)
        bm = tuple(_antithetic(meta_params, e) for e in eps)
        groups, traces = self.unroller.unroll(meta_params, bm, est_state.groups, k_unroll, data)
        grads, masks, totals = [], [], []
        for e, tr in zip(eps, traces):
            l_pre, l_post, finite = _truncation_losses(self.unroller, tr)
            total = l_pre + l_post
            mask = self._mask(finite)
            coef = jnp.where(mask, (total[:, 0] - total[:, 1]) / (2.0 * self.std**2), 0.0)
            grads.append(_weighted_sum(coef, e))
            masks.append(mask)
            totals.append(total)
        grad = self._combine(meta_params, grads, masks)
        return grad, EstState(groups=groups), _metrics(self.unroller, traces, masks, totals)


@dataclasses.dataclass(frozen=True)
class PES(_ESBase):
    """Persistent ES with per-task perturbation accumulators reset at episode starts."""

    def init(self, meta_params: Any, key: jax.Array) -> EstState:
        accum = tuple(
            jax.tree.map(lambda m: jnp.zeros((g.num_tasks,) + jnp.shape(m), jnp.float32), meta_params)
            for g in self.unroller.groups
        )
        return EstState(groups=self.unroller.init_state(meta_params, key), accum=accum)

    def step(self, meta_params, est_state: EstState, key, data):
        k_eps, k_unroll = jax.random.split(key)
        eps = self._eps(meta_params, k_eps)
        bm = tuple(_antithetic(meta_params, e) for e in eps)
        groups, traces = self.unroller.unroll(meta_params, bm, est_state.groups, k_unroll, data)
        grads, masks, totals, accums = [], [], [], []
        for e, acc, tr in zip(eps, est_state.accum, traces):
            l_pre, l_post, finite = _truncation_losses(self.unroller, tr)
            mask = self._mask(finite)
            scale = 1.0 / (2.0 * self.std**2)
            c_pre = jnp.where(mask, (l_pre[:, 0] - l_pre[:, 1]) * scale, 0.0)
            c_post = jnp.where(mask, (l_post[:, 0] - l_post[:, 1]) * scale, 0.0)
            grown = jax.tree.map(jnp.add, acc, e)
            # Losses of the episode that started before this truncation carry its whole
            # perturbation history; losses of episodes started inside it only this eps.
            g = jax.tree.map(jnp.add, _weighted_sum(c_pre, grown), _weighted_sum(c_post, e))
            continuing = tr.pre[-1]  # (N,) no reset happened in this truncation
            new_acc = jax.tree.map(
                lambda a, x: jnp.where(continuing.reshape((-1,) + (1,) * (a.ndim - 1)), a, x), grown, e
            )
            grads.append(g)
            masks.append(mask)
            totals.append(l_pre + l_post)
            accums.append(new_acc)
        grad = self._combine(meta_params, grads, masks)
        new_state = EstState(groups=groups, accum=tuple(accums))
        return grad, new_state, _metrics(self.unroller, traces, masks, totals)


@dataclasses.dataclass(frozen=True)
class FullES(_ESBase):
    """Antithetic ES over complete episodes (every step starts fresh tasks).

    ``episodes="longest"``: the unroller's truncation equals its constant
    episode length, so every task runs one episode of that length.
    ``episodes="sampled"``: the truncation is the schedule's longest episode
    and each task draws its own length from the schedule; a task's meta-loss is
    the mean over its first (whole) episode, and the steps after it ended,
    which start an episode the truncation cuts, do not count. This costs the
    steps after each episode's end but lets one meta-step see every length of a
    log-uniform schedule: with one length, the optimizer's clock features and
    its fraction-of-run feature move together and ES cannot tell them apart.
    Neither mode staggers. :func:`lopt.metatrain.build.build_estimator`
    arranges both.
    """

    sign: bool = False
    episodes: str = "longest"

    def __post_init__(self) -> None:
        super().__post_init__()
        u = self.unroller
        if self.episodes not in FULL_ES_EPISODES:
            raise MetaTrainError(f"full_es episodes {self.episodes!r}; valid: {', '.join(FULL_ES_EPISODES)}")
        if u.stagger or u.truncation_length != u.schedule.longest:
            raise MetaTrainError("full_es needs a truncation as long as the longest episode, no stagger")
        if self.episodes == "longest" and u.schedule.kind != "constant":
            raise MetaTrainError("full_es with episodes='longest' needs a constant episode length")

    def init(self, meta_params: Any, key: jax.Array) -> EstState:
        return EstState(groups=())

    def _episode_losses(self, tr: Trace) -> tuple[jax.Array, jax.Array]:
        """Per task & branch: the meta-loss of the run, and whether it stayed finite."""
        l_pre, l_post, finite = _truncation_losses(self.unroller, tr)
        if self.episodes == "longest":
            return l_pre + l_post, finite
        # step weights are 1/K: rescale the first episode's sum to its own mean
        frac = jnp.maximum(jnp.mean(tr.pre.astype(jnp.float32), axis=0), 1.0 / tr.pre.shape[0])
        finite_first = jnp.all(tr.finite | ~tr.pre[:, :, None], axis=(0, 2))
        return l_pre / frac[:, None], finite_first

    def step(self, meta_params, est_state: EstState, key, data):
        k_init, k_eps, k_unroll = jax.random.split(key, 3)
        fresh = self.unroller.init_state(meta_params, k_init)
        eps = self._eps(meta_params, k_eps)
        bm = tuple(_antithetic(meta_params, e) for e in eps)
        _, traces = self.unroller.unroll(meta_params, bm, fresh, k_unroll, data)
        grads, masks, totals = [], [], []
        for e, tr in zip(eps, traces):
            total, finite = self._episode_losses(tr)
            mask = self._mask(finite)
            diff = total[:, 0] - total[:, 1]
            # sign-ES: the direction eps * sign(diff) has expected value ~ std * grad/|grad|
            # per coordinate scale; dividing by std makes it O(1) for the meta-optimizer.
            coef = jnp.sign(diff) / self.std if self.sign else diff / (2.0 * self.std**2)
            grads.append(_weighted_sum(jnp.where(mask, coef, 0.0), e))
            masks.append(mask)
            totals.append(total)
        grad = self._combine(meta_params, grads, masks)
        return grad, est_state, _metrics(self.unroller, traces, masks, totals)


@dataclasses.dataclass(frozen=True)
class Backprop:
    """Truncated backprop: gradient of the truncation meta-loss, state not differentiated."""

    unroller: Unroller
    nonfinite: str = "clip"

    def __post_init__(self) -> None:
        if self.unroller.num_branches != 1:
            raise MetaTrainError("backprop runs one unperturbed branch (num_branches=1)")
        if self.nonfinite not in NONFINITE_MODES:
            raise MetaTrainError(f"nonfinite {self.nonfinite!r}; valid: {', '.join(NONFINITE_MODES)}")

    def init(self, meta_params: Any, key: jax.Array) -> EstState:
        return EstState(groups=self.unroller.init_state(meta_params, key))

    def step(self, meta_params, est_state: EstState, key, data):
        groups_in = jax.lax.stop_gradient(est_state.groups)

        def meta_loss(mp):
            groups, traces = self.unroller.unroll(mp, None, groups_in, key, data)
            masks, totals, obj = [], [], 0.0
            for tr in traces:
                l_pre, l_post, finite = _truncation_losses(self.unroller, tr)
                mask = finite if self.nonfinite == "mask" else jnp.ones_like(finite)
                total = l_pre + l_post
                obj = obj + jnp.sum(jnp.where(mask, total[:, 0], 0.0))
                masks.append(mask)
                totals.append(total)
            count = jnp.maximum(sum(jnp.sum(m.astype(jnp.float32)) for m in masks), 1.0)
            return obj / jax.lax.stop_gradient(count), (groups, traces, masks, totals)

        (_, (groups, traces, masks, totals)), grad = jax.value_and_grad(meta_loss, has_aux=True)(meta_params)
        return grad, EstState(groups=groups), _metrics(self.unroller, traces, masks, totals)


ESTIMATORS = {"es": TruncatedES, "pes": PES, "full_es": FullES, "backprop": Backprop}
