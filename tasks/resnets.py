"""Residual networks with LayerNorm on images: the shape of model users actually train.

Two classifiers on :class:`~lopt.tasks.supervised.ClassificationTask` (so they
share its data loading, batch sampling, traced hyperparameters and validation
split):

* :class:`ResidualMLP`: flattened image -> linear stem -> ``num_blocks`` pre-LN
  residual blocks ``x + W2 act(W1 LN(x))`` -> final LN -> linear head. With a
  small ``train_examples`` subset it over-fits within a few hundred steps, so
  the validation loss, not the training loss, says which optimizer is better.
* :class:`ResidualCNN`: 3x3 stem convolution -> stages of pre-LN residual
  convolution blocks (LayerNorm over channels at every pixel) with a stride-2
  convolution between stages -> global mean pool -> LN -> linear head.

Why pre-LN: normalized residual branches are what modern MLP/CNN/transformer
blocks use, and they change the loss landscape a learned optimizer sees (scale
invariance of the weights before a LayerNorm, LayerNorm gains and biases as
their own parameter kind). The last linear layer of every residual branch
starts at ``branch_init`` times its fan-in scale so that a deep stack starts
close to the identity, as is usual practice.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lopt.tasks import layers
from lopt.tasks.base import Params, TaskError
from lopt.tasks.supervised import ClassificationTask


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualMLP(ClassificationTask):
    """``num_blocks`` residual blocks of width ``width`` (hidden ``expansion * width``)."""

    width: int = 64
    num_blocks: int = 2
    expansion: int = 2
    activation: str = "gelu"
    branch_init: float = 0.5
    task_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        layers.activation(self.activation)
        if self.width < 1 or self.num_blocks < 0 or self.expansion < 1:
            raise TaskError(
                f"need width >= 1, num_blocks >= 0, expansion >= 1; got {self.width}, {self.num_blocks}, {self.expansion}"
            )

    @property
    def name(self) -> str:
        if self.task_name:
            return self.task_name
        size = "" if self.image_size is None else str(self.image_size)
        return f"resmlp_{self.dataset}{size}_{self.num_blocks}x{self.width}_{self.activation}"

    def describe(self) -> str:
        sub = "" if self.train_examples is None else f", {self.train_examples} train examples"
        return (
            f"residual MLP + LayerNorm, {self.num_blocks} blocks x {self.width} ({self.activation}), "
            f"batch {self.batch_size}{sub}"
        )

    def init_model(self, key: jax.Array) -> Params:
        d, h = self.width, self.expansion * self.width
        keys = iter(jax.random.split(key, 2 + 2 * self.num_blocks))
        params = {"stem": layers.dense_init(next(keys), math.prod(self.input_shape), d)}
        for i in range(self.num_blocks):
            out = layers.dense_init(next(keys), h, d)
            params[f"block_{i}"] = {
                "ln": layers.layer_norm_init(d),
                "fc1": layers.dense_init(next(keys), d, h, layers.gain(self.activation)),
                "fc2": {"w": out["w"] * self.branch_init, "b": out["b"]},
            }
        params["final_ln"] = layers.layer_norm_init(d)
        params["head"] = layers.dense_init(next(keys), d, self.num_classes)
        return params

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        act = layers.activation(self.activation)
        x = layers.dense(params["stem"], images.reshape(images.shape[0], -1))
        for i in range(self.num_blocks):
            p = params[f"block_{i}"]
            x = x + layers.dense(p["fc2"], act(layers.dense(p["fc1"], layers.layer_norm(p["ln"], x))))
        return layers.dense(params["head"], layers.layer_norm(params["final_ln"], x))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualCNN(ClassificationTask):
    """Stage ``i`` has ``channels[i]`` channels and ``blocks_per_stage`` residual blocks.

    Every stage after the first starts with a stride-2 3x3 convolution, so the
    spatial size halves per stage (16x16 digits: 16 -> 8 -> 4 with 3 stages).
    """

    channels: tuple[int, ...] = (16, 32)
    blocks_per_stage: int = 1
    activation: str = "relu"
    branch_init: float = 0.5
    task_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        layers.activation(self.activation)
        if not self.channels or any(int(c) < 1 for c in self.channels) or self.blocks_per_stage < 0:
            raise TaskError(
                f"need a non-empty tuple of positive channels and blocks_per_stage >= 0, "
                f"got {self.channels}, {self.blocks_per_stage}"
            )

    @property
    def name(self) -> str:
        if self.task_name:
            return self.task_name
        size = "" if self.image_size is None else str(self.image_size)
        return f"rescnn_{self.dataset}{size}_{'x'.join(map(str, self.channels))}_{self.activation}"

    def describe(self) -> str:
        sub = "" if self.train_examples is None else f", {self.train_examples} train examples"
        return (
            f"residual CNN + LayerNorm, channels {'-'.join(map(str, self.channels))} x {self.blocks_per_stage} "
            f"block(s) ({self.activation}), batch {self.batch_size}{sub}"
        )

    def init_model(self, key: jax.Array) -> Params:
        g = layers.gain(self.activation)
        keys = iter(jax.random.split(key, 2 + len(self.channels) * (1 + 2 * self.blocks_per_stage)))
        c = self.channels[0]
        params = {"stem": layers.conv_init(next(keys), 3, self.input_shape[2], c, g)}
        for s, c_out in enumerate(self.channels):
            stage = {}
            if s > 0:
                stage["down"] = layers.conv_init(next(keys), 3, c, c_out, g)
            c = c_out
            for b in range(self.blocks_per_stage):
                out = layers.conv_init(next(keys), 3, c, c)
                stage[f"block_{b}"] = {
                    "ln1": layers.layer_norm_init(c),
                    "conv1": layers.conv_init(next(keys), 3, c, c, g),
                    "ln2": layers.layer_norm_init(c),
                    "conv2": {"w": out["w"] * self.branch_init, "b": out["b"]},
                }
            params[f"stage_{s}"] = stage
        params["final_ln"] = layers.layer_norm_init(c)
        params["head"] = layers.dense_init(next(keys), c, self.num_classes)
        return params

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        act = layers.activation(self.activation)
        x = layers.conv_patches(params["stem"], images)
        for s in range(len(self.channels)):
            stage = params[f"stage_{s}"]
            if s > 0:
                x = layers.conv_patches(stage["down"], act(x), stride=2)
            for b in range(self.blocks_per_stage):
                p = stage[f"block_{b}"]
                h = layers.conv_patches(p["conv1"], act(layers.layer_norm(p["ln1"], x)))
                x = x + layers.conv_patches(p["conv2"], act(layers.layer_norm(p["ln2"], h)))
        pooled = jnp.mean(x, axis=(1, 2))
        return layers.dense(params["head"], layers.layer_norm(params["final_ln"], pooled))
