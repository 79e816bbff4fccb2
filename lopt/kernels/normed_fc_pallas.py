"""``normed_fc``'s one-pass update as a Pallas kernel, for GPUs.

Why: on one GPU, XLA runs the shipped ``default``'s update at about five times
Adam's cost (BENCHMARKS.md, "On one GPU"): it does not fuse the per-tensor
sums with the elementwise update, so every tensor's data crosses memory several
times. With the previous step's tensor statistics (``tensor_stats="previous"``,
the shipped ``default`` since v13) nothing in a step waits for a sum over the
same step, so the update is one pass: this kernel reads each element's
gradient, parameter and accumulators once, writes the update and the new
accumulators (in place), and leaves one row of partial sums per block of
elements; XLA adds the rows (a few thousand floats). The same arithmetic as
the CPU kernel's ``step`` (``normed_fc_cpu.cc``) and the XLA implementation;
everything around the pass is :mod:`lopt.kernels.normed_fc_fused`.

The kernel is written for Pallas's Triton backend (1-D blocks of a power of 2,
masked loads and stores at a tensor's end, no atomics: the partial sums are
added in a fixed order, so results do not depend on scheduling). Passing
Triton's compiler parameters selects that backend: Pallas's default on GPUs
is now Mosaic GPU, whose layout inference rejects the kernel's index vector.
On other platforms it runs under Pallas's interpreter, slowly: that is how the
tests check it against the XLA implementation on CPU, and they also lower it
for CUDA through Triton there (which needs no GPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # Pallas's Triton load/store with masks: jax >= 0.8 (the package supports older JAX through XLA)
    from jax.experimental.pallas import triton as plt
except ImportError:  # pragma: no cover - depends on the installed JAX
    plt = None

from lopt.architectures.normed_fc import NormedFC
from lopt.base import OptState
from lopt.kernels.normed_fc_fused import Step, layout, one_pass

BLOCK = 1024  # elements per program (a power of 2, as Triton needs); smaller tensors get the next power of 2
MIN_BLOCK = 128
NUM_WARPS = 4  # Triton warps per program: 128 threads, 8 elements each
SUMS = 8  # columns of the partial-sum rows: the five sums, padded to a power of 2


def unsupported(arch: Any) -> str | None:
    """Why the Pallas kernel cannot run ``arch`` (None: it can)."""
    if plt is None or not all(hasattr(plt, name) for name in ("load", "store", "CompilerParams")):
        return f"the Pallas kernel needs Pallas's Triton load and store (jax >= 0.8); this is jax {jax.__version__}"
    if not isinstance(arch, NormedFC):
        return f"the Pallas kernel implements normed_fc only, not {getattr(arch, 'arch', type(arch).__name__)!r}"
    if arch.brakes:
        return "the Pallas kernel does not implement normed_fc's brake (brake_rate > 0)"
    if not arch.lagged:
        return ("the Pallas kernel is the one-pass update, which needs the previous step's tensor statistics "
                "(normed_fc tensor_stats='previous', as the shipped default since v13); this normed_fc uses "
                "the current step's")
    return None


def interpreted() -> bool:
    """Whether the kernel runs under Pallas's interpreter here (every platform but GPU)."""
    return jax.default_backend() != "gpu"


def update(arch: NormedFC, meta_params: Any, state: OptState, grads: Any, params: Any, loss: Any = None):
    """:meth:`NormedFC.update` (the base class's guarded step) through the Pallas kernel."""
    return one_pass(Step(arch, meta_params, state, grads, params, loss), _leaf_step)


def _block(n: int) -> int:
    return min(BLOCK, max(MIN_BLOCK, pl.next_power_of_2(n)))


