"""The few pure layer functions the built-in tasks share (no framework needed).

Parameters are plain dicts of float32 arrays. Initializers draw weights with
variance ``gain / fan_in`` (gain 2 for ReLU-like activations, 1 otherwise) and
zero biases, so activations keep roughly unit scale at ``init_scale = 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt.tasks.base import TaskError

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
}
_RELU_LIKE = {"relu", "gelu", "silu", "elu"}


def activation(name: str):
    """The activation function called ``name``; unknown names list the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise TaskError(f"unknown activation {name!r}; valid activations: {', '.join(sorted(ACTIVATIONS))}") from None


def gain(name: str) -> float:
    return 2.0 if name in _RELU_LIKE else 1.0


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal float32 draw of ``shape``, generated flat and then reshaped.

    Why flat: on XLA:CPU, compiling ``jax.random.normal`` for a 4-D shape took
    ~2 s of CPU against ~0.25 s for the same numbers drawn as a vector (measured
    with jax 0.10); tasks are compiled many times during tests and meta-training.
    """
    size = 1
    for d in shape:
        size *= int(d)
    return jax.random.normal(key, (size,), jnp.float32).reshape(shape)


def dense_init(key: jax.Array, fan_in: int, fan_out: int, gain_: float = 1.0) -> dict[str, jax.Array]:
    w = normal(key, (fan_in, fan_out)) * jnp.sqrt(gain_ / fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def conv_init(key: jax.Array, kernel: int, c_in: int, c_out: int, gain_: float = 1.0) -> dict[str, jax.Array]:
    fan_in = kernel * kernel * c_in
    w = normal(key, (kernel, kernel, c_in, c_out)) * jnp.sqrt(gain_ / fan_in)
    return {"w": w, "b": jnp.zeros((c_out,), jnp.float32)}


def conv(p: dict[str, jax.Array], x: jax.Array, stride: int = 1) -> jax.Array:
    """'SAME'-padded 2-D convolution of NHWC ``x`` with an HWIO kernel."""
    y = jax.lax.conv_general_dilated(
        x, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["b"]


def layer_norm_init(dim: int) -> dict[str, jax.Array]:
    return {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)}


def layer_norm(p: dict[str, jax.Array], x: jax.Array, eps: float = 1e-5) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def conv1d_init(key: jax.Array, kernel: int, c_in: int, c_out: int, gain_: float = 1.0) -> dict[str, jax.Array]:
    w = normal(key, (kernel, c_in, c_out)) * jnp.sqrt(gain_ / (kernel * c_in))
    return {"w": w, "b": jnp.zeros((c_out,), jnp.float32)}


def conv1d(p: dict[str, jax.Array], x: jax.Array, stride: int = 1, dilation: int = 1, causal: bool = False) -> jax.Array:
    """1-D convolution of NWC ``x`` with a WIO kernel, as one matmul over gathered windows.

    ``causal=True`` pads only on the left, so output position ``t`` sees inputs
    ``<= t`` (what a next-token model needs); otherwise symmetric padding, the
    extra pad on the right (output length ``ceil(len / stride)``).

    Why not ``lax.conv_general_dilated``: on XLA:CPU its dilated/strided 1-D
    form (and its gradient) ran 10-30x slower than this window-stacking matmul
    for the kernel widths and channel counts used here (measured, jax 0.10).
    """
    kernel, c_in, c_out = p["w"].shape
    span = (kernel - 1) * dilation
    left = span if causal else span // 2
    xp = jnp.pad(x, ((0, 0), (left, span - left), (0, 0)))
    length = (x.shape[1] - 1) // stride + 1
    taps = [xp[:, j * dilation : j * dilation + (length - 1) * stride + 1 : stride] for j in range(kernel)]
    windows = jnp.concatenate(taps, axis=-1)  # [N, length, kernel * c_in], tap-major like the kernel
    return windows @ p["w"].reshape(kernel * c_in, c_out) + p["b"]


def conv_patches(p: dict[str, jax.Array], x: jax.Array, stride: int = 1) -> jax.Array:
    """The same 'SAME'-padded 2-D convolution as :func:`conv`, as one matmul over gathered patches.

    Why: for the small images, batches and channel counts of the residual CNN
    tasks, XLA:CPU ran ``conv_general_dilated`` and its gradient 10-50x slower
    than this patch-stacking matmul (measured, jax 0.10, 2 cores).
    """
    k, _, c_in, c_out = p["w"].shape
    _, h, w, _ = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    taps = [
        xp[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride]
        for i in range(k)
        for j in range(k)
    ]
    return jnp.concatenate(taps, axis=-1) @ p["w"].reshape(k * k * c_in, c_out) + p["b"]
