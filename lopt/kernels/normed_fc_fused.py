"""``normed_fc``'s update around a fused per-tensor kernel: the part every kernel shares.

A fused kernel replaces only the loops over each tensor's elements. Everything
around them is this module's JAX code, the same for the CPU kernels
(:mod:`lopt.kernels.normed_fc_cpu`, C++ through XLA's FFI) and the GPU kernel
(:mod:`lopt.kernels.normed_fc_pallas`, Pallas): the step's inputs as per-leaf
lists, the per-tensor constants vector both kinds of kernel read, the guard, and
the one-pass step that the previous step's statistics allow. The scalars
(:meth:`NormedFC.step_scalars`, :meth:`NormedFC.tensor_terms`,
:meth:`NormedFC.leaf_scales`) are the XLA implementation's own code, so a kernel
can differ from it only in the order its sums are taken.

The constants vector of one tensor holds, in this order (``K`` momenta, ``H``
hidden units, ``F = 1 + K`` features): the momentum decays (``K``), the second
moment's decay, the momenta's and the second moment's bias corrections (``K``
and 1), ``eps``, the features' floor, the D estimate's decay and its weight,
the network's first layer (``F x H``, feature-major) and its bias (``H``; it
depends on the tensor), the second layer (``H x H``) and its bias (``H``), the
output weights (``H``), then the network's output at zero features, the step's
scale, the weight decay and whether the step is applied (1) or skipped (0).
:func:`layout` gives the offsets; ``normed_fc_cpu.cc`` has the same table.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lopt import features as ft
from lopt.architectures.normed_fc import NormedFC
from lopt.architectures.normed_fc_scalars import LOSS_DECAY, next_distance, next_stats, rms_from_sum
from lopt.base import OptState, gradients_bounded, tree_all_finite


def layout(k: int, h: int) -> dict[str, int]:
    """Offsets into one tensor's constants vector for ``k`` momenta and ``h`` hidden units (``"size"``: its length)."""
    f = 1 + k
    at = {"betas": 0, "beta_v": k, "corr": k + 1, "corr_v": 2 * k + 1, "eps": 2 * k + 2, "tiny": 2 * k + 3,
          "dist_decay": 2 * k + 4, "weight": 2 * k + 5, "w1": 2 * k + 6}
    at["bias1"] = at["w1"] + f * h
    at["w2"] = at["bias1"] + h
    at["b2"] = at["w2"] + h * h
    at["out"] = at["b2"] + h
    at["c0"] = at["out"] + h
    at.update(scale=at["c0"] + 1, decay=at["c0"] + 2, ok=at["c0"] + 3, size=at["c0"] + 4)
    return at


class Step:
    """One step's inputs as per-leaf lists, its scalars and the constants vectors' shared parts."""

    def __init__(self, arch: NormedFC, mp: Any, state: OptState, grads: Any, params: Any, loss: Any):
        arch.check_update_inputs(mp, state, grads, params)
        loss = jnp.zeros((), jnp.float32) if loss is None else jnp.asarray(loss, jnp.float32)
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
        self.rms0 = flat(inner["rms0"]) if arch.reads_initial_rms else none
        self.head = jnp.concatenate([sc.beta_m, sc.beta_v[None], sc.corr_m, sc.corr_v[None],
                                     jnp.asarray([arch.eps, ft.TINY, arch.distance_decay], jnp.float32),
                                     (sc.weight if self.adapts else jnp.zeros((), jnp.float32))[None],
                                     mp["layer1"]["w"].ravel()])
        self.tail = jnp.concatenate([mp["layer2"]["w"].ravel(), mp["layer2"]["b"], mp["out"]])
        self.loss_mean = ft.ema(sc.loss_mean, loss, LOSS_DECAY)

    def consts(self, bias1=None, centre=None, scale=None, decay=None, ok=None) -> jax.Array:
        """One tensor's constants vector (:func:`layout`); what is not given is 0."""
        zero = jnp.zeros((), jnp.float32)
        bias1 = jnp.zeros((self.h,), jnp.float32) if bias1 is None else bias1
        scalars = [zero if x is None else x for x in (centre, scale, decay, ok)]
        return jnp.concatenate([self.head, bias1, self.tail, jnp.stack(scalars)])

    def leaf_arrays(self, i: int):
        """``(moved, s)`` of leaf ``i`` as the kernels take them (empty without a distance estimate)."""
        empty = jnp.zeros((0,), jnp.float32)
        return (self.moved[i], self.acc[i]) if self.adapts else (empty, empty)

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
        if self.arch.reads_initial_rms:
            new_inner["rms0"] = inner["rms0"]
        updates = unflat([u.astype(jnp.asarray(p).dtype) for u, p in zip(u_out, self.p_orig)])
        return updates, state._replace(step=state.step + ok.astype(jnp.int32),
                                       skipped=state.skipped + (~ok).astype(jnp.int32), inner=new_inner)

    def empty_leaf(self, i: int):
        """An empty tensor's outputs: no update, accumulators as they were."""
        return (jnp.zeros(self.p[i].shape, jnp.float32), self.v[i], self.moved[i], self.acc[i],
                [m[i] for m in self.m])

    def leaf_outputs(self, outs):
        """One leaf's kernel results ``(u, v, moved, s, m_1..m_K, ...)`` as ``(u, v, moved, s, [ms])``."""
        return (outs[0], outs[1], outs[2] if self.adapts else None, outs[3] if self.adapts else None,
                [outs[4 + j] for j in range(self.k)])

    def collect(self, outs_per_leaf):
        """Per-leaf ``(u, v, moved, s, [ms])`` regrouped into lists by output."""
        u, v, moved, acc = ([o[j] for o in outs_per_leaf] for j in range(4))
        ms = [[o[4][j] for o in outs_per_leaf] for j in range(self.k)]
        return u, v, moved, acc, ms


# A per-tensor kernel of the one-pass step: (step, leaf index, constants vector) -> the leaf's outputs
# (u, v, moved, s, m_1..m_K) followed by its five sums: sum a^2, sum p^2, sum d^2, -<g, moved>, ||s_new||_1.
LeafStep = Callable[[Step, int, jax.Array], tuple]


def one_pass(step: Step, leaf_step: LeafStep):
    """The previous step's tensor statistics (``tensor_stats="previous"``): one kernel call per tensor.

    The guard is decided before the pass, from what is known then (see
    :mod:`lopt.architectures.normed_fc_scalars`): every gradient bounded, every
    tensor's scalars finite. The pass returns the sums of this step's
    statistics and distance terms, stored for the next step where finite.
    """
    arch, mp, sc = step.arch, step.mp, step.sc
    terms, oks = [], [gradients_bounded(step.g), tree_all_finite({"loss_mean": step.loss_mean})]
    for i, g in enumerate(step.g):
        if not g.size:
            terms.append(None)
            continue
        rms_a, rms_p, rms_d = step.stats[i][0], step.stats[i][1], step.stats[i][2]
        bias1, log_mult, centre = arch.tensor_terms(mp, sc, rms_a, rms_p, step.p[i].ndim, step.rms0[i])
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
        res = leaf_step(step, i, step.consts(*terms[i], ok.astype(jnp.float32)))
        outs.append(step.leaf_outputs(res))
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
        d, num, _ = next_distance(arch.lagged, step.state.inner, dot, l1, arch.distance_decay, sc.weight)
    return step.finish(ok, *step.collect(outs), d=d, num=num, stats=new_stats)
