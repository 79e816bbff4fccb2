"""``normed_fc``'s update through three fused CPU kernels (``normed_fc_cpu.cc``).

Why: on a model of millions of parameters the optimizer, not the model, sets
the step time, and XLA:CPU runs ``normed_fc``'s rule as a dozen loops per
tensor: each output (the update and five accumulators) in its own loop that
re-reads the inputs and re-evaluates the per-parameter network, plus one pass
per reduction. The rule itself needs three passes, because its per-tensor
statistics depend on each other: ``rms(a)`` and ``rms(p)`` feed the network,
the network's output ``d`` is normalized by ``rms(d)``, and the guard must know
that every tensor's step is finite before any accumulator is written. The
kernels do exactly those three passes, each reading every array once:

1. ``stats``: ``sum a^2``, ``sum p^2``, ``max |g|`` and the distance terms;
2. ``dnorm``: ``sum d^2``;
3. ``apply``: the update and the new accumulators, or the old ones when the
   step is skipped.

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

from lopt import distance
from lopt import features as ft
from lopt.architectures.normed_fc import LOSS_DECAY, TINY_RMS, NormedFC
from lopt.base import MAX_GRADIENT, OptState, tree_all_finite
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


def _rms_from_sum(total: jax.Array, n: int) -> jax.Array:
    """``_rms`` of a tensor of ``n`` elements from the sum of its squares."""
    return jnp.sqrt(total / n + TINY_RMS)


def update(arch: NormedFC, meta_params: Any, state: OptState, grads: Any, params: Any, loss: Any = None):
    """:meth:`NormedFC.update` (the base class's guarded step) through the kernels."""
    build.load(NAME)
    arch.check_update_inputs(meta_params, state, grads, params)
    mp = meta_params
    loss = jnp.zeros((), jnp.float32) if loss is None else jnp.asarray(loss, jnp.float32)
    k, h, adapts = len(arch.momentum_decays), arch.hidden, arch.adapts_distance
    sc = arch.step_scalars(mp, state, loss)
    inner = state.inner

    g_leaves, treedef = jax.tree.flatten(jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads))
    flat = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
    p_orig = flat(params)
    p_leaves = [jnp.asarray(p, jnp.float32) for p in p_orig]
    s_leaves, v_leaves = flat(state.scales), flat(inner["v"])
    m_leaves = [flat(m) for m in inner["m"]]  # [momentum][leaf]
    moved_leaves = flat(inner["moved"]) if adapts else [None] * len(g_leaves)
    acc_leaves = flat(inner["s"]) if adapts else [None] * len(g_leaves)

    head = jnp.concatenate([sc.beta_m, sc.beta_v[None], sc.corr_m, sc.corr_v[None],
                            jnp.asarray([arch.eps, ft.TINY, arch.distance_decay], jnp.float32),
                            (sc.weight if adapts else jnp.zeros((), jnp.float32))[None],
                            mp["layer1"]["w"].ravel()])
    tail = jnp.concatenate([mp["layer2"]["w"].ravel(), mp["layer2"]["b"], mp["out"]])
    zeros_h, zero = jnp.zeros((h,), jnp.float32), jnp.zeros((1,), jnp.float32)

    def consts(bias1=zeros_h, centre=zero[0], scale=zero[0], decay=zero[0], ok=zero[0]):
        return jnp.concatenate([head, bias1, tail, jnp.stack([centre, scale, decay, ok])])

    empty = jnp.zeros((0,), jnp.float32)
    attrs = dict(k=k, h=h)

    # Pass 1: per-tensor statistics before the network.
    stats = []
    for i, (g, p, v) in enumerate(zip(g_leaves, p_leaves, v_leaves)):
        if not g.size:
            stats.append(None)
            continue
        moved = moved_leaves[i] if adapts else empty
        acc = acc_leaves[i] if adapts else empty
        out = _call("lopt_normed_fc_stats", jax.ShapeDtypeStruct((5,), jnp.float32), g, p,
                    m_leaves[0][i], v, moved, acc, consts(), adapts=adapts, **attrs)
        stats.append(out)

    # Pass 2: sum d^2 once the tensor features are known; then each tensor's scale and decay.
    finite, terms = [], []
    for i, (g, p, v) in enumerate(zip(g_leaves, p_leaves, v_leaves)):
        if stats[i] is None:
            terms.append(None)
            continue
        n = g.size
        rms_a, rms_p = _rms_from_sum(stats[i][0], n), _rms_from_sum(stats[i][1], n)
        bias1, log_mult, centre = arch.tensor_terms(mp, sc, rms_a, rms_p)
        c = consts(bias1, centre)
        sd = _call("lopt_normed_fc_dnorm", jax.ShapeDtypeStruct((1,), jnp.float32), g, v, c,
                   *(m[i] for m in m_leaves), **attrs)
        rms_d = _rms_from_sum(sd[0], n)
        scale, decay, leaf_finite = arch.leaf_scales(sc, s_leaves[i], log_mult, rms_a, rms_d, rms_p, p.ndim)
        finite.append(leaf_finite)
        terms.append((bias1, centre, scale, decay))

    # The guard, as the base class decides it (NormedFC.moment_keys: the moments are checked through |g|).
    present = [st for st in stats if st is not None]
    zero_s = jnp.zeros((), jnp.float32)
    loss_mean = ft.ema(sc.loss_mean, loss, LOSS_DECAY)
    others = {"loss_mean": loss_mean}
    oks = list(finite)
    if adapts:
        dot = sum([st[3] for st in present], zero_s)
        l1 = sum([st[4] for st in present], zero_s)
        d, num, d_finite = distance.next_estimate(inner["d"], inner["num"], dot, l1, arch.distance_decay, sc.weight)
        oks.append(d_finite)
        others.update(d=d, num=num)
    ok = jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)
    max_g = jnp.max(jnp.stack([st[2] for st in present])) if present else zero_s
    ok = ok & (max_g <= MAX_GRADIENT) & tree_all_finite(others)

    # Pass 3: the update and the accumulators (kept as they were when the step is skipped).
    u_out, v_out, moved_out, acc_out = [], [], [], []
    m_out = [[] for _ in range(k)]
    for i, (g, p, v) in enumerate(zip(g_leaves, p_leaves, v_leaves)):
        if terms[i] is None:  # an empty tensor: nothing to update
            u_out.append(jnp.zeros(p.shape, jnp.float32))
            v_out.append(v)
            moved_out.append(moved_leaves[i])
            acc_out.append(acc_leaves[i])
            for j in range(k):
                m_out[j].append(m_leaves[j][i])
            continue
        bias1, centre, scale, decay = terms[i]
        c = consts(bias1, centre, scale, decay, ok.astype(jnp.float32))
        moved = moved_leaves[i] if adapts else empty
        acc = acc_leaves[i] if adapts else empty
        shapes = [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * 2 + [jax.ShapeDtypeStruct(moved.shape, jnp.float32)] * 2
        shapes += [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * k
        aliases = {2: 1, **{6 + j: 4 + j for j in range(k)}}
        if adapts:
            aliases.update({3: 2, 4: 3})
        outs = _call("lopt_normed_fc_apply", shapes, g, p, v, moved, acc,
                     c, *(m[i] for m in m_leaves), aliases=aliases, adapts=adapts, **attrs)
        u_out.append(outs[0])
        v_out.append(outs[1])
        moved_out.append(outs[2] if adapts else None)
        acc_out.append(outs[3] if adapts else None)
        for j in range(k):
            m_out[j].append(outs[4 + j])

    unflat = lambda leaves: jax.tree.unflatten(treedef, leaves)  # noqa: E731
    new_inner = {
        "m": tuple(unflat(m) for m in m_out),
        "v": unflat(v_out),
        "loss_mean": jnp.where(ok, loss_mean, inner["loss_mean"]),
    }
    if adapts:
        new_inner.update(moved=unflat(moved_out), s=unflat(acc_out), d=jnp.where(ok, others["d"], inner["d"]),
                         num=jnp.where(ok, others["num"], inner["num"]))
    updates = unflat([u.astype(jnp.asarray(p).dtype) for u, p in zip(u_out, p_orig)])
    new_state = state._replace(
        step=state.step + ok.astype(jnp.int32),
        skipped=state.skipped + (~ok).astype(jnp.int32),
        inner=new_inner,
    )
    return updates, new_state
