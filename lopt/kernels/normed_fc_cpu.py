"""``normed_fc``'s update through fused CPU kernels (``normed_fc_cpu.cc``).

Why: on a model of millions of parameters the optimizer, not the model, sets
the step time, and XLA:CPU runs ``normed_fc``'s rule as a dozen loops per
tensor: each output (the update and five accumulators) in its own loop that
re-reads the inputs and re-evaluates the per-parameter network, plus one pass
per reduction. The kernels make as few passes as the rule allows, each reading
every array once.

* With this step's tensor statistics (``tensor_stats="current"``) the rule needs
  three, because its per-tensor statistics depend on each other: ``rms(a)``
  and ``rms(p)`` feed the network, the network's output ``d`` is normalized by
  ``rms(d)``, and the guard must know that every tensor's step is finite
  before any accumulator is written:

  1. ``stats``: ``sum a^2``, ``sum p^2``, ``max |g|`` and the distance terms;
  2. ``dnorm``: ``sum d^2``;
  3. ``apply``: the update and the new accumulators, or the old ones when the
     step is skipped.

* With the previous step's (``tensor_stats="previous"``) it needs one: ``step``
  is ``apply`` that also sums this step's statistics and distance terms for the
  next step, and the guard is decided before it from the gradients' bound and
  the stored scalars (:mod:`lopt.architectures.normed_fc_scalars`).

Everything between the passes (the step's scalars, the per-tensor features,
the step scale, the D estimate and the guard) is the same JAX code the XLA
implementation runs (:meth:`NormedFC.step_scalars`, :meth:`NormedFC.tensor_terms`,
:meth:`NormedFC.leaf_scales`). The results equal the XLA implementation's to
float32 rounding, not bit for bit (the kernels sum in another order), so
``kernel="auto"`` uses them only where the XLA program is slow (see
:mod:`lopt.kernels`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopt import features as ft
from lopt.architectures.normed_fc import NormedFC
from lopt.architectures.normed_fc_scalars import LOSS_DECAY, next_distance, next_stats, rms_from_sum
from lopt.base import MAX_GRADIENT, OptState, gradients_bounded, tree_all_finite
from lopt.kernels import build

NAME = "normed_fc_cpu"
MOMENTA = (1, 2, 3)  # numbers of momenta the kernels are compiled for
HIDDEN = (2, 4, 8)  # hidden widths the kernels are compiled for


def unsupported(arch: Any) -> str | None:
    """Why the kernels cannot run ``arch`` (None: they can)."""
    if not isinstance(arch, NormedFC):
        return f"the fused CPU kernels implement normed_fc only, not {getattr(arch, 'arch', type(arch).__name__)!r}"
    if arch.brakes:
        return "the fused CPU kernels do not implement normed_fc's brake (brake_rate > 0)"
    if len(arch.momentum_decays) not in MOMENTA or arch.hidden not in HIDDEN:
        return (f"the fused CPU kernels are compiled for {MOMENTA} momenta and hidden widths {HIDDEN}; this "
                f"normed_fc has {len(arch.momentum_decays)} momenta and hidden {arch.hidden}")
    return None


def _call(target: str, results, *args, aliases=None, **attrs):
    """One FFI call; integer attributes go to the kernel as int64 (its signature)."""
    call = jax.ffi.ffi_call(target, results, vmap_method="sequential", input_output_aliases=aliases)
    return call(*args, **{name: np.int64(value) for name, value in attrs.items()})


def update(arch: NormedFC, meta_params: Any, state: OptState, grads: Any, params: Any, loss: Any = None):
    """:meth:`NormedFC.update` (the base class's guarded step) through the kernels."""
    build.load(NAME)
    arch.check_update_inputs(meta_params, state, grads, params)
    loss = jnp.zeros((), jnp.float32) if loss is None else jnp.asarray(loss, jnp.float32)
    step = _Step(arch, meta_params, state, grads, params, loss)
    return (_one_pass if arch.lagged else _three_passes)(step)


class _Step:
    """One step's inputs as per-leaf lists, its scalars and the kernels' constant vectors."""

    def __init__(self, arch: NormedFC, mp: Any, state: OptState, grads: Any, params: Any, loss: jax.Array):
        self.arch, self.mp, self.state, self.loss = arch, mp, state, loss
        self.k, self.h, self.adapts = len(arch.momentum_decays), arch.hidden, arch.adapts_distance
        self.sc = sc = arch.step_scalars(mp, state, loss)
        inner = state.inner
        g_leaves, self.treedef = jax.tree.flatten(jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads))
        flat = self.treedef.flatten_up_to
        self.g = g_leaves
        self.p_orig = flat(params)
        self.p = [jnp.asarray(p, jnp.float32) for p in self.p_orig]
        self.scales, self.v = flat(state.scales), flat(inner["v"])
        self.m = [flat(m) for m in inner["m"]]  # [momentum][leaf]
        none = [None] * len(g_leaves)
        self.moved = flat(inner["moved"]) if self.adapts else none
        self.acc = flat(inner["s"]) if self.adapts else none
        self.stats = flat(inner["stats"]) if arch.lagged else none
        self.head = jnp.concatenate([sc.beta_m, sc.beta_v[None], sc.corr_m, sc.corr_v[None],
                                     jnp.asarray([arch.eps, ft.TINY, arch.distance_decay], jnp.float32),
                                     (sc.weight if self.adapts else jnp.zeros((), jnp.float32))[None],
                                     mp["layer1"]["w"].ravel()])
        self.tail = jnp.concatenate([mp["layer2"]["w"].ravel(), mp["layer2"]["b"], mp["out"]])
        self.loss_mean = ft.ema(sc.loss_mean, loss, LOSS_DECAY)

    def consts(self, bias1=None, centre=None, scale=None, decay=None, ok=None) -> jax.Array:
        zero = jnp.zeros((), jnp.float32)
        bias1 = jnp.zeros((self.h,), jnp.float32) if bias1 is None else bias1
        scalars = [zero if x is None else x for x in (centre, scale, decay, ok)]
        return jnp.concatenate([self.head, bias1, self.tail, jnp.stack(scalars)])

    def leaf_arrays(self, i: int):
        """``(moved, s)`` of leaf ``i`` as the kernels take them (empty without a distance estimate)."""
        empty = jnp.zeros((0,), jnp.float32)
        return (self.moved[i], self.acc[i]) if self.adapts else (empty, empty)

    def apply(self, i: int, consts: jax.Array, sums: bool):
        """The ``apply`` kernel on leaf ``i`` (or ``step``, which also returns the five sums)."""
        p, k = self.p[i], self.k
        moved, acc = self.leaf_arrays(i)
        shapes = [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * 2 + [jax.ShapeDtypeStruct(moved.shape, jnp.float32)] * 2
        shapes += [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * k
        if sums:
            shapes.append(jax.ShapeDtypeStruct((5,), jnp.float32))
        aliases = {2: 1, **{6 + j: 4 + j for j in range(k)}}
        if self.adapts:
            aliases.update({3: 2, 4: 3})
        target = "lopt_normed_fc_step" if sums else "lopt_normed_fc_apply"
        return _call(target, shapes, self.g[i], p, self.v[i], moved, acc, consts, *(m[i] for m in self.m),
                     aliases=aliases, adapts=self.adapts, k=k, h=self.h)

    def finish(self, ok, u_out, v_out, moved_out, acc_out, m_out, d=None, num=None, stats=None):
        """Updates and the new state from per-leaf outputs (the scalars kept as they were when skipped)."""
        inner, state = self.state.inner, self.state
        unflat = lambda leaves: jax.tree.unflatten(self.treedef, leaves)  # noqa: E731
        new_inner = {
            "m": tuple(unflat(m) for m in m_out),
            "v": unflat(v_out),
            "loss_mean": jnp.where(ok, self.loss_mean, inner["loss_mean"]),
        }
        if self.adapts:
            new_inner.update(moved=unflat(moved_out), s=unflat(acc_out), d=jnp.where(ok, d, inner["d"]),
                             num=jnp.where(ok, num, inner["num"]))
        if stats is not None:
            new_inner["stats"] = unflat([jnp.where(ok, new, old) for new, old in zip(stats, self.stats)])
        updates = unflat([u.astype(jnp.asarray(p).dtype) for u, p in zip(u_out, self.p_orig)])
        return updates, state._replace(step=state.step + ok.astype(jnp.int32),
                                       skipped=state.skipped + (~ok).astype(jnp.int32), inner=new_inner)

    def empty_leaf(self, i: int):
        """An empty tensor's outputs: no update, accumulators as they were."""
        return (jnp.zeros(self.p[i].shape, jnp.float32), self.v[i], self.moved[i], self.acc[i],
                [m[i] for m in self.m])


def _collect(step: _Step, outs_per_leaf):
    """Per-leaf kernel outputs ``(u, v, moved, s, ms...)`` regrouped into lists by output."""
    u, v, moved, acc = ([o[j] for o in outs_per_leaf] for j in range(4))
    ms = [[o[4][j] for o in outs_per_leaf] for j in range(step.k)]
    return u, v, moved, acc, ms


def _leaf_outputs(step: _Step, outs):
    """One leaf's kernel results as ``(u, v, moved, s, [ms])``."""
    return (outs[0], outs[1], outs[2] if step.adapts else None, outs[3] if step.adapts else None,
            [outs[4 + j] for j in range(step.k)])


def _three_passes(step: _Step):
    """This step's tensor statistics (``tensor_stats="current"``): ``stats``, ``dnorm``, ``apply``."""
    arch, mp, sc, k, h = step.arch, step.mp, step.sc, step.k, step.h
    inner = step.state.inner

    # Pass 1: per-tensor statistics before the network.
    stats = []
    for i, g in enumerate(step.g):
        if not g.size:
            stats.append(None)
            continue
        moved, acc = step.leaf_arrays(i)
        stats.append(_call("lopt_normed_fc_stats", jax.ShapeDtypeStruct((5,), jnp.float32), g, step.p[i],
                           step.m[0][i], step.v[i], moved, acc, step.consts(), adapts=step.adapts, k=k, h=h))

    # Pass 2: sum d^2 once the tensor features are known; then each tensor's scale and decay.
    finite, terms = [], []
    for i, g in enumerate(step.g):
        if stats[i] is None:
            terms.append(None)
            continue
        n = g.size
        rms_a, rms_p = rms_from_sum(stats[i][0], n), rms_from_sum(stats[i][1], n)
        bias1, log_mult, centre = arch.tensor_terms(mp, sc, rms_a, rms_p)
        sd = _call("lopt_normed_fc_dnorm", jax.ShapeDtypeStruct((1,), jnp.float32), g, step.v[i],
                   step.consts(bias1, centre), *(m[i] for m in step.m), k=k, h=h)
        rms_d = rms_from_sum(sd[0], n)
        scale, decay, leaf_finite = arch.leaf_scales(sc, step.scales[i], log_mult, rms_a, rms_d, rms_p,
                                                     step.p[i].ndim)
        finite.append(leaf_finite)
        terms.append((bias1, centre, scale, decay))

    # The guard, as the base class decides it (NormedFC.moment_keys: the moments are checked through |g|).
    present = [st for st in stats if st is not None]
    zero = jnp.zeros((), jnp.float32)
    others = {"loss_mean": step.loss_mean}
    oks = list(finite)
    d = num = None
    if step.adapts:
        dot = sum([st[3] for st in present], zero)
        l1 = sum([st[4] for st in present], zero)
        d, num, d_finite = next_distance(arch.lagged, inner, dot, l1, arch.distance_decay, sc.weight)
        oks.append(d_finite)
        others.update(d=d, num=num)
    ok = jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)
    max_g = jnp.max(jnp.stack([st[2] for st in present])) if present else zero
    ok = ok & (max_g <= MAX_GRADIENT) & tree_all_finite(others)

    # Pass 3: the update and the accumulators (kept as they were when the step is skipped).
    outs = []
    for i in range(len(step.g)):
        if terms[i] is None:
            outs.append(step.empty_leaf(i))
            continue
        bias1, centre, scale, decay = terms[i]
        outs.append(_leaf_outputs(step, step.apply(i, step.consts(bias1, centre, scale, decay,
                                                                  ok.astype(jnp.float32)), sums=False)))
    return step.finish(ok, *_collect(step, outs), d=d, num=num)


def _one_pass(step: _Step):
    """The previous step's tensor statistics (``tensor_stats="previous"``): one ``step`` kernel per tensor.

    The guard is decided before the pass, from what is known then (see
    :mod:`lopt.architectures.normed_fc_scalars`): every gradient bounded, every
    tensor's scalars finite. The pass returns the sums of this step's
    statistics and distance terms, stored for the next step where finite.
    """
    arch, mp, sc = step.arch, step.mp, step.sc
    inner = step.state.inner
    terms, oks = [], [gradients_bounded(step.g), tree_all_finite({"loss_mean": step.loss_mean})]
    for i, g in enumerate(step.g):
        if not g.size:
            terms.append(None)
            continue
        rms_a, rms_p, rms_d = step.stats[i][0], step.stats[i][1], step.stats[i][2]
        bias1, log_mult, centre = arch.tensor_terms(mp, sc, rms_a, rms_p)
        scale, decay, leaf_finite = arch.leaf_scales(sc, step.scales[i], log_mult, rms_a, rms_d, rms_p,
                                                     step.p[i].ndim)
        oks.append(leaf_finite)
        terms.append((bias1, centre, scale, decay))
    ok = jnp.all(jnp.stack(oks))

    outs, sums, new_stats = [], [], []
    for i, g in enumerate(step.g):
        if terms[i] is None:
            outs.append(step.empty_leaf(i))
            new_stats.append(step.stats[i])
            continue
        res = step.apply(i, step.consts(*terms[i], ok.astype(jnp.float32)), sums=True)
        outs.append(_leaf_outputs(step, res))
        total = res[-1]
        sums.append(total)
        n = g.size
        new_stats.append(next_stats(rms_from_sum(total[0], n), rms_from_sum(total[1], n),
                                    rms_from_sum(total[2], n), step.stats[i]))
    d = num = None
    if step.adapts:
        zero = jnp.zeros((), jnp.float32)
        dot = sum([t[3] for t in sums], zero)
        l1 = sum([t[4] for t in sums], zero)
        d, num, _ = next_distance(arch.lagged, inner, dot, l1, arch.distance_decay, sc.weight)  # finite: True
    return step.finish(ok, *_collect(step, outs), d=d, num=num, stats=new_stats)
