"""Batch sampling inside ``jit`` from arrays that already live on device.

Why not a Python iterator: the inner training loop of a learned optimizer runs
thousands of steps inside one ``lax.scan``; a host round-trip per step would
dominate the cost. Instead a batch is a keyed random draw of row indices into
the split's arrays, so it is pure, vmappable and reproducible from the key.

Two traced hyperparameters act here, so that one compiled program serves a
whole family of tasks:

* ``data_fraction`` in (0, 1]: only the first ``ceil(fraction * n)`` training
  rows are drawn from (the arrays are shuffled once at load time, so the prefix
  is a random subset). Smaller fractions make the task over-fit sooner.
* ``label_noise`` in [0, 1]: each training label is replaced, with that
  probability, by a uniformly drawn class (a keyed draw, so it is the same for
  the same key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_indices(key: jax.Array, num_rows: int, batch_size: int, fraction: jax.Array | float = 1.0) -> jax.Array:
    """``batch_size`` int32 row indices, uniform over the first ``fraction`` of ``num_rows``.

    ``num_rows`` and ``batch_size`` are static; ``fraction`` may be traced.
    Sampling is with replacement (i.i.d. minibatches), which keeps the draw a
    single fused op whatever the subset size.
    """
    limit = jnp.clip(jnp.ceil(jnp.asarray(fraction, jnp.float32) * num_rows), 1.0, float(num_rows))
    u = jax.random.uniform(key, (batch_size,), jnp.float32)
    idx = jnp.floor(u * limit).astype(jnp.int32)
    return jnp.minimum(idx, num_rows - 1)


def noisy_labels(key: jax.Array, labels: jax.Array, num_classes: int, noise: jax.Array | float) -> jax.Array:
    """Replace each label by a uniform random class with probability ``noise``."""
    k_flip, k_class = jax.random.split(key)
    flip = jax.random.uniform(k_flip, labels.shape) < noise
    random_class = jax.random.randint(k_class, labels.shape, 0, num_classes, dtype=labels.dtype)
    return jnp.where(flip, random_class, labels)


def take_rows(split_data: dict[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
    """Gather the same rows from every field of one split."""
    return {k: jnp.take(v, idx, axis=0) for k, v in split_data.items()}
