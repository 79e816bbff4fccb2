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
the step scale, the D estimate and the guard) is the JAX code of
:mod:`lopt.kernels.normed_fc_fused`, which the GPU kernel shares and which calls
the XLA implementation's own scalar code. The results equal the XLA
implementation's to float32 rounding, not bit for bit (the kernels sum in
another order), so ``kernel="auto"`` uses them only where the XLA program is
slow (see :mod:`lopt.kernels`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopt.architectures.normed_fc import NormedFC
from lopt.architectures.normed_fc_scalars import next_distance, rms_from_sum
from lopt.base import MAX_GRADIENT, OptState, tree_all_finite
from lopt.kernels import build
from lopt.kernels.normed_fc_fused import Step, one_pass

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
    step = Step(arch, meta_params, state, grads, params, loss)
    return one_pass(step, _step_kernel) if arch.lagged else _three_passes(step)


def _apply(step: Step, i: int, consts: jax.Array, sums: bool):
    """The ``apply`` kernel on leaf ``i`` (or ``step``, which also returns the five sums)."""
    p, k = step.p[i], step.k
    moved, acc = step.leaf_arrays(i)
    shapes = [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * 2 + [jax.ShapeDtypeStruct(moved.shape, jnp.float32)] * 2
    shapes += [jax.ShapeDtypeStruct(p.shape, jnp.float32)] * k
    if sums:
        shapes.append(jax.ShapeDtypeStruct((5,), jnp.float32))
    aliases = {2: 1, **{6 + j: 4 + j for j in range(k)}}
    if step.adapts:
        aliases.update({3: 2, 4: 3})
    target = "lopt_normed_fc_step" if sums else "lopt_normed_fc_apply"
    return _call(target, shapes, step.g[i], p, step.v[i], moved, acc, consts, *(m[i] for m in step.m),
                 aliases=aliases, adapts=step.adapts, k=k, h=step.h)


def _step_kernel(step: Step, i: int, consts: jax.Array):
    """:data:`normed_fc_fused.LeafStep` through the ``step`` kernel."""
    return _apply(step, i, consts, sums=True)


def _three_passes(step: Step):
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
        bias1, log_mult, centre = arch.tensor_terms(mp, sc, rms_a, rms_p, step.p[i].ndim, step.rms0[i])
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
        consts = step.consts(bias1, centre, scale, decay, ok.astype(jnp.float32))
        outs.append(step.leaf_outputs(_apply(step, i, consts, sums=False)))
    return step.finish(ok, *step.collect(outs), d=d, num=num)
