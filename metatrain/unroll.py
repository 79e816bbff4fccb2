"""The unroll engine: many inner trainings advanced K steps in one ``lax.scan``.

Layout. A *group* is ``num_tasks`` copies of one static task structure
(vmapped); a mixture of families is a tuple of groups, looped over in Python
at trace time so that all of them run inside the same jitted step. Every
array in a group's state has the task axis first (``N``), which is the axis a
later ``jax.sharding.NamedSharding`` splits across devices. Per-task state
(:class:`TaskSlots`: hyperparameters, step counter, episode length,
augmentation scales) is shared by the task's *branches*; per-branch state
(:class:`Branches`: parameters and optimizer state) has a second axis ``B``:
``B = 2`` holds an explicit antithetic pair (+eps, -eps) that sees the same
batches and resets to the same initialization, ``B = 1`` an unperturbed run.

Episodes. Each task trains for its own episode length, drawn from an
:class:`EpisodeSchedule`. When ``step >= length`` the task is reset at the
start of the next inner step (new hparams, new init, new length) inside the
scan; the reset is behind one ``lax.cond`` on "any task needs it" so its cost
is paid only on the rare steps where some episode ends. With ``stagger`` the
first episode of every task is cut to a uniform fraction of its length, so
tasks do not reset in lockstep. A task whose loss turns non-finite is reset
too, so a diverged run cannot keep poisoning the meta-gradient.

muP mode (``Unroller.mup``): every group's optimizer states are initialized
with the task's per-layer muP update factors (:func:`lopt.mup.update_scales_for_task`),
constants computed from shapes at trace time.

All randomness comes from the ``key`` argument (the trainer derives it from
the seed and the outer step), folded with the inner-step index and the task
index: the engine is deterministic and its state holds no keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from lopt.base import LearnedOptimizer
from lopt.inner_step import inner_step
from lopt.mup import update_scales_for_task
from lopt.tasks.base import Task


class MetaTrainError(ValueError):
    """A meta-training configuration or checkpoint is invalid."""


@dataclasses.dataclass(frozen=True)
class EpisodeSchedule:
    """Distribution of inner-episode lengths: ``constant`` or ``log_uniform``."""

    kind: str = "constant"
    length: int = 2000
    min_length: int = 100
    max_length: int = 2000

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "log_uniform"):
            raise MetaTrainError(f"episode schedule kind {self.kind!r}; valid: constant, log_uniform")
        if self.kind == "log_uniform" and not 1 <= self.min_length <= self.max_length:
            raise MetaTrainError("episode schedule needs 1 <= min_length <= max_length")
        if self.kind == "constant" and self.length < 1:
            raise MetaTrainError("episode schedule needs length >= 1")

    @property
    def longest(self) -> int:
        return self.length if self.kind == "constant" else self.max_length

    def sample(self, key: jax.Array) -> jax.Array:
        if self.kind == "constant":
            return jnp.asarray(self.length, jnp.int32)
        lo, hi = jnp.log(float(self.min_length)), jnp.log(float(self.max_length) + 1.0)
        n = jnp.floor(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi)))
        return jnp.clip(n, self.min_length, self.max_length).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Task augmentation: per-episode log-uniform rescaling of parameters and loss.

    ``param_scale_range=(a, b)``: the optimizer sees parameters ``p / s`` for
    ``s ~ logU(a, b)`` (the task is evaluated at ``s * p``), so it must cope
    with parameters and gradients of unfamiliar magnitude. ``loss_scale_range``
    multiplies the loss (and gradients) the optimizer sees; the meta-loss
    always uses the unscaled loss. ``(1, 1)`` turns a knob off.
    """

    param_scale_range: tuple[float, float] = (1.0, 1.0)
    loss_scale_range: tuple[float, float] = (1.0, 1.0)

    @property
    def active(self) -> bool:
        return tuple(self.param_scale_range) != (1.0, 1.0) or tuple(self.loss_scale_range) != (1.0, 1.0)

    def sample(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        k1, k2 = jax.random.split(key)

        def log_uniform(k, lo_hi):
            lo, hi = jnp.log(float(lo_hi[0])), jnp.log(float(lo_hi[1]))
            return jnp.exp(jax.random.uniform(k, (), minval=lo, maxval=hi))

        return log_uniform(k1, self.param_scale_range), log_uniform(k2, self.loss_scale_range)


@dataclasses.dataclass(frozen=True)
class Group:
    """``num_tasks`` vmapped copies of one static task (new hparams each episode)."""

    task: Task
    num_tasks: int
    sample_hparams: bool = True


@flax.struct.dataclass
class TaskSlots:
    """Per-task state shared by the task's branches (leading axis: tasks)."""

    hparams: Any
    step: jax.Array  # int32, steps done in the current episode
    length: jax.Array  # int32, length of the current episode
    param_scale: jax.Array  # float32, augmentation
    loss_scale: jax.Array  # float32, augmentation


@flax.struct.dataclass
class Branches:
    """Per-branch inner state (leading axes: tasks, branches)."""

    params: Any
    opt_state: Any


@flax.struct.dataclass
class GroupState:
    slots: TaskSlots
    branches: Branches


@flax.struct.dataclass
class Trace:
    """What one truncation recorded, per inner step (leading axis: K steps).

    ``loss``: (K, N, B) normalized meta-loss terms (clipped; see ``loss_clip``);
    ``finite``: (K, N, B) whether the raw loss was finite; ``pre``: (K, N) True
    while the task is still in the episode it started the truncation in;
    ``resets``: (K, N) True where an episode started at that step.
    """

    loss: jax.Array
    finite: jax.Array
    pre: jax.Array
    resets: jax.Array


# Added inside the log of the ``log`` meta-loss: losses below ~1e-8 of the
# task's scale (float32 round-off for most tasks) no longer count as progress.
LOG_FLOOR = 1e-8
META_LOSSES = ("mean", "valid", "last")  # which losses of a truncation form its meta-loss
LOSS_TRANSFORMS = ("identity", "log")  # applied to each normalized loss first


@dataclasses.dataclass(frozen=True)
class Unroller:
    """Static description of the vmapped inner trainings (hashable, jit-static)."""

    arch: LearnedOptimizer
    groups: tuple[Group, ...]
    truncation_length: int = 20
    schedule: EpisodeSchedule = EpisodeSchedule()
    num_branches: int = 2
    meta_loss: str = "mean"
    loss_transform: str = "identity"  # identity | log (see _meta_loss_terms)
    progress_weight: float = 0.0  # weight later steps of an episode more (see _progress_weights)
    stagger: bool = True
    augment: Augmentation = Augmentation()
    loss_clip: float = 10.0
    mup: bool = False  # multiply updates by each task's muP factors (lopt.mup)

    def __post_init__(self) -> None:
        if self.meta_loss not in META_LOSSES:
            raise MetaTrainError(f"meta_loss {self.meta_loss!r}; valid: {', '.join(META_LOSSES)}")
        if self.loss_transform not in LOSS_TRANSFORMS:
            raise MetaTrainError(f"loss_transform {self.loss_transform!r}; valid: {', '.join(LOSS_TRANSFORMS)}")
        if not self.progress_weight >= 0.0:
            raise MetaTrainError(f"progress_weight must be >= 0, got {self.progress_weight}")
        if self.num_branches not in (1, 2):
            raise MetaTrainError("num_branches must be 1 (unperturbed) or 2 (antithetic pair)")
        if not self.groups or any(g.num_tasks < 1 for g in self.groups):
            raise MetaTrainError("every task group needs num_tasks >= 1")

    @property
    def num_tasks(self) -> int:
        return sum(g.num_tasks for g in self.groups)

    # ------------------------------------------------------------------ init
    def init_state(self, meta_params: Any, key: jax.Array) -> tuple[GroupState, ...]:
        """Fresh state for every group; with ``stagger`` first episodes are shortened."""
        states = []
        for gi, group in enumerate(self.groups):
            k_tasks, k_stagger = jax.random.split(jax.random.fold_in(key, gi))
            slots, params = self._fresh_tasks(group, jax.random.split(k_tasks, group.num_tasks))
            if self.stagger:
                frac = jax.random.uniform(k_stagger, (group.num_tasks,))
                slots = slots.replace(length=jnp.maximum(1, jnp.ceil(frac * slots.length)).astype(jnp.int32))
            branches = self._init_branches(group, meta_params, None, params, slots.length)
            states.append(GroupState(slots=slots, branches=branches))
        return tuple(states)

    def _fresh_tasks(self, group: Group, keys: jax.Array) -> tuple[TaskSlots, Any]:
        """New task samples (hparams, lengths, augmentation) and their initial params."""

        def one(k):
            k_hp, k_init, k_len, k_aug = jax.random.split(k, 4)
            task = group.task
            hp = task.sample_hparams(k_hp) if group.sample_hparams else task.default_hparams()
            pscale, lscale = self.augment.sample(k_aug)
            params = task.init(k_init, hp)
            if self.augment.active:
                params = jax.tree.map(lambda p: p / pscale, params)
            slots = TaskSlots(hp, jnp.zeros((), jnp.int32), self.schedule.sample(k_len), pscale, lscale)
            return slots, params

        return jax.vmap(one)(keys)

    def update_scales(self, group: Group) -> Any | None:
        """The group's per-leaf muP update factors (float32 scalars), or None outside the muP mode.

        Shapes only: factors depend on the task's structure, not on its
        parameter values (so augmentation and hparams do not change them).
        """
        return update_scales_for_task(group.task, enabled=self.mup)

    def _init_branches(self, group: Group, meta_params, branch_meta, params, lengths) -> Branches:
        """Broadcast each task's params to its branches and init their optimizer states."""
        b = self.num_branches
        bparams = jax.tree.map(lambda p: jnp.repeat(p[:, None], b, axis=1), params)
        scales = self.update_scales(group)

        def per_branch(mp, p, n):
            return self.arch.init(mp, p, n, scales)

        if branch_meta is None:
            inner = jax.vmap(jax.vmap(per_branch, (None, 0, None)), (None, 0, 0))
            opt_state = inner(meta_params, bparams, lengths)
        else:
            opt_state = jax.vmap(jax.vmap(per_branch, (0, 0, None)), (0, 0, 0))(branch_meta, bparams, lengths)
        return Branches(params=bparams, opt_state=opt_state)

    # ------------------------------------------------------------------ unroll
    def unroll(
        self,
        meta_params: Any,
        branch_meta: tuple[Any, ...] | None,
        states: tuple[GroupState, ...],
        key: jax.Array,
        data: tuple[Any, ...],
    ) -> tuple[tuple[GroupState, ...], tuple[Trace, ...]]:
        """Advance every group by ``truncation_length`` inner steps (one scan).

        ``branch_meta``: per group, meta-parameters with leading axes (N, B)
        (e.g. theta +/- eps); ``None`` runs every branch with ``meta_params``.
        Returns the new states and, per group, a :class:`Trace`.
        """
        n_groups = len(self.groups)
        pre0 = tuple(jnp.ones((g.num_tasks,), bool) for g in self.groups)

        def body(carry, t):
            states, pre = carry
            kt = jax.random.fold_in(key, t)
            new_states, new_pre, traces = [], [], []
            for gi in range(n_groups):
                bm = None if branch_meta is None else branch_meta[gi]
                s, p, tr = self._group_step(gi, meta_params, bm, states[gi], pre[gi], jax.random.fold_in(kt, gi), data[gi])
                new_states.append(s)
                new_pre.append(p)
                traces.append(tr)
            return (tuple(new_states), tuple(new_pre)), tuple(traces)

        steps = jnp.arange(self.truncation_length, dtype=jnp.int32)
        (states, _), traces = jax.lax.scan(body, (tuple(states), pre0), steps)
        return states, traces

    def _group_step(self, gi, meta_params, branch_meta, state: GroupState, pre, key, data):
        group = self.groups[gi]
        task = group.task
        k_reset, k_batch = jax.random.split(key)
        need = state.slots.step >= state.slots.length

        def reset(st: GroupState) -> GroupState:
            slots, params = self._fresh_tasks(group, jax.random.split(k_reset, group.num_tasks))
            fresh = self._init_branches(group, meta_params, branch_meta, params, slots.length)
            pick = lambda new, old: jnp.where(need.reshape(need.shape + (1,) * (old.ndim - 1)), new, old)
            return GroupState(
                slots=jax.tree.map(pick, slots, st.slots), branches=jax.tree.map(pick, fresh, st.branches)
            )

        state = jax.lax.cond(jnp.any(need), reset, lambda st: st, state)
        pre = pre & ~need
        mp_axis = None if branch_meta is None else 0
        mp = meta_params if branch_meta is None else branch_meta

        def task_step(mp_n, slots: TaskSlots, br: Branches, k):
            hp = slots.hparams
            kb, kv = jax.random.split(k)
            vbatch = task.sample_batch(data, kv, "valid", hp) if self.meta_loss == "valid" else None
            scale = slots.param_scale if self.augment.active else None
            loss_scale = slots.loss_scale if self.augment.active else None

            def branch(mp_b, params, opt_state):
                def update(grads, state, p, loss):
                    return self.arch.update(mp_b, state, grads, p, loss)

                params, opt_state, raw = inner_step(task, data, update, params, opt_state, kb, hp, scale, loss_scale)
                if vbatch is not None:
                    real = params if scale is None else jax.tree.map(lambda x: x * scale, params)
                    raw = task.loss(real, vbatch, hp)
                return params, opt_state, raw

            params, opt_state, raw = jax.vmap(branch, (mp_axis, 0, 0))(mp_n, br.params, br.opt_state)
            return Branches(params, opt_state), raw

        keys = jax.random.split(k_batch, group.num_tasks)
        branches, raw = jax.vmap(task_step, (mp_axis, 0, 0, 0))(mp, state.slots, state.branches, keys)
        finite = jnp.isfinite(raw)
        loss = self._meta_loss_terms(raw / task.loss_scale, finite)
        if self.progress_weight:
            loss = loss * self._progress_weights(state.slots)[:, None]
        # A task with a non-finite loss ends its episode now: it is reset next step.
        diverged = ~jnp.all(finite, axis=1)
        step = jnp.where(diverged, state.slots.length, state.slots.step + 1)
        new_state = GroupState(slots=state.slots.replace(step=step), branches=branches)
        return new_state, pre, Trace(loss=loss, finite=finite, pre=pre, resets=need)

    # ------------------------------------------------------------------ meta-loss
    def _meta_loss_terms(self, norm: jax.Array, finite: jax.Array) -> jax.Array:
        """Per-step meta-loss terms from losses normalized by the task's ``loss_scale``.

        Non-finite or huge losses count as ``loss_clip``. With ``log`` the term
        is ``log(loss + LOG_FLOOR)``: a raw mean is dominated by the first
        steps of an episode (losses of order 1), so it barely rewards driving
        a loss from 1e-3 to 1e-6; the log gives every halving of the loss the
        same weight, which is what final-loss comparisons against tuned Adam
        measure.
        """
        clipped = jnp.where(finite, jnp.minimum(norm, self.loss_clip), self.loss_clip)
        if self.loss_transform == "log":
            return jnp.log(jnp.maximum(clipped, 0.0) + LOG_FLOOR)
        return clipped

    def _progress_weights(self, slots: TaskSlots) -> jax.Array:
        """(N,) weight of this step's meta-loss term: ``(1 + a f) / (1 + a / 2)``.

        ``f = step / length`` is how far each task is through its episode and
        ``a`` is ``progress_weight``. Evaluations compare *final* losses, but a
        plain mean over an episode weights its first steps, where every
        optimizer is far from converged, as much as its last: with ``a > 0`` the
        end of an episode counts up to ``1 + a`` times its start while the
        weights still average 1 over an episode (so meta-learning rates and
        logged meta-losses keep their scale).
        """
        a = self.progress_weight
        frac = slots.step.astype(jnp.float32) / jnp.maximum(slots.length, 1).astype(jnp.float32)
        return (1.0 + a * frac) / (1.0 + 0.5 * a)

    def step_weights(self) -> jax.Array:
        """(K,) weights turning per-step losses into one truncation meta-loss."""
        k = self.truncation_length
        if self.meta_loss == "last":
            return jnp.zeros((k,), jnp.float32).at[-1].set(1.0)
        return jnp.full((k,), 1.0 / k, jnp.float32)
