"""A 1-D CNN classifier that reads an image as a sequence of pixels.

The image ``[H, W, C]`` is read row by row as a sequence of ``H * W`` steps of
``C`` channels (the "sequential digits" view, as in sequential MNIST), then
``len(channels)`` 1-D convolutions of width ``kernel`` and stride 2 (symmetric
padding, see :func:`lopt.tasks.layers.conv1d`), each followed by the activation
and, when ``layer_norm`` is on, a LayerNorm over channels; a global mean over
the remaining positions and a linear head give the logits. Built on
:class:`~lopt.tasks.supervised.ClassificationTask`, so data, batches, traced
hyperparameters and the validation split are the image task's.

Why this view: it gives a 1-D convolutional model with real data and a real
validation split offline, with long receptive fields to learn (a digit's
strokes are 16 positions apart on the 16x16 sequence).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lopt.tasks import layers
from lopt.tasks.base import Params, TaskError
from lopt.tasks.supervised import ClassificationTask


@dataclasses.dataclass(frozen=True, kw_only=True)
class SequenceConvClassifier(ClassificationTask):
    channels: tuple[int, ...] = (16, 32, 32)
    kernel: int = 5
    activation: str = "relu"
    layer_norm: bool = True
    task_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        layers.activation(self.activation)
        if not self.channels or any(int(c) < 1 for c in self.channels) or self.kernel < 1:
            raise TaskError(f"need positive channels and kernel, got {self.channels}, {self.kernel}")

    @property
    def name(self) -> str:
        if self.task_name:
            return self.task_name
        size = "" if self.image_size is None else str(self.image_size)
        return f"conv1d_{self.dataset}{size}_seq_{'x'.join(map(str, self.channels))}_{self.activation}"

    @property
    def sequence_length(self) -> int:
        h, w, _ = self.input_shape
        return h * w

    def describe(self) -> str:
        sub = "" if self.train_examples is None else f", {self.train_examples} train examples"
        ln = " + LayerNorm" if self.layer_norm else ""
        return (
            f"1-D CNN{ln} over the {self.sequence_length}-pixel sequence, channels "
            f"{'-'.join(map(str, self.channels))}, kernel {self.kernel}, batch {self.batch_size}{sub}"
        )

    def init_model(self, key: jax.Array) -> Params:
        keys = jax.random.split(key, len(self.channels) + 1)
        g = layers.gain(self.activation)
        c_in = self.input_shape[2]
        params = {}
        for i, (k, c_out) in enumerate(zip(keys[:-1], self.channels)):
            params[f"conv_{i}"] = layers.conv1d_init(k, self.kernel, c_in, c_out, g)
            if self.layer_norm:
                params[f"ln_{i}"] = layers.layer_norm_init(c_out)
            c_in = c_out
        params["head"] = layers.dense_init(keys[-1], c_in, self.num_classes)
        return params

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        act = layers.activation(self.activation)
        b, h, w, c = images.shape
        x = images.reshape(b, h * w, c)
        for i in range(len(self.channels)):
            x = act(layers.conv1d(params[f"conv_{i}"], x, stride=2))
            if self.layer_norm:
                x = layers.layer_norm(params[f"ln_{i}"], x)
        return layers.dense(params["head"], jnp.mean(x, axis=1))
