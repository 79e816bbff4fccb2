"""Building blocks shared by the architectures: accumulators, features, tiny layers.

Everything here is elementwise or a reduction over one tensor, written so XLA
fuses it into a handful of loops per parameter tensor. That layout is the
point: a per-parameter network written as a ``(params x features) @
(features x hidden)`` matmul runs at a small fraction of this CPU's peak,
because the inner dimensions are tiny, while the same network written as
``sum_f w[f, h] * feature_f`` (scalars times whole tensors) becomes one fused
loop that reads each accumulator once. :func:`dense_elementwise` is that form.

All functions take and return float32 arrays and contain no Python branches
on traced values, so they work under ``jit``, ``vmap`` and ``lax.scan``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

# Added to squared gradients before they enter second-moment accumulators, so
# an all-zero gradient gives a tiny positive moment rather than 0 and 1/sqrt(v)
# stays finite (a zero gradient then gives a zero preconditioned feature).
TINY = 1e-30


def logit(p: float) -> float:
    """Inverse sigmoid, used to store decays in (0, 1) as unconstrained reals."""
    import math

    return math.log(p) - math.log1p(-p)


def zeros_like_param(p: Any, axis: int | None = None) -> jax.Array:
    """float32 zeros shaped like ``p`` (or like ``p`` reduced over ``axis``), with ``p``'s sharding.

    ``jnp.zeros(shape)`` has no input, so under ``jit`` it comes out
    replicated; ``zeros_like`` of the parameter (or of a reduction of it, for
    Adafactor's row and column moments) carries the parameter's sharding over
    a mesh into the optimizer state. The reduction is only traced for its
    type: XLA drops it.
    """
    p = jnp.asarray(p)
    return jnp.zeros_like(p if axis is None else jnp.sum(p, axis=axis), dtype=jnp.float32)


def ema(old: jax.Array, new: jax.Array, decay: jax.Array) -> jax.Array:
    """Exponential moving average ``decay * old + (1 - decay) * new``."""
    return decay * old + (1.0 - decay) * new


def guarded_ema(old: jax.Array, new: jax.Array, decay: jax.Array, ok: jax.Array) -> jax.Array:
    """``ema(old, new, decay)`` if ``ok``, else ``old`` exactly, in one loop that reads ``old`` and ``new``.

    The same value as :func:`ema` bit for bit when ``ok``. It is written so it
    is *not* the same expression as the ``ema`` the update already computed
    (the gradient goes through a select first): XLA would otherwise share the
    two, write the new average to memory once, and then make a second pass
    choosing between it and the old one.
    """
    return guarded(lambda o, n: ema(o, n, decay), old, new, ok)


def guarded(
    step: Callable[[jax.Array, jax.Array], jax.Array], old: jax.Array, new: jax.Array, ok: jax.Array
) -> jax.Array:
    """``step(old, new)`` if ``ok``, else ``old`` exactly: the masking behind every guarded accumulator.

    ``new`` is masked before ``step`` sees it, so a non-finite input cannot
    leak through (``0 * inf`` is NaN) and XLA cannot reuse the unguarded value
    computed elsewhere (see :func:`guarded_ema`).
    """
    return jnp.where(ok, step(old, jnp.where(ok, new, 0.0)), old)


def guarded_ema_tree(old: Any, new: Any, decay: jax.Array, ok: jax.Array) -> Any:
    """:func:`guarded_ema` leaf by leaf over two pytrees of one structure."""
    return jax.tree.map(lambda o, n: guarded_ema(o, n, decay, ok), old, new)


def bias_correction(decay: jax.Array, step: jax.Array) -> jax.Array:
    """``1 / (1 - decay**t)`` for the ``t = step + 1``-th update (Adam's correction).

    ``decay**t`` is computed as ``exp(t * log(decay))`` so a traced step and a
    learnable decay both work.
    """
    t = (step + 1).astype(jnp.float32)
    return 1.0 / (1.0 - jnp.exp(t * jnp.log(decay)))


def time_features(step: jax.Array, num_steps: jax.Array, timescales: Sequence[float]) -> jax.Array:
    """Scalar features of training progress.

    ``[step / num_steps, tanh(step / T) for T in timescales]``: the fraction of
    the planned run already done (so the optimizer can anneal towards the end
    of *its* horizon) and saturating clocks that tell early from late training
    whatever the horizon.
    """
    t = step.astype(jnp.float32)
    frac = t / jnp.maximum(num_steps.astype(jnp.float32), 1.0)
    clocks = [jnp.tanh(t / ts) for ts in timescales]
    return jnp.stack([frac, *clocks])


def tensor_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Divide by the tensor's root mean square: a scale-free per-tensor feature."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x)) + eps)


def factored_second_moment(
    row: jax.Array, col: jax.Array, g2: jax.Array, decay: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adafactor's rank-1 estimate of E[g^2] for a tensor of rank >= 2.

    The last two dimensions are treated as the matrix (leading dimensions, e.g.
    the spatial taps of a conv kernel, are kept as a batch of matrices).
    ``row`` holds the running mean of ``g^2`` over the last axis, ``col`` over
    the second-to-last. Returns ``(new_row, new_col, v)`` with
    ``v[..., i, j] = row[..., i] * col[..., j] / mean(row[..., :])``, which is
    exact when the squared gradients are a rank-1 matrix.
    """
    new_row = ema(row, jnp.mean(g2, axis=-1), decay)
    new_col = ema(col, jnp.mean(g2, axis=-2), decay)
    row_mean = jnp.mean(new_row, axis=-1, keepdims=True)
    v = (new_row / row_mean)[..., :, None] * new_col[..., None, :]
    return new_row, new_col, v


def dense_elementwise(
    inputs: Sequence[jax.Array], w: jax.Array, b: jax.Array | Sequence[jax.Array]
) -> list[jax.Array]:
    """A dense layer applied independently to every parameter, as fused elementwise ops.

    ``inputs`` are ``F`` arrays of one shape (one per feature), ``w`` is
    ``(F, H)``, ``b`` is ``(H,)`` (or ``H`` scalars). Returns ``H`` arrays:
    ``out_h = b_h + sum_f w[f, h] * inputs_f``. Each weight is a scalar, so XLA
    fuses the whole layer (and the layers around it) into one loop.
    """
    out = []
    for h in range(w.shape[1]):
        acc = b[h]
        for f, x in enumerate(inputs):
            acc = acc + w[f, h] * x
        out.append(acc)
    return out


def dense_matmul(inputs: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """The same layer for a stacked ``(..., F)`` input: ``inputs @ w + b``.

    Used by the larger ``mlp`` architecture, whose 32-wide hidden layers would
    make the elementwise form a very large fused program.
    """
    return inputs @ w + b


def map_unzip(fn, num_outputs: int, tree: Any, *rest: Any) -> tuple[Any, ...]:
    """``jax.tree.map`` for a ``fn`` returning a tuple: one output tree per element.

    ``rest`` may have ``tree``'s structure as a prefix (e.g. a dict of
    accumulators where ``tree`` has one array). Unlike mapping then splitting
    with ``is_leaf=tuple``, this is safe when the params pytree itself
    contains tuples.
    """
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(r) for r in rest]
    results = [fn(*args) for args in zip(leaves, *others)]
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(num_outputs))


def glorot(key: jax.Array, fan_in: int, fan_out: int, scale: float = 1.0) -> jax.Array:
    """Normal init with variance ``scale * 2 / (fan_in + fan_out)``."""
    std = scale * (2.0 / (fan_in + fan_out)) ** 0.5
    return std * jax.random.normal(key, (fan_in, fan_out), jnp.float32)
