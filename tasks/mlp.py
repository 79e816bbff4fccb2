"""Multi-layer perceptron classifiers on flattened images.

The reference task of the project is ``MLPClassifier()`` with its defaults:
8x8 digits -> 32 ReLU units -> 10 classes at batch 128, 2,410 parameters.
Depth, width and activation are static structure (``hidden``, ``activation``).
"""

from __future__ import annotations

import dataclasses
import math

import jax

from lopt.tasks import layers
from lopt.tasks.base import Params, TaskError
from lopt.tasks.supervised import ClassificationTask


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPClassifier(ClassificationTask):
    """``hidden`` gives the width of each hidden layer (empty = softmax regression)."""

    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    task_name: str = ""  # registry name; derived from the structure when empty

    def __post_init__(self) -> None:
        super().__post_init__()
        layers.activation(self.activation)
        if any(int(h) < 1 for h in self.hidden):
            raise TaskError(f"hidden widths must be >= 1, got {self.hidden}")

    @property
    def name(self) -> str:
        if self.task_name:
            return self.task_name
        size = "" if self.image_size is None else str(self.image_size)
        arch = "x".join(str(h) for h in self.hidden) or "linear"
        return f"mlp_{self.dataset}{size}_{arch}_{self.activation}"

    def init_model(self, key: jax.Array) -> Params:
        sizes = (math.prod(self.input_shape), *self.hidden, self.num_classes)
        keys = jax.random.split(key, len(sizes) - 1)
        g = layers.gain(self.activation)
        return {
            f"dense_{i}": layers.dense_init(k, n_in, n_out, g if i < len(sizes) - 2 else 1.0)
            for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
        }

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        act = layers.activation(self.activation)
        x = images.reshape(images.shape[0], -1)
        n = len(self.hidden)
        for i in range(n):
            x = act(layers.dense(params[f"dense_{i}"], x))
        return layers.dense(params[f"dense_{n}"], x)

    def describe(self) -> str:
        if not self.hidden:
            return f"softmax (logistic) regression on {self.data_summary()}"
        arch = "-".join(str(h) for h in (math.prod(self.input_shape), *self.hidden, self.num_classes))
        return f"MLP {arch} {self.activation}, batch {self.batch_size}"
