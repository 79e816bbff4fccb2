"""Small convolutional classifiers: strided 3x3 convolutions, global mean pool, linear head.

Each convolution halves the spatial size (stride 2, 'SAME' padding), so the
same structure works at 8x8, 16x16 and native resolution; only the number of
conv layers (``channels``) and their widths are static structure.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lopt.tasks import layers
from lopt.tasks.base import Params, TaskError
from lopt.tasks.supervised import ClassificationTask


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvClassifier(ClassificationTask):
    """``channels[i]`` output channels of the i-th stride-2 convolution."""

    channels: tuple[int, ...] = (8, 16)
    kernel: int = 3
    activation: str = "relu"
    task_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        layers.activation(self.activation)
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise TaskError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")

    @property
    def name(self) -> str:
        if self.task_name:
            return self.task_name
        size = "" if self.image_size is None else str(self.image_size)
        return f"cnn_{self.dataset}{size}_{'x'.join(map(str, self.channels))}_{self.activation}"

    def init_model(self, key: jax.Array) -> Params:
        keys = jax.random.split(key, len(self.channels) + 1)
        g = layers.gain(self.activation)
        c_in = self.input_shape[2]
        params = {}
        for i, (k, c_out) in enumerate(zip(keys[:-1], self.channels)):
            params[f"conv_{i}"] = layers.conv_init(k, self.kernel, c_in, c_out, g)
            c_in = c_out
        params["head"] = layers.dense_init(keys[-1], c_in, self.num_classes)
        return params

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        act = layers.activation(self.activation)
        x = images
        for i in range(len(self.channels)):
            x = act(layers.conv(params[f"conv_{i}"], x, stride=2))
        return layers.dense(params["head"], jnp.mean(x, axis=(1, 2)))

    def describe(self) -> str:
        return f"CNN {'-'.join(map(str, self.channels))} ch {self.activation}, batch {self.batch_size}"