def _leaf_step(step: Step, i: int, consts: jax.Array):
    """:data:`normed_fc_fused.LeafStep` for leaf ``i``: one ``pallas_call`` over its flattened elements."""
    p = step.p[i]
    shape, n, k, adapts = p.shape, p.size, step.k, step.adapts
    block = _block(n)
    grid = pl.cdiv(n, block)
    width = pl.next_power_of_2(int(consts.shape[0]))
    consts = jnp.pad(consts, (0, width - consts.shape[0]))

    flat = lambda x: x.reshape(n)  # noqa: E731
    arrays = [step.g[i], p, step.v[i]] + ([step.moved[i], step.acc[i]] if adapts else []) + [m[i] for m in step.m]
    num_state = len(arrays) - 2  # v, (moved, s), m_1..m_K: updated in place
    elems = pl.BlockSpec((block,), lambda b: (b,))
    out_shapes = [jax.ShapeDtypeStruct((n,), jnp.float32)] * (1 + num_state)
    out_shapes.append(jax.ShapeDtypeStruct((grid, SUMS), jnp.float32))
    outs = pl.pallas_call(
        _kernel(k, step.h, adapts, n, block),
        grid=(grid,),
        in_specs=[pl.BlockSpec((width,), lambda b: (0,))] + [elems] * len(arrays),
        out_specs=[elems] * (1 + num_state) + [pl.BlockSpec((1, SUMS), lambda b: (b, 0))],
        out_shape=out_shapes,
        input_output_aliases={3 + j: 1 + j for j in range(num_state)},
        interpret=interpreted(),
        compiler_params=plt.CompilerParams(num_warps=NUM_WARPS),  # selects Triton (module docstring)
        name="lopt_normed_fc_pallas_step",
    )(consts, *(flat(x) for x in arrays))
    u, new = outs[0].reshape(shape), [x.reshape(shape) for x in outs[1:-1]]
    sums = jnp.sum(outs[-1], axis=0)[:5]
    empty = jnp.zeros((0,), jnp.float32)
    moved, acc = (new[1], new[2]) if adapts else (empty, empty)
    return (u, new[0], moved, acc, *new[len(new) - k:], sums)


def _kernel(k: int, h: int, adapts: bool, n: int, block: int):
    """The kernel body for ``k`` momenta, ``h`` hidden units, a tensor of ``n`` elements in blocks of ``block``."""
    at, f = layout(k, h), 1 + k

    def kernel(c_ref, *refs):
        num_in = 3 + (2 if adapts else 0) + k
        ins, outs = refs[:num_in], refs[num_in:]
        g_ref, p_ref, v_ref = ins[:3]
        moved_ref, s_ref = ins[3:5] if adapts else (None, None)
        m_refs = ins[num_in - k:]
        u_out, v_out = outs[0], outs[1]
        moved_out, s_out = outs[2:4] if adapts else (None, None)
        m_outs = outs[2 + (2 if adapts else 0):-1]
        sums_out = outs[-1]

        c = lambda name, j=0: c_ref[at[name] + j]  # noqa: E731
        idx = pl.program_id(0) * block + jnp.arange(block)
        mask = idx < n
        load = lambda ref: plt.load(ref, mask=mask, other=0.0)  # noqa: E731
        store = lambda ref, x: plt.store(ref, x, mask=mask)  # noqa: E731

        g, p, v_old = load(g_ref), load(p_ref), load(v_ref)
        m_old = [load(r) for r in m_refs]
        m = [c("betas", j) * m_old[j] + (1.0 - c("betas", j)) * g for j in range(k)]
        beta_v = c("beta_v")
        v = beta_v * v_old + (1.0 - beta_v) * (g * g)
        v_hat = v * c("corr_v")
        a = m[0] * c("corr", 0) / (jnp.sqrt(v_hat) + c("eps"))
        rs = 1.0 / jnp.sqrt(v_hat + c("tiny"))
        feats = [g * rs] + [m[j] * c("corr", j) * rs for j in range(k)]
        hidden = []
        for j in range(h):
            acc = c("bias1", j)
            for q in range(f):
                acc = acc + c("w1", q * h + j) * feats[q]
            hidden.append(jnp.maximum(acc, 0.0))
        net = jnp.zeros_like(g)
        for j in range(h):
            acc = c("b2", j)
            for q in range(h):
                acc = acc + c("w2", q * h + j) * hidden[q]
            net = net + c("out", j) * jnp.maximum(acc, 0.0)
        d = a + (net - c("c0"))
        up = -(c("scale") * d) - c("decay") * p

        ok = c("ok") != 0.0  # a skipped step: no update, every accumulator as it was
        store(u_out, jnp.where(ok, up, 0.0))
        store(v_out, jnp.where(ok, v, v_old))
        for j in range(k):
            store(m_outs[j], jnp.where(ok, m[j], m_old[j]))
        zero = jnp.zeros_like(g)
        g_moved, s_abs = zero, zero
        if adapts:
            moved, s = load(moved_ref), load(s_ref)
            s_new = c("dist_decay") * s + c("weight") * g
            store(moved_out, jnp.where(ok, moved + up, moved))
            store(s_out, jnp.where(ok, s_new, s))
            g_moved, s_abs = g * moved, jnp.abs(s_new)
        total = lambda x: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
        values = [total(a * a), total(p * p), total(d * d), -total(g_moved), total(s_abs)]
        column = jnp.arange(SUMS)[None, :]
        row = jnp.zeros((1, SUMS), jnp.float32)
        for j, x in enumerate(values):
            row = row + jnp.where(column == j, x, 0.0)
        sums_out[...] = row

    return kernel
